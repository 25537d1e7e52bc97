"""report.html and the Fig. 1-style panels, on output directories built by hand (see test_summarize.write_out)."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread

from test_summarize import FIVE, seed_job, seed_like_rows, table, write_out  # pytest puts tests/ on sys.path
from xcv_batch.errors import ConfigError
from xcv_batch.panel import display_map, panel_figure, render_panel
from xcv_batch.report import cliques, gallery_images, write_report
from xcv_batch.results import open_results
from xcv_batch.summarize import summarize

FAILURE = "LIME <quickshift> found one segment only"


@pytest.fixture(scope="module")
def run_with_a_failure(tmp_path_factory):
    rows = seed_like_rows(8)
    rng = np.random.default_rng(0)
    rows["sensitivity_max"] *= rng.lognormal(0, 0.4, len(rows))  # spread, so images differ in stability
    failed = (rows.method == "lime") & (rows["index"] == 5)
    rows.loc[failed, ["status", "error", "sensitivity_max", "attr_seconds"]] = ["error", FAILURE, None, None]
    out = write_out(tmp_path_factory.mktemp("report") / "out", rows, n_images=8)
    return out, rows


class _Tables(HTMLParser):
    """Collects the cell texts of every <table>, and the attributes of every tag."""

    def __init__(self):
        super().__init__()
        self.tables, self.attributes, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.attributes.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None


def test_report_is_self_contained_and_has_what_it_promises(run_with_a_failure):
    out, _ = run_with_a_failure
    summary = summarize(str(out), n_boot=200)
    path = write_report(str(out), summary, gallery=4)
    assert path == f"{out}/report.html"
    text = (out / "report.html").read_text()
    parsed = _Tables()
    parsed.feed(text)

    # Nothing fetched: no external src/href, no script or stylesheet links.
    links = [v for _, attrs in parsed.attributes for k, v in attrs.items() if k in ("src", "href")]
    assert links and not any(re.match(r"\s*(https?:)?//", v) for v in links)
    assert not any(tag in ("script", "link", "iframe") for tag, _ in parsed.attributes)

    # One <img> per figure: distributions, trade-off, a CD diagram per metric (2), 4 gallery panels; all real PNGs.
    images = [attrs for tag, attrs in parsed.attributes if tag == "img"]
    assert len(images) == 1 + 1 + 2 + 4
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(a["alt"].startswith("panel of ") for a in images) == 4

    # The ranking table: a header and one row per method, best first, counts as in the rows.
    ranking = parsed.tables[0]
    assert ranking[0][:3] == ["Method", "n ok", "n failed"]
    body = {row[0]: row for row in ranking[1:]}
    assert sorted(body) == sorted(["Occlusion", "Integrated Gradients", "IG + SmoothGrad", "Guided Grad-CAM", "LIME"])
    assert body["LIME"][1:3] == ["7", "1"] and body["Occlusion"][1:3] == ["8", "0"]

    # The failed image with its message (escaped), the status, the fingerprint and the job settings.
    failures = next(t for t in parsed.tables if t[0] == ["Image", "Method", "Message"])
    assert failures[1:] == [["img5", "LIME", FAILURE]]
    assert html.escape(FAILURE) in text and FAILURE not in text
    assert "8 of 8 images (complete)" in text
    assert "abc123" in text and "n_perturb_samples: 10" in text


def test_report_of_a_partial_run_without_sensitivity(tmp_path):
    rows = table({m: [None] * 3 for m in FIVE}, {m: [1.0 + i, 2.0 + i, 3.0 + i] for i, m in enumerate(FIVE)})
    out = write_out(tmp_path / "out", rows, n_images=5, job=seed_job(sensitivity=None))
    text = open(write_report(str(out), summarize(str(out), n_boot=50), gallery=2)).read()
    assert "3 of 5 images (partial" in text
    # No sensitivity: no trade-off plot; distributions, one CD diagram, 2 gallery panels (the first images).
    assert text.count("<img ") == 1 + 1 + 2
    assert "img0: first images" in text and "img1: first images" in text
    assert "No failed images." in text


def test_gallery_picks_the_most_and_least_stable_images():
    rows = table({"a": [0.5, 0.1, 0.9, 0.3], "b": [0.5, 0.2, 0.7, 0.3]})  # means 0.5, 0.15, 0.8, 0.3
    picked = gallery_images(rows, 3)
    assert [i for i, _ in picked] == ["img1", "img3", "img2"]
    assert picked[0][1] == "most stable (mean sensitivity 0.15)" and picked[2][1].startswith("least stable")


def test_cd_cliques_join_methods_closer_than_cd():
    assert cliques([1.0, 1.5, 3.0, 3.2], cd=1.0) == [(0, 1), (2, 3)]
    assert cliques([1.0, 1.9, 2.8], cd=1.0) == [(0, 1), (1, 2)]
    assert cliques([1.0, 3.0], cd=1.0) == []


def test_panel_has_one_axes_per_method_plus_the_image_with_titles(run_with_a_failure):
    out, rows = run_with_a_failure
    results = open_results(str(out))
    figure = panel_figure(results, "img5")
    axes = figure.axes
    assert len(axes) == 1 + len(FIVE)
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "img5\ntarget cock (0.90)"
    occlusion = rows[(rows.method == "occlusion") & (rows["index"] == 5)].sensitivity_max.item()
    assert titles[1] == f"Occlusion\ncock (0.90)\nsensitivity {occlusion:.3g}"
    assert titles[5].startswith("LIME\nfailed: LIME <quickshift>")
    # The failed method shows the image only; the others add their overlay.
    assert [len(ax.images) for ax in axes] == [1, 2, 2, 2, 2, 1]
    with pytest.raises(ConfigError, match="no image 'img99'"):
        panel_figure(results, "img99")


def test_render_panel_writes_a_non_blank_png_one_panel_wide_per_method(run_with_a_failure, tmp_path):
    out, _ = run_with_a_failure
    path = render_panel(open_results(str(out)), "img2", str(tmp_path / "panel.png"))
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert width == pytest.approx(6 * 2.7 * 100, abs=2) and height == pytest.approx(2.7 * 1.45 * 100, abs=2)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1
    # The overlay's hot colour (jet's dark red) is there.
    assert ((rgb[..., 0] > 0.5) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)).sum() > 100


def test_display_map_is_normalised_for_display_only():
    attribution = np.zeros((3, 4, 4), dtype=np.float32)
    attribution[0, 0, 0], attribution[1, 1, 1] = -2.0, 1.0
    shown = display_map(attribution)
    # Σ|attr| is 2 and 1 at two pixels, 0 at 14; its 99.5th percentile (linear) is 1 + 0.925 · (2 − 1) = 1.925.
    assert shown[0, 0] == 1.0 and shown[1, 1] == pytest.approx(1 / 1.925) and shown[2, 2] == 0.0
    assert display_map(np.full((3, 2, 2), np.nan)) is None
    assert attribution[0, 0, 0] == -2.0  # the input stays raw
