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
from captum.attr import visualization as captum_visualization

from xcv_batch.report.panel import display_map, is_signed, overlay, panel_figure, render_panel
from xcv_batch.report.html import cliques, gallery_images, write_report
from xcv_batch.output.results import open_results
from xcv_batch.report.summarize import summarize
from xcv_batch.report.summary_text import render_markdown, render_table
from xcv_batch.report.tables import TERMINAL, Column, Table, to_html, to_markdown, to_rich

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

    # One <img> per figure: distributions, quality vs cost, a CD diagram per quality metric (1: sensitivity; time is
    # a cost), 4 gallery panels; no agreement heat map with one metric; all real PNGs.
    images = [attrs for tag, attrs in parsed.attributes if tag == "img"]
    assert len(images) == 1 + 1 + 1 + 4
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(a["alt"].startswith("panel of ") for a in images) == 4

    # The main ranking: method, counts, mean rank, win rate and cost only, one row per method, best first; each
    # metric's rank in the per-metric table below it, a row per metric and a column per method in the same order.
    ranking = parsed.tables[0]
    assert ranking[0] == ["Method", "n ok", "n failed", "Mean rank [95% CI]", "Win rate", "Cost: s / image"]
    body = {row[0]: row for row in ranking[1:]}
    assert sorted(body) == sorted(["Occlusion", "Integrated Gradients", "IG + SmoothGrad", "Guided Grad-CAM", "LIME"])
    assert body["LIME"][1:3] == ["7", "1"] and body["Occlusion"][1:3] == ["8", "0"]
    per_metric = parsed.tables[1]
    assert per_metric[0] == ["Metric (1 = best)", *(row[0] for row in ranking[1:])]
    assert per_metric[1][0] == "Max-Sensitivity" and len(per_metric) == 2
    # One metric: its mean rank is the overall one.
    assert per_metric[1][1:] == [row[3].split()[0] for row in ranking[1:]]
    # The metric's own table (in its collapsible part): n, median, rank and win rate on it alone.
    detail = next(t for t in parsed.tables if t[0][:3] == ["Method", "n", "median [95% CI]"])
    assert {row[0]: row[1] for row in detail[1:]}["LIME"] == "7"
    # Every section in the contents; the gallery says how many of the 8 images it leaves out.
    for anchor in ("ranking", "per-metric", "cost", "distributions", "gallery", "failures", "job"):
        assert f'<a href="#{anchor}">' in text and f'<section id="{anchor}">' in text
    assert "4 of 8 images with a map, the most and least stable" in text
    assert "<strong>4 images are not shown</strong>" in text

    # The failed image with its message (escaped), the status, the fingerprint and the job settings.
    failures = next(t for t in parsed.tables if t[0] == ["Image", "Method", "Message"])
    assert failures[1:] == [["img5", "LIME", FAILURE]]
    assert html.escape(FAILURE) in text and FAILURE not in text
    assert "8 of 8 images (complete)" in text
    assert "abc123" in text and "n_perturb_samples: 10" in text

    # The header says what was explained, and warns that these weights are random.
    assert "<strong>Model</strong> resnet18, <strong>weights</strong> none, <strong>resolution</strong> 224 px" in text
    assert "the model&#x27;s predicted class" in text and "8 of 8 images (complete), 1 with failures" in text
    assert 'class="warning">Random weights' in text
    # Which metrics entered the rank, and the cost beside it, not in it.
    assert "quality metrics only: Max-Sensitivity ×1" in text
    cost = next(t for t in parsed.tables if t[0][:2] == ["Method", "s / image"])
    assert len(cost) == 1 + 5 and "Cost: s / image" in ranking[0]

def test_report_of_a_partial_run_without_sensitivity(tmp_path):
    rows = table({m: [None] * 3 for m in FIVE}, {m: [1.0 + i, 2.0 + i, 3.0 + i] for i, m in enumerate(FIVE)})
    out = write_out(tmp_path / "out", rows, n_images=5, job=seed_job(sensitivity=None))
    text = open(write_report(str(out), summarize(str(out), n_boot=50), gallery=2)).read()
    assert "3 of 5 images (partial" in text
    # No sensitivity, so no quality metric: no distributions, quality-vs-cost or CD figure; 2 gallery panels (the
    # first images); the cost is still reported.
    assert text.count("<img ") == 2
    assert "nothing is ranked" in text and "<th>s / image</th>" in text
    for image_id in ("img0", "img1"):  # the id marked for browse to link (plain text in the file)
        assert f'<span class="image-id" data-image-id="{image_id}">{image_id}</span>: first images' in text
    assert "No failed images." in text


def test_gallery_picks_the_most_and_least_stable_images():
    rows = table({"a": [0.5, 0.1, 0.9, 0.3], "b": [0.5, 0.2, 0.7, 0.3]})  # means 0.5, 0.15, 0.8, 0.3
    picked = gallery_images(rows, 3)
    assert [i for i, _ in picked] == ["img1", "img3", "img2"]  # the 2 lowest, then the highest
    assert picked[0][1] == "most stable — rank 1 of 4 by mean Max-Sensitivity (0.15)"
    assert picked[1][1] == "rank 2 of 4 by mean Max-Sensitivity (0.3)"
    assert picked[2][1].startswith("least stable — rank 4 of 4 ")


def test_gallery_under_its_cap_shows_images_without_a_sensitivity_for_every_method_last():
    rows = table({"a": [0.5, 0.1, 0.9], "b": [0.2, None, 0.4]})  # img1 has no value for b: not ranked
    picked = gallery_images(rows, 3)
    assert [i for i, _ in picked] == ["img0", "img2", "img1"]
    assert picked[0][1].startswith("most stable — rank 1 of 2 ") and picked[1][1].startswith("least stable — rank 2")
    assert picked[2][1] == "not ranked: no Max-Sensitivity for every method"
    assert [i for i, _ in gallery_images(rows, 2)] == ["img0", "img2"]  # the cap: ranked images first
    assert gallery_images(rows.assign(status="error"), 3) == []


@pytest.mark.parametrize("n_images", [1, 2, 3, 20])
def test_gallery_labels_are_right_for_any_number_of_images(n_images):
    means = np.random.default_rng(n_images).permutation(np.linspace(0.3, 8.8, n_images))
    rows = table({"a": list(means * 0.5), "b": list(means * 1.5)})  # mean over methods = means
    picked = gallery_images(rows, 4)
    order = np.argsort(means, kind="stable")
    expected = list(order) if n_images <= 4 else [*order[:2], *order[-2:]]
    assert [i for i, _ in picked] == [f"img{i}" for i in expected]  # distinct images, most stable first
    labels = [why for _, why in picked]
    assert not any("most" in why and "least" in why for why in labels)
    if n_images == 1:
        assert labels == [f"the only image with a sensitivity ({means[0]:.3g})"]
        return
    assert [why.startswith("most stable") for why in labels].count(True) == 1 and labels[0].startswith("most")
    assert [why.startswith("least stable") for why in labels].count(True) == 1 and labels[-1].startswith("least")
    ranks = [1, 2, 3][:n_images] if n_images <= 4 else [1, 2, n_images - 1, n_images]
    ranks[-1] = n_images
    for why, rank, index in zip(labels, ranks, expected):
        assert f"rank {rank} of {n_images} by mean Max-Sensitivity ({means[index]:.3g})" in why


def test_cd_cliques_join_methods_closer_than_cd():
    assert cliques([1.0, 1.5, 3.0, 3.2], cd=1.0) == [(0, 1), (2, 3)]
    assert cliques([1.0, 1.9, 2.8], cd=1.0) == [(0, 1), (1, 2)]
    assert cliques([1.0, 3.0], cd=1.0) == []


def test_panel_has_one_axes_per_method_plus_the_image_with_titles(run_with_a_failure):
    out, rows = run_with_a_failure
    results = open_results(str(out))
    figure = panel_figure(results, "img5")
    axes = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 1 + len(FIVE)
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "img5\ntarget cock (#7), p 0.90"  # the class's name and index
    occlusion = rows[(rows.method == "occlusion") & (rows["index"] == 5)].sensitivity_max.item()
    assert titles[1] == f"Occlusion\nsensitivity {occlusion:.3g}"
    assert titles[5].startswith("LIME\nfailed: LIME <quickshift>")
    # The failed method shows the image only; the others add their overlay and a colour bar.
    assert [len(ax.images) for ax in axes] == [1, 2, 2, 2, 2, 1]
    assert len(figure.axes) - len(axes) == 4
    with pytest.raises(ConfigError, match="no image 'img99'"):
        panel_figure(results, "img99")


def test_panel_in_rows_keeps_every_method_and_bounds_the_width(run_with_a_failure):
    results = open_results(str(run_with_a_failure[0]))
    one_row = panel_figure(results, "img5")
    rows = panel_figure(results, "img5", columns=4)  # image + 5 methods: a row of 4, then 2
    titles = [ax.get_title() for ax in one_row.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in rows.axes if ax.get_label() != "<colorbar>"] == titles
    assert len(titles) == 6 and len(rows.axes) == len(one_row.axes)
    (rows_width, rows_height), (row_width, row_height) = rows.get_size_inches(), one_row.get_size_inches()
    assert (rows_width, row_width) == pytest.approx((4 * 2.7, 6 * 2.7))
    # Heights are fitted to what is drawn (no blank band): never above the panels' 1.7 share, two rows about twice one.
    assert 2.7 < row_height <= 2.7 * 1.7 and 2 * 2.7 < rows_height <= 2 * 2.7 * 1.7
    assert rows_height == pytest.approx(2 * row_height, rel=0.15)


def test_render_panel_writes_a_non_blank_png_one_panel_wide_per_method(run_with_a_failure, tmp_path):
    out, _ = run_with_a_failure
    path = render_panel(open_results(str(out)), "img2", str(tmp_path / "panel.png"))
    pixels = imread(path)
    height, width = pixels.shape[:2]
    # As tall as what it draws (no blank band over the titles): below the 1.7 panels' height that was fixed.
    assert width == pytest.approx(6 * 2.7 * 100, abs=2) and 2.7 * 100 < height < 2.7 * 1.7 * 100
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1
    # These maps are positive (channels blob, −blob, blob sum to +blob): red on the diverging and magnitude maps.
    assert ((rgb[..., 0] > rgb[..., 1] + 0.3) & (rgb[..., 0] > rgb[..., 2] + 0.3)).sum() > 100


def test_the_output_file_extension_picks_the_format(run_with_a_failure, tmp_path):
    results = open_results(str(run_with_a_failure[0]))
    magic = {"jpg": b"\xff\xd8\xff", "jpeg": b"\xff\xd8\xff", "png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
    for suffix, start in magic.items():
        path = render_panel(results, "img1", str(tmp_path / f"panel.{suffix}"))
        assert open(path, "rb").read(len(start)) == start, suffix
    for name, words in (("panel.xyz", "has '.xyz'"), ("panel", "has no extension")):
        with pytest.raises(ConfigError, match=words):
            render_panel(results, "img1", str(tmp_path / name))
        assert not (tmp_path / name).exists()


def test_display_map_is_signed_clipped_as_captum_and_normalised_for_display_only():
    attribution = np.zeros((3, 4, 4), dtype=np.float32)
    attribution[0, 0, 0], attribution[1, 1, 1] = -2.0, 1.0
    shown = display_map(attribution)
    # Channel sum: −2 and 1 at two pixels, 0 elsewhere; Σ|·| = 3, 98 % of it is reached only with the 2: scale 2.
    assert shown.signed and shown.scale == 2.0
    assert shown.values[0, 0] == -1.0 and shown.values[1, 1] == 0.5 and shown.values[2, 2] == 0.0
    assert attribution[0, 0, 0] == -2.0  # the input stays raw
    assert display_map(np.full((3, 2, 2), np.nan)) is None
    # Positive, blue-free for a magnitude; blue for negative and red for positive on a signed map.
    rgba = overlay(shown)
    assert rgba[0, 0, 2] > rgba[0, 0, 0] and rgba[1, 1, 0] > rgba[1, 1, 2]
    assert not display_map(np.abs(attribution)).signed
    # A signed method stays on the diverging map on an image where its map happens to be positive.
    assert display_map(np.abs(attribution), signed=True).signed
    assert [is_signed(m) for m in ("occlusion", "integrated_gradients", "guided_gradcam", "lime")] == [True] * 4
    assert is_signed("ig_smoothgrad", {"nt_type": "smoothgrad"}) and not is_signed("ig_smoothgrad", {})
    assert is_signed("made_up") is None


def test_display_map_equals_captums_normalisation():
    rng = np.random.default_rng(0)
    attribution = rng.standard_cauchy((3, 16, 16)).astype(np.float32)  # heavy tails: clipping matters
    expected = captum_visualization._normalize_attr(attribution.sum(axis=0).astype(np.float64), "all", 2)
    np.testing.assert_allclose(display_map(attribution).values, expected, rtol=1e-6, atol=1e-6)


def test_lime_tiles_do_not_all_saturate():
    tiles = np.repeat(np.repeat(np.array([[4.0, 3.0], [2.0, 1.0]]), 2, axis=0), 2, axis=1)  # four 2×2 superpixels
    shown = display_map(np.stack([tiles, np.zeros_like(tiles), np.zeros_like(tiles)]))
    # Σ|·| = 40: 98 % of it is reached only within the top tile, so only that tile is at full colour.
    assert shown.scale == 4.0 and sorted(np.unique(shown.values)) == [0.25, 0.5, 0.75, 1.0]


def _terminal_cells(rich_table) -> list[list[str]]:
    """The rich table's rows, each two-line cell (a value over its CI) joined back onto one line."""
    columns = [[cell.replace("\n[", " [") for cell in column.cells] for column in rich_table.columns]
    return [list(row) for row in zip(*columns)]


def test_the_ranking_is_one_table_with_the_same_cells_in_markdown_html_and_the_terminal(run_with_a_failure):
    out, rows = run_with_a_failure
    summary = summarize(str(out), n_boot=100)
    parsed = _Tables()
    parsed.feed(open(write_report(str(out), summary, gallery=0)).read())
    in_html = parsed.tables[0][1:]  # the main ranking: method, counts, mean rank, win rate, cost
    medians_html = next(t for t in parsed.tables if t[0][:3] == ["Method", "n", "median [95% CI]"])[1:]
    lines = render_markdown(summary).splitlines()
    table_i = lines[lines.index("## Table I") + 4:lines.index("## Mean rank per metric (1 = best)") - 1]
    in_markdown = [[c.strip() for c in line.strip("|").split("|")] for line in table_i if line.startswith("| ")]
    in_terminal = _terminal_cells(render_table(summary))

    # Best first by mean rank, every medium the same rows; the first five columns (method, counts, mean rank, win
    # rate) hold the very same text.
    best_first = sorted(summary.methods.values(), key=lambda m: m.mean_rank)
    assert [row[0] for row in in_markdown] == [m.label for m in best_first]
    assert [row[:5] for row in in_html] == [row[:5] for row in in_markdown] == [row[:5] for row in in_terminal]
    lime = next(row for row in in_markdown if row[0] == "LIME")
    ok_lime = rows[(rows.method == "lime") & (rows.status == "ok")]
    assert lime[1:3] == [str(len(ok_lime)), "1"]
    lime_summary = summary.methods["lime"]
    lo, hi = lime_summary.mean_rank_ci95
    assert lime[3] == f"{lime_summary.mean_rank:.2f} [{lo:.2f}, {hi:.2f}]"
    # The median of Max-Sensitivity: the same cell in markdown and in the HTML's metric table, the same number to 3
    # digits in the terminal.
    median = np.median(ok_lime.sensitivity_max)
    assert float(lime[5].split()[0]) == pytest.approx(median, rel=5e-4)
    assert [[row[0], row[2]] for row in medians_html] == [[row[0], row[5]] for row in in_markdown]
    for terminal_row, markdown_row in zip(in_terminal, in_markdown):
        assert float(terminal_row[5].split()[0]) == pytest.approx(float(markdown_row[5].split()[0]), rel=5e-3)
    # Cost, last: seconds per image, the same in HTML and the terminal.
    assert [row[-1] for row in in_html] == [row[-1] for row in in_terminal]
    lime_html = next(row for row in in_html if row[0] == "LIME")
    assert float(lime_html[-1]) == pytest.approx(ok_lime.attr_seconds.mean(), rel=5e-3)


def test_a_table_renders_its_cells_and_each_mediums_own_header_and_cells():
    table = Table([Column("Method", ["A|B", "<c>"]),
                   Column("Mean rank [95% CI]", ["1.00 [1.00, 2.00]", "2.00 [1.00, 2.00]"], "rank",
                          header_in={TERMINAL: "Mean rank\n[95% CI]"},
                          cells_in={TERMINAL: ["1.00\n[1.00, 2.00]", "2.00\n[1.00, 2.00]"]}),
                   Column("Seed", ["0.13", "–"], "seed")], title="T")
    assert to_markdown(table) == ["| Method | Mean rank [95% CI] | Seed |", "| --- | --- | --- |",
                                  "| A\\|B | 1.00 [1.00, 2.00] | 0.13 |", "| <c> | 2.00 [1.00, 2.00] | – |"]
    parsed = _Tables()
    parsed.feed(to_html(table.select(drop={"seed"})))
    assert parsed.tables == [[["Method", "Mean rank [95% CI]"], ["A|B", "1.00 [1.00, 2.00]"],
                              ["<c>", "2.00 [1.00, 2.00]"]]]
    assert "&lt;c&gt;" in to_html(table)
    rich_table = to_rich(table.select(keep={"", "rank"}))
    assert rich_table.title == "T" and [c.header for c in rich_table.columns] == ["Method", "Mean rank\n[95% CI]"]
    assert list(rich_table.columns[1].cells) == ["1.00\n[1.00, 2.00]", "2.00\n[1.00, 2.00]"]
