"""summarize at scale: the compact, column-projected read gives the same summary as the all-rows computation, on an
OUT of thousands of images made from a real run's rows (tests/scale_helpers.py), and holds far less."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser

import pytest

from ray_helpers import ray_run
from scale_helpers import make_large_out
from xcv_batch.output.results import Results
from xcv_batch.report.html import GALLERY_CAP, render_report
from xcv_batch.report.summarize import summarize, summarize_rows, summary_columns

N_IMAGES = 3000
N_BOOT = 50


@pytest.fixture(scope="module")
def small_out(tmp_path_factory, photo_folder):
    """A real run: four photos and a file that is not one; three methods, sensitivity and complexity on."""
    methods = {"occlusion": {"window": 16, "stride": 16}, "integrated_gradients": {"n_steps": 2}, "guided_gradcam": {}}
    small, report = ray_run(tmp_path_factory.mktemp("scale-source"), photo_folder, methods=methods,
                            metrics={"complexity": {}}, compute__shard_size=5)
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


def test_compact_rows_hold_far_less_than_all_rows(large_out):
    results = Results(large_out)
    compact, ids = results.compact_rows(summary_columns)
    everything = results.rows()
    assert len(compact) == len(everything) and len(ids) == N_IMAGES and ids == sorted(ids)
    assert compact["image_id"].dtype.kind == "i"
    assert [ids[c] for c in compact["image_id"].head(50)] == everything["image_id"].head(50).tolist()
    assert compact["error"].notna().sum() == (compact["status"] == "error").sum()
    size = compact.memory_usage(deep=True).sum()
    assert size < everything.memory_usage(deep=True).sum() / 1.5
    assert size / len(compact) < 200  # bytes a row: numbers, codes and short status and method strings


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
    elements = _Elements(text).count
    assert elements == _Elements(fewer).count
    assert elements["img"] > GALLERY_CAP and elements["tr"] > 200
