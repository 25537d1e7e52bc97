"""summarize at scale: the streamed, column-projected read into arrays (report/row_table.py) gives the same summary as
the all-rows computation and as values computed here with pandas alone, on an OUT of thousands of images made from a
real run's rows (tests/scale_helpers.py), and holds far less."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from ray_helpers import ray_run
from scale_helpers import make_large_out
from xcv_batch.output.results import Results
from xcv_batch.methods.registry import is_control
from xcv_batch.metrics.registry import metric_info
from xcv_batch.report.controls import better
from xcv_batch.report.html import GALLERY_CAP, render_report
from xcv_batch.report.row_table import read_table
from xcv_batch.report.summarize import summarize, summarize_rows

N_IMAGES = 3000
N_BOOT = 50


@pytest.fixture(scope="module")
def small_out(tmp_path_factory, photo_folder):
    """A real run: four photos and a file that is not one; three methods and the control maps, sensitivity and
    complexity on."""
    methods = {"occlusion": {"window": 16, "stride": 16}, "integrated_gradients": {"n_steps": 2}, "guided_gradcam": {}}
    small, report = ray_run(tmp_path_factory.mktemp("scale-source"), photo_folder, methods=methods,
                            metrics={"complexity": {}}, compute__shard_size=5, controls=True)
    assert report.n_images == 5 and report.n_failed == 1
    return small


def _grown(small_out: str, folder, n_images: int) -> str:
    """``small_out`` grown to ``n_images`` images, with one method's second map object (500 images) never written."""
    return make_large_out(small_out, str(folder / "out"), n_images, parts=6, images_per_object=500, error_every=41,
                          drop_object=("guided_gradcam", 1))


@pytest.fixture(scope="module")
def large_out(tmp_path_factory, small_out):
    return _grown(small_out, tmp_path_factory.mktemp("scale"), N_IMAGES)


def _all_rows_summary(out: str, n_boot: int) -> dict:
    """The reference: every row read whole, ids as strings, through the same statistics; the missing count by a set
    of (image, method) pairs."""
    results = Results(out)
    rows = results.rows()
    summary = json.loads(summarize_rows(rows, methods=results.methods, n_boot=n_boot, job=results.job).to_json())
    have = set(zip(rows["image_id"].astype(str), rows["method"].astype(str)))
    summary["n_missing_rows"] = sum((i, m) not in have for i in results.stored_image_ids for m in results.methods)
    return summary


def test_streaming_summary_equals_the_all_rows_one(large_out):
    summary = json.loads(summarize(large_out, n_boot=N_BOOT).to_json())
    expected = _all_rows_summary(large_out, N_BOOT)
    assert summary["n_images"] == N_IMAGES
    assert summary["n_expected"] == N_IMAGES and summary["n_missing_rows"] == expected["n_missing_rows"]
    assert {k: v for k, v in summary.items() if k in expected} == expected
    # The run's shape shows through: one method's second object (500 images) is missing, and rows fail.
    assert summary["methods"]["guided_gradcam"]["n_error"] >= 500
    assert len(summary["failures"]) >= 500 + N_IMAGES // 41
    assert summary["failures"][0]["image_id"] < summary["failures"][-1]["image_id"]
    assert set(summary["metrics"]) >= {"sensitivity_max", "sparseness"}
    assert summary["agreement"]["pairs"] and summary["agreement"]["pairs"][0]["n_images"] > 1000


def _pandas_reference(out: str) -> tuple[pd.DataFrame, list, list[str], list[str]]:
    """The rows as pandas computes them without the package's table: every row read whole, an ok row whose map was
    not written turned into an error, one row per image × method (the last ok row, else the last row); the images
    by index; the real methods and the controls in order of appearance."""
    results = Results(out)
    rows = results.rows()
    rows = rows.assign(_ok=rows["status"] == "ok", _row=np.arange(len(rows)))
    kept = rows.sort_values(["_ok", "_row"]).drop_duplicates(["image_id", "method"], keep="last").sort_values("_row")
    control = kept["method"].map(is_control)
    real = kept[~control]
    images = real.sort_values(["index", "image_id"])["image_id"].drop_duplicates().tolist()
    methods = list(dict.fromkeys(real["method"]))
    controls = list(dict.fromkeys(kept[control]["method"]))
    return kept, images, methods, controls


def test_streamed_summary_equals_pandas_computed_values(large_out):
    summary = summarize(large_out, n_boot=N_BOOT)
    kept, images, methods, controls = _pandas_reference(large_out)
    real = kept[~kept["method"].isin(controls)]
    assert sorted(controls) == sorted(summary.controls.controls) == ["centre", "edges", "random"]
    assert list(summary.methods) == methods
    assert summary.n_images == len(images) == N_IMAGES
    for name in methods:
        mine = real[real["method"] == name]
        assert (summary.methods[name].n_ok, summary.methods[name].n_error) == (
            int((mine["status"] == "ok").sum()), int((mine["status"] == "error").sum()))
    errors = real[real["status"] == "error"].sort_values(["image_id", "method"])
    assert [(f.image_id, f.method, f.error) for f in summary.failures] == list(
        zip(errors["image_id"], errors["method"], errors["error"]))
    assert summary.n_failed_images == errors["image_id"].nunique()

    ok = kept[kept["status"] == "ok"]
    for metric in ["sensitivity_max", "sparseness", "effective_complexity"]:
        wide = ok.pivot(index="image_id", columns="method", values=metric).reindex(index=images,
                                                                                  columns=methods + controls)
        values = wide.to_numpy(dtype=float)
        real_values = values[:, :len(methods)]
        for j, name in enumerate(methods):
            column = real_values[:, j][np.isfinite(real_values[:, j])]
            got = summary.methods[name].values[metric]
            assert (got.median, got.n) == (float(np.median(column)), len(column))
            assert got.mean == float(np.nanmean(real_values[:, j]))
        complete = np.isfinite(real_values).all(axis=1)
        direction = metric_info(metric).direction
        ranks = scipy_stats.rankdata(-real_values[complete] if direction == "higher" else real_values[complete],
                                     axis=1)
        assert summary.metrics[metric].n_images == int(complete.sum())
        for j, name in enumerate(methods):
            assert summary.methods[name].ranks[metric].mean_rank == pytest.approx(ranks[:, j].mean(), abs=1e-12)
        control_values = values[:, len(methods):]
        for c, control in enumerate(controls):
            for j, name in enumerate(methods):
                wins = better(real_values[:, j], control_values[:, c], direction)
                share = summary.controls.metrics[metric].shares[control][name]
                assert share.n_images == int(np.isfinite(wins).sum())
                assert share.share == pytest.approx(float(np.nanmean(wins)), abs=1e-12)
    seconds = [c for c in real.columns if c.endswith("_seconds")]
    run_total = np.nansum(real[seconds].to_numpy(dtype=float))
    for name in methods:
        mine = real[real["method"] == name]
        attr = mine.loc[mine["status"] == "ok", "attr_seconds"].dropna()
        cost = summary.cost.methods[name]
        assert cost.n_images == len(attr) and cost.attr_seconds_total == pytest.approx(attr.sum(), rel=1e-12)
        assert cost.share_of_run == pytest.approx(np.nansum(mine[seconds].to_numpy(dtype=float)) / run_total,
                                                  rel=1e-12)


def test_the_table_holds_numbers_and_each_id_once(large_out):
    results = Results(large_out)
    table = read_table(results, methods=results.methods)
    arrays = [table.images, table.row_image, table.row_method, table.row_status, table.seconds, table.has_row,
              *table.values.values(), *table.diagnostics.values()]
    assert all(a.dtype.kind in "biuf" for a in arrays)  # no per-row strings
    assert len(table.ids) == N_IMAGES and table.ids == sorted(table.ids)
    n_rows = N_IMAGES * 6  # three methods and three controls an image
    size = sum(a.nbytes for a in arrays)
    assert size / n_rows < 8 * (len(table.values) + len(table.seconds_columns) + 4)
    assert read_table(results) is table  # the report reads the same arrays


class _Elements(HTMLParser):
    """How many of each HTML element a page has."""

    def __init__(self, text: str):
        super().__init__()
        self.count = Counter()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.count[tag] += 1


def test_report_stays_bounded(large_out, small_out, tmp_path):
    summary = summarize(large_out, n_boot=N_BOOT)
    text = render_report(Results(large_out), summary)
    assert text.count("panel of img") == GALLERY_CAP  # the gallery: the cap, of thousands
    # One image in five is the source's file that is not a picture: no map, so not counted among those not shown.
    assert f"{N_IMAGES * 4 // 5 - GALLERY_CAP} images are not shown" in text
    assert f"{N_IMAGES // 5} images failed for every method" in text
    # ids only in the gallery (GALLERY_CAP), diagnostics (20) and failures (200) shown
    assert text.count("img0") < GALLERY_CAP + 20 + 200 + 30
    assert len(text) < 3_000_000
    # A third of the images, its failures still past their cap (the missing map object alone fails 500 rows): the
    # very same elements, one by one.
    third = _grown(small_out, tmp_path, N_IMAGES // 3)
    fewer = render_report(Results(third), summarize(third, n_boot=N_BOOT))
    assert f"{N_IMAGES // 3 * 4 // 5 - GALLERY_CAP} images are not shown" in fewer
    elements, fewer_elements = _Elements(text).count, _Elements(fewer).count
    # The control maps' sentences name the metrics that fail them, which depends on the values drawn: one paragraph
    # each, not one per image.
    elements["p"] -= text.count('<p class="control">')
    fewer_elements["p"] -= fewer.count('<p class="control">')
    assert elements == fewer_elements
    assert elements["img"] > GALLERY_CAP and elements["tr"] > 200
