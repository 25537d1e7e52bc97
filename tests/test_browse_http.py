"""``browse`` over HTTP, without a browser: one line and exit 2 for a bad OUT or option, an OUT on S3 and a run stored
with every ``output.*`` choice (the browser tests are in test_browse.py)."""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request

import fsspec
import numpy as np
import pytest
from PIL import Image

from browse_helpers import IDS, METHODS, photo_folder, serving, tiny_run, tree
from test_s3 import s3_env, s3_server, upload  # noqa: F401 - the real S3 server fixtures
from xcv_batch import cli
from xcv_batch.browse.server import BrowseApp
from xcv_batch.output.results import open_results
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


@pytest.fixture(scope="module")
def stored_every_way(tmp_path_factory):
    """A run storing float16 maps summed over the channels and no inputs (three images)."""
    folder = photo_folder(tmp_path_factory.mktemp("photos"))
    out = str(tmp_path_factory.mktemp("stored") / "out")
    return tiny_run(folder, out, output={"dtype": "float16", "channels": "sum", "inputs": False}, limit=3)


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
