"""``browse`` over HTTP, without a browser: one line and exit 2 for a bad OUT or option, an OUT on S3 and a run stored
with every ``output.*`` choice (the browser tests are in test_browse.py)."""

from __future__ import annotations

import io
import os
import re
import shutil
import urllib.error
import urllib.request
from itertools import combinations

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from browse_helpers import IDS, METHODS, photo_folder, serving, tiny_run, tree
from test_s3 import s3_env, s3_server, upload  # noqa: F401 - the real S3 server fixtures
from xcv_batch import cli
from xcv_batch.browse.server import BrowseApp
from xcv_batch.output.results import open_results
from xcv_batch.report import map_agreement
from xcv_batch.report.panel import display_map, is_signed, overlay


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def listed(body: bytes) -> list[str]:
    import html

    return [html.unescape(m) for m in re.findall(r'class="image-link" href="[^"]*">([^<]*)</a>', body.decode())]


def png(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


@pytest.mark.parametrize("args, key", [(["/nonexistent/out"], "no such output directory"),
                                       (["OUT", "--port", "70000"], "--port: must be 0 … 65535")])
def test_a_bad_out_or_option_is_one_line_and_exit_2(browse_run, capsys, args, key):
    assert cli.main(["browse", *[browse_run if a == "OUT" else a for a in args]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and key in err


def test_a_port_in_use_is_one_line_naming_port(browse_run, capsys):
    with serving(browse_run) as server:
        port = server.server_address[1]
        assert cli.main(["browse", browse_run, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --port: cannot listen on 127.0.0.1:{port}")


@pytest.mark.slow  # starts moto's S3 server
def test_an_out_on_s3(browse_run, s3_env):
    upload(browse_run, "browse-bucket/run")
    app = BrowseApp("s3://browse-bucket/run")
    assert listed(app.respond("/").body) == IDS
    page = app.respond("/image/1").body.decode()
    assert all(f'alt="{m} map"' in page for m in METHODS)
    local = BrowseApp(browse_run)
    for path in ["/thumb/1/input.png", "/thumb/1/occlusion.png", "/map/2/guided_gradcam.png"]:
        response = app.respond(path)
        assert response.status == 200 and response.content_type == "image/png"
        assert response.body == local.respond(path).body
    assert app.respond("/report").status == 200
    assert listed(app.respond("/disagree/maps").body)[-1] == "notes.jpg"
    # nothing written: the objects under the prefix are the ones uploaded
    fs = fsspec.filesystem("s3")
    assert sorted(p.split("run/", 1)[1] for p in fs.find("browse-bucket/run")) == sorted(tree(browse_run))
    # summarize stores the maps' agreement on S3 as beside a local run
    fs.rm("browse-bucket/run/" + map_agreement.FILE)
    assert cli.main(["summarize", "s3://browse-bucket/run", "--bootstrap", "20", "--no-report"]) == 0
    with fs.open("browse-bucket/run/" + map_agreement.FILE, "rb") as f:
        on_s3 = pd.read_parquet(f)
    pd.testing.assert_frame_equal(on_s3, pd.read_parquet(f"{browse_run}/{map_agreement.FILE}"))


@pytest.fixture(scope="module")
def stored_every_way(tmp_path_factory):
    """A run storing float16 maps summed over the channels and no inputs (three images)."""
    folder = photo_folder(tmp_path_factory.mktemp("photos"))
    out = str(tmp_path_factory.mktemp("stored") / "out")
    return tiny_run(folder, out, output={"dtype": "float16", "channels": "sum", "inputs": False}, limit=3)


def spearman_mean(results, image_id: str, methods) -> float:
    maps = [results.attribution(image_id, m).sum(axis=0).ravel() for m in methods]
    return float(np.mean([scipy_stats.spearmanr(a, b).statistic for a, b in combinations(maps, 2)]))


def test_summarize_stores_the_maps_agreement_of_a_run_with_every_storage_choice(stored_every_way, tmp_path, capsys):
    out = str(tmp_path / "out")
    shutil.copytree(stored_every_way, out)
    assert cli.main(["summarize", out, "--bootstrap", "20", "--no-report"]) == 0
    assert f"wrote {out}/{map_agreement.FILE} (maps of 3 images read;" in capsys.readouterr().out
    stored = pd.read_parquet(f"{out}/{map_agreement.FILE}")
    results = open_results(out)
    assert stored["index"].tolist() == [0, 1, 2] and stored["image_id"].tolist() == IDS[:3]
    assert stored["n_methods"].tolist() == [len(METHODS)] * 3
    np.testing.assert_allclose(stored["map_agreement"], [spearman_mean(results, i, METHODS) for i in IDS[:3]],
                               rtol=1e-6)
    assert_a_second_summarize_reads_only_the_maps_it_has_no_value_for(out, stored, capsys)


def assert_a_second_summarize_reads_only_the_maps_it_has_no_value_for(out: str, first: pd.DataFrame, capsys):
    # One image's value lost (as if it had been committed after the first summarize): only its maps are read again.
    table = pq.read_table(f"{out}/{map_agreement.FILE}")
    pq.write_table(table.slice(0, 2), f"{out}/{map_agreement.FILE}")
    assert cli.main(["summarize", out, "--bootstrap", "20", "--no-report"]) == 0
    assert f"{map_agreement.FILE} (maps of 1 images read;" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(f"{out}/{map_agreement.FILE}"), first)
    os.remove(f"{out}/{map_agreement.FILE}")
    assert cli.main(["summarize", out, "--bootstrap", "20", "--no-report", "--no-map-agreement"]) == 0
    assert map_agreement.FILE not in capsys.readouterr().out and not os.path.exists(f"{out}/{map_agreement.FILE}")


def test_the_control_maps_are_not_compared():
    rows = pd.DataFrame({"index": [0, 0, 0, 1], "image_id": ["a.png"] * 3 + ["b.png"],
                         "method": ["occlusion", "random", "lime", "occlusion"],
                         "status": ["ok", "ok", "ok", "error"]})
    assert map_agreement.compared_rows(rows).to_dict("list") == {
        "index": [0, 0], "image_id": ["a.png", "a.png"], "method": ["lime", "occlusion"]}


def test_browse_takes_the_stored_values_that_match_the_committed_rows(browse_run, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(browse_run, out)
    path = f"{out}/{map_agreement.FILE}"
    stored = pd.read_parquet(path)
    metadata = pq.read_schema(path).metadata
    changed = stored.copy()
    changed["map_agreement"] = 0.5  # a value no image has: it shows where the stored one was taken
    changed.loc[changed["index"] == 1, "n_methods"] = 2  # compared before a method's row was committed: stale
    pq.write_table(pa.Table.from_pandas(changed, schema=map_agreement.SCHEMA, preserve_index=False)
                   .replace_schema_metadata(metadata), path)
    app = BrowseApp(out)
    snapshot = app.index.snapshot()
    app.map_agreement.progress(snapshot)
    app.map_agreement.wait(60)
    progress = app.map_agreement.progress(snapshot)
    assert (progress.done, progress.total, progress.stored) == (5, 5, 4)
    true = stored.set_index("index")["map_agreement"]
    # the stale image computed again (as summarize computed it); the others as stored; notes.jpg has no map
    assert progress.values.tolist()[:4] == [0.5, true[1], 0.5, 0.5] and np.isnan(progress.values[4])
    assert progress.values[5] == 0.5
    # a file of another run (another fingerprint) is not used at all
    pq.write_table(pa.Table.from_pandas(changed, schema=map_agreement.SCHEMA, preserve_index=False)
                   .replace_schema_metadata({map_agreement.FINGERPRINT_KEY: b"another run"}), path)
    app = BrowseApp(out)
    snapshot = app.index.snapshot()
    app.map_agreement.progress(snapshot)
    app.map_agreement.wait(60)
    progress = app.map_agreement.progress(snapshot)
    assert (progress.done, progress.total, progress.stored) == (5, 5, 0)
    assert progress.values.drop(4).tolist() == true.tolist() and np.isnan(progress.values[4])


def test_a_run_with_every_storage_choice(stored_every_way):
    results = open_results(stored_every_way)
    assert results.attribution("chelsea.png", "occlusion").shape == (1, 32, 32)
    with serving(stored_every_way) as server:
        status, body = get(server.url)
        assert status == 200 and listed(body) == IDS[:3]
        for method in METHODS:
            status, body = get(f"{server.url}map/1/{method}.png")
            assert status == 200
            settings = results.job["methods"][method]
            shown = display_map(results.attribution("chelsea.png", method), is_signed(method, settings))
            image = results.input_image("chelsea.png")  # read again from its file: no inputs stored
            rgba = overlay(shown)
            drawn = image.mean(axis=2)[..., None] * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]
            np.testing.assert_array_equal(png(body), np.round(drawn * 255).astype(np.uint8))
        status, body = get(f"{server.url}thumb/1/input.png")
        assert status == 200
        np.testing.assert_array_equal(png(body), np.round(image * 255).astype(np.uint8))
        status, body = get(f"{server.url}image/1")
        assert status == 200 and all(f'alt="{m} map"' in body.decode() for m in METHODS)
