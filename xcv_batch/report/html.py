"""``OUT/report.html``: one self-contained file (PNGs base64-embedded, inline CSS, nothing fetched), laid out to fit a
laptop screen (1,366 px): no table wider than the page, every figure shown at (nearly) its own size.

Sections, each listed in the table of contents: the ranking (method, mean rank, win rate, cost), each metric in
detail (values, ranks and tests, collapsible), the cost, the metrics' agreement (heat map of Kendall's τ), per-method
diagnostics (IG's completeness gap), distributions (one small box plot per metric, in a grid), quality rank vs cost
with the Pareto front, critical-difference diagrams, a gallery of Fig. 1-style panels (every image up to a cap, else
the most and least stable, with the number not shown), failures, the job. Nothing grows with the number of images
beyond fixed caps. The tables and sentences are summary.md's (summary_text.py), laid out as HTML by tables.py.
A section is one function returning its body, listed once in :func:`render_report`.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from . import stats
from ..errors import OutputError
from ..output.layout import JOB_FILE
from .panel import panel_figure
from .row_table import RowTable, frame_table, read_table
from ..output.results import Results, open_results
from .controls import control_sentences
from .labels import method_label
from .summary_text import (COST, COUNTS, METHOD, RANK, agreement_matrix_table, agreement_pairs_table,
                           agreement_sentence, bootstrap_sentence, cost_sentence, cost_table, diagnostic_sentences, fmt,
                           friedman_sentence, metric_ranks_table, metric_table, pairwise_table, rank_sentence,
                           ranking_table)
from .summarize import write_text
from .summary_types import Summary
from .tables import Table, to_html

#: Gallery panels at most: every image with a map up to this many, else half the most and half the least stable.
GALLERY_CAP = 8
_FAILURES_SHOWN = 200
#: The failures list starts open when it is this short.
_FAILURES_OPEN = 20
#: Subplots per row of a gallery panel (image + methods): 6 × 270 px stays above 60 % of its width on a 1,366 px
#: screen, whatever the number of methods.
_PANEL_COLUMNS = 6
#: Width of one small multiple (a metric's box plot), inches at 100 dpi: three to a row in the page's 1,280 px.
_SMALL_INCHES = 4.0

# matplotlib ≥ 3.10 spells a horizontal box plot ``orientation``; ``vert`` is deprecated there and all that 3.8 knows.
_HORIZONTAL = ({"orientation": "horizontal"} if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
               else {"vert": False})

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1.5em; max-width: 1280px; color: #222;
       line-height: 1.4; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
section { scroll-margin-top: 0.5em; }
.table-box { max-width: 100%; overflow-x: auto; margin: 0.5em 0 1.2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
table.main { font-size: 1.05em; }
table.main td, table.main th { white-space: nowrap; }
.complete { color: #176117; } .partial { color: #a15c00; }
.warning { background: #fff1d6; border: 2px solid #d08a00; padding: 0.6em 1em; font-weight: bold; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 0.5em 1em;
        align-items: start; }
.grid.wide { grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); }
.grid img { margin: 0; }
figure { margin: 0 0 1.2em; }
figcaption { font-weight: bold; margin-bottom: 0.3em; }
details { margin: 0.4em 0; border: 1px solid #ddd; padding: 0.3em 0.8em; border-radius: 4px; }
summary { cursor: pointer; }
nav#contents { background: #f6f6f6; padding: 0.5em 1em; border-radius: 4px; }
nav#contents ol { columns: 3; margin: 0.3em 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


# --- figures --------------------------------------------------------------------------------------------------------


def _ok_values(table: RowTable, metric: str, method: str) -> np.ndarray:
    values = table.values[metric][:, [*table.methods, *table.controls].index(method)]
    return values[np.isfinite(values)]


def _log_scale_helps(values: list[np.ndarray]) -> bool:
    """Log axis when every value is positive and they span more than two decades (seconds: 0.3 s vs 90 s)."""
    joined = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.array([])
    return len(joined) > 0 and joined.min() > 0 and joined.max() / joined.min() > 100


def distribution_figure(table: RowTable, summary: Summary, metric: str) -> Figure | None:
    """One ranked metric's values: a horizontal box per method, best method on top. One small figure per metric, so
    that a page lays them out as small multiples at their own size instead of shrinking one wide strip."""
    methods = summary.best_first()
    info = summary.metrics[metric]
    values = [_ok_values(table, metric, m) for m in methods]
    shown = [(v, method_label(m)) for v, m in zip(values, methods) if len(v)]
    if not shown:
        return None
    figure = Figure(figsize=(_SMALL_INCHES, 1.0 + 0.34 * len(shown)), dpi=100)
    ax = figure.subplots()
    ax.boxplot([v for v, _ in reversed(shown)], showfliers=True, flierprops={"markersize": 2}, **_HORIZONTAL)
    ax.set_yticks(range(1, len(shown) + 1), [label for _, label in reversed(shown)], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if _log_scale_helps(values):
        ax.set_xscale("log")
    ax.set_title(f"{info.title}, {info.direction} is better", fontsize=9)
    figure.tight_layout()
    return figure


def cost_quality_figure(summary: Summary) -> Figure | None:
    """Each method's cost (attribution seconds per image) against its quality (overall mean rank, 95 % CI), with
    the Pareto front of the methods no other beats on both. Cost is a method-level figure: per-image times are
    batch shares, so no per-image dots."""
    points, names = [], []
    for name in summary.best_first():
        cost = summary.cost.methods.get(name)
        seconds = cost.seconds_per_image if cost else None
        rank = summary.methods[name].mean_rank
        if seconds is not None and seconds > 0 and rank is not None:
            points.append((seconds, rank))
            names.append(name)
    if not points:
        return None
    figure = Figure(figsize=(7.5, 5.0), dpi=100)
    ax = figure.subplots()
    colors = {m: f"C{i}" for i, m in enumerate(summary.methods)}
    for (seconds, rank), name in zip(points, names):
        lo, hi = summary.methods[name].mean_rank_ci95
        errors = [[rank - lo], [hi - rank]] if lo is not None and hi is not None else None
        ax.errorbar(seconds, rank, yerr=errors, fmt="o", markersize=9, color=colors[name], markeredgecolor="black",
                    capsize=4, zorder=3, label=method_label(name))
    array = np.asarray(points, dtype=float)
    front = stats.pareto_front(array, ["lower", "lower"])
    on_front = array[front][np.argsort(array[front][:, 0])]
    ax.plot(on_front[:, 0], on_front[:, 1], "k--", linewidth=1, zorder=2, label="Pareto front")
    ax.scatter(on_front[:, 0], on_front[:, 1], s=260, facecolor="none", edgecolor="black", zorder=4)
    if array[:, 0].max() / array[:, 0].min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("attribution seconds per image (cost, not ranked), lower is better")
    ax.set_ylabel("mean rank over the quality metrics (1 = best)")
    ax.legend(fontsize=8)
    ax.set_title("Quality vs cost; ringed: not beaten on both", fontsize=10)
    figure.tight_layout()
    return figure


def agreement_figure(summary: Summary) -> Figure | None:
    """Heat map of the mean Kendall's τ between every pair of ranked metrics (1: same method order on every image,
    0: unrelated, −1: reversed)."""
    names = summary.agreement.metrics
    if len(names) < 2:
        return None
    matrix = np.array([[np.nan if v is None else v for v in row] for row in summary.agreement.matrix], dtype=float)
    labels = [summary.metrics[m].label for m in names]
    size = 1.6 + 0.75 * len(names)
    figure = Figure(figsize=(size + 1.8, size), dpi=100)
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=-1, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "–" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
            dark = not np.isnan(matrix[i, j]) and abs(matrix[i, j]) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(names)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    figure.colorbar(image, ax=ax, label="mean Kendall's τ over images")
    ax.set_title("Do the metrics order the methods alike?", fontsize=10)
    figure.tight_layout()
    return figure


def cliques(mean_ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of rank-sorted methods whose ranks differ by less than ``cd`` (Demšar's bars)."""
    order = sorted(mean_ranks)
    runs = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and order[j + 1] - order[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in runs):
            runs.append((i, j))
    return runs


def cd_figure(summary: Summary, metric: str) -> Figure | None:
    """Demšar's critical-difference diagram of one metric: mean ranks on an axis, the CD bar, and bars joining the
    methods that Nemenyi's test cannot tell apart."""
    info = summary.metrics[metric]
    cd = info.nemenyi_cd
    ranks = {m: summary.methods[m].ranks.get(metric) for m in info.methods}
    ranked = [(r.mean_rank, m) for m, r in ranks.items() if r is not None and r.mean_rank is not None]
    if cd is None or len(ranked) < 2:
        return None
    ranked.sort()
    k = len(info.methods)
    figure = Figure(figsize=(7.5, 1.3 + 0.35 * ((len(ranked) + 1) // 2)), dpi=100)
    ax = figure.subplots()
    ax.set_xlim(0.3, k + 0.7)
    half = (len(ranked) + 1) // 2
    ax.set_ylim(-(0.45 * half + 0.45), 1.25)
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="black", linewidth=1)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.12], color="black", linewidth=1)
        ax.text(tick, 0.2, str(tick), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + cd], [0.85, 0.85], color="black", linewidth=2)
    ax.text(1 + cd / 2, 0.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    for i, (rank, method) in enumerate(ranked):
        left = i < half
        y = -0.45 * ((i if left else len(ranked) - 1 - i) + 1) - 0.2
        x_text = 0.35 if left else k + 0.65
        ax.plot([rank, rank, x_text], [0, y, y], color="gray", linewidth=0.8)
        ax.text(x_text, y + 0.05, f"{method_label(method)} ({rank:.2f})", ha="left" if left else "right",
                va="bottom", fontsize=8)
    for level, (first, last) in enumerate(cliques([r for r, _ in ranked], cd)):
        y = -0.12 - 0.1 * level
        ax.plot([ranked[first][0] - 0.03, ranked[last][0] + 0.03], [y, y], color="black", linewidth=3)
    ax.set_title(f"{info.label}: mean rank (1 = best), n = {info.n_images} images", fontsize=10)
    figure.tight_layout()
    return figure


def gallery_pool(table: RowTable) -> pd.Series:
    """Every image with a successful row (its code), in the gallery's order: those with a mean Max-Sensitivity over
    the methods, ascending (most stable first), then the others (value NaN) in the images' order."""
    with_ok = table.images[table.image_ok]
    ranked = _mean_sensitivity_per_image(table)
    others = with_ok[~np.isin(with_ok, ranked.index.to_numpy())]
    return pd.concat([ranked.astype(float), pd.Series(np.nan, index=others, dtype=float)])


def gallery_images(rows: pd.DataFrame, count: int) -> list[tuple[str, str]]:
    """(image id, why) of up to ``count`` images of metric ``rows``: every image when there are no more than
    ``count``, else the ⌈count/2⌉ most and ⌊count/2⌋ least stable by mean Max-Sensitivity over the methods; most
    stable first, then the images without a mean sensitivity (all of them when sensitivity is off: the first images).

    Each label gives the image's rank among all ranked images (1 = lowest mean sensitivity); only rank 1 is called
    "most stable" and only the last "least stable", so no image is called both and no two are "most stable".
    """
    table = frame_table(rows)
    return [(table.name(code), why) for code, why in pick_gallery(gallery_pool(table), count)]


def pick_gallery(pool: pd.Series, count: int) -> list[tuple[str, str]]:
    """:func:`gallery_images` from a :func:`gallery_pool`."""
    if count <= 0 or pool.empty:
        return []
    n = int(pool.notna().sum())
    if n > count:
        chosen = [*range((count + 1) // 2), *range(n - count // 2, n)]
    else:
        chosen = range(min(count, len(pool)))
    unranked = "first images" if n == 0 else "not ranked: no Max-Sensitivity for every method"
    return [(pool.index[r], stability_label(r + 1, n, float(pool.iloc[r])) if r < n else unranked) for r in chosen]


def _mean_sensitivity_per_image(table: RowTable) -> pd.Series:
    """Mean Max-Sensitivity over methods per image (code), ascending, ties in the ids' order; over the images with a
    value for every method that has any (a mean over fewer methods mixes scales: IG's values are ten times LIME's),
    else over what there is."""
    if "sensitivity_max" not in table.values or table.metric_skipped("sensitivity_max"):
        return pd.Series(dtype=float)
    names = [*table.methods, *table.controls]
    by_name = sorted(range(len(names)), key=lambda j: names[j])
    wide = pd.DataFrame(table.values["sensitivity_max"][table.image_ok][:, by_name],
                        index=table.images[table.image_ok])
    wide = wide.dropna(axis=1, how="all")
    if wide.empty:
        return pd.Series(dtype=float)
    complete = wide.dropna()
    per_image = (complete if not complete.empty else wide).mean(axis=1).dropna()
    return per_image.sort_index().sort_values(kind="stable")


def stability_label(rank: int, n: int, value: float) -> str:
    """The gallery caption of the image ranked ``rank`` of ``n`` by mean sensitivity."""
    where = f"rank {rank} of {n} by mean Max-Sensitivity ({value:.3g})"
    if n == 1:
        return f"the only image with a sensitivity ({value:.3g})"
    if rank == 1:
        return f"most stable — {where}"
    if rank == n:
        return f"least stable — {where}"
    return where


# --- HTML -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One titled part of the report: ``anchor`` is its id, which the table of contents links to; a section with an
    empty ``body`` is left out, and out of the contents."""

    anchor: str
    title: str
    body: str


def _img(figure: Figure | None, alt: str) -> str:
    if figure is None:
        return ""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _grid(images: list[str], css: str = "grid") -> str:
    """Figures side by side, as many per row as fit at (nearly) their own width (the CSS sets the column width)."""
    shown = [i for i in images if i]
    return f'<div class="{css}">' + "".join(shown) + "</div>" if shown else ""


def _table(table: Table, css: str = "") -> str:
    """A table in a box of its own: a wide detail table scrolls inside it, never the page."""
    rendered = to_html(table)
    if css:
        rendered = rendered.replace("<table>", f'<table class="{css}">', 1)
    return f'<div class="table-box">{rendered}</div>'


def _header(summary: Summary) -> str:
    """What was explained: model, weights, resolution, target rule, images and failures; a banner when the weights
    are random, since then every map explains noise."""
    facts = summary.facts
    model = facts.model
    target = {"predicted": "the model's predicted class", "label": "the manifest's label"}.get(
        facts.target, str(facts.target or "–"))
    failed = summary.n_failed_images
    facts_html = (f"<p><strong>Model</strong> {html.escape(str(model.arch or '–'))}, "
                  f"<strong>weights</strong> {html.escape(str(model.weights or '–'))}, "
                  f"<strong>resolution</strong> {html.escape(str(model.resolution or '–'))} px; "
                  f"<strong>target</strong>: {html.escape(target)}; "
                  f"<strong>images</strong>: {html.escape(summary.status_line())}, {failed} with failures.</p>")
    if str(model.weights or "").lower() != "none":
        return facts_html
    return (facts_html + '<p class="warning">Random weights (model.weights: none): this network was never trained. '
            "Its maps explain random features, so these rankings say nothing about how the methods explain a trained "
            "classifier.</p>")


def _contents(sections: list[Section]) -> str:
    links = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    return f'<nav id="contents" aria-label="Contents"><strong>Contents</strong><ol>{links}</ol></nav>'


def _section_html(section: Section) -> str:
    return f'<section id="{section.anchor}">\n<h2>{html.escape(section.title)}</h2>\n{section.body}\n</section>'


# --- sections, in the report's order ---------------------------------------------------------------------------------


def _ranking_section(summary: Summary) -> str:
    """The main ranking, narrow enough for a laptop: method, rows ok and failed, mean rank [95% CI], win rate and
    cost. Each metric's values and ranks are in the per-metric section."""
    main = ranking_table(summary).select(keep={METHOD, COUNTS, RANK, COST})
    return ("<p>Per image, the methods are ranked on each quality metric (1 = best, ties share the average rank); the "
            "win rate is the share of images a method ranks first on (ties shared). "
            f"{html.escape(rank_sentence(summary))}</p>" + _table(main, "main"))


def _per_metric_section(summary: Summary) -> str:
    """Every metric's mean rank side by side, then one collapsible part per metric: its values, its ranks and its
    tests (Friedman, pairwise Wilcoxon)."""
    parts = ["<p>Each method's mean rank on each metric alone (1 = best). Open a metric for its values "
             "(median [95% CI]), its ranks with their CIs and its tests.</p>", _table(metric_ranks_table(summary))]
    for metric, info in summary.metrics.items():
        tests = summary.tests.get(metric)
        weight = f"weight {info.weight:.3g} in the rank" if info.weight else "not in the rank"
        body = [_table(metric_table(summary, metric))]
        if tests is not None:
            body.append(f"<p>{html.escape(friedman_sentence(tests.friedman))}"
                        + (f" Nemenyi CD = {tests.nemenyi.cd:.3f}." if tests.nemenyi.cd is not None else "") + "</p>")
            if tests.pairwise:
                body.append(_table(pairwise_table(tests)))
        parts.append(f"<details><summary><strong>{html.escape(info.title)}</strong>: {info.direction} is better, "
                     f"n = {info.n_images} images, {weight}</summary>\n"
                     + "\n".join(body) + "</details>")
    for metric, why in summary.metrics_skipped.items():
        parts.append(f"<p>Not ranked: {html.escape(metric)} ({html.escape(why)}).</p>")
    return "\n".join(parts)


def _cost_section(summary: Summary) -> str:
    return f"<p>{html.escape(cost_sentence(summary))}</p>" + _table(cost_table(summary))


def _agreement_section(summary: Summary) -> str:
    agreement = summary.agreement
    if len(agreement.metrics) < 2:
        return "<p>One ranked metric: no agreement to measure.</p>"
    parts = ["<p>Per image, Kendall's τ-b between the method orders two metrics give, averaged over images "
             "(bootstrap 95 % CI). Kendall's W: concordance of the metrics that entered the rank.</p>"]
    sentence = agreement_sentence(summary)
    if sentence:
        css = ' class="warning"' if agreement.disagreeing else ""
        parts.append(f"<p{css}>{html.escape(sentence)}</p>")
    parts.append(_img(agreement_figure(summary), "agreement between metrics: mean Kendall's tau"))
    parts.append(_table(agreement_matrix_table(summary)))
    parts.append(_table(agreement_pairs_table(summary)))
    return "\n".join(parts)


def _diagnostics_section(summary: Summary) -> str:
    diagnostics = summary.diagnostics
    if not diagnostics:
        return ""
    parts = ["<p>Checks of a method's own output; reported, not ranked.</p>"]
    for sentence, info in zip(diagnostic_sentences(summary), diagnostics.values()):
        css = ' class="warning"' if info.n_above else ""
        parts.append(f"<p{css}>{html.escape(sentence)} {html.escape(info.meaning)}.</p>")
        if info.above:
            parts.append(_table(Table.from_rows(["Image", info.label],
                                                [[a.image_id, fmt(a.value, 3)] for a in info.above])))
    return "\n".join(parts)


def _distributions_section(table: RowTable, summary: Summary) -> str:
    if not summary.metrics:
        return ""
    figures = [_img(distribution_figure(table, summary, metric), f"distribution of {metric} per method")
               for metric in summary.metrics]
    return ("<p>Each metric's values over the images, a box per method (median, quartiles, 1.5 IQR whiskers), the "
            "best method on top.</p>" + _grid(figures))


def _cost_quality_section(summary: Summary) -> str:
    return _img(cost_quality_figure(summary), "quality rank vs seconds, Pareto front")


def _cd_section(summary: Summary) -> str:
    figures = [_img(cd_figure(summary, metric), f"critical-difference diagram: {metric}") for metric in summary.metrics]
    if not any(figures):
        return ""
    return ("<p>Methods joined by a bar are not significantly different (Nemenyi, α = 0.05).</p>"
            + _grid(figures, "grid wide"))


def _gallery_section(results: Results, table: RowTable, cap: int) -> str:
    """Up to ``cap`` panels (every image when there are no more), and how many images are not shown, so that the
    page stays bounded at any number of images."""
    pool = gallery_pool(table)
    picked = [(table.name(code), why) for code, why in pick_gallery(pool, cap)]
    n_ranked = int(pool.notna().sum())
    order = (" (no Max-Sensitivity in this run: the first ones)." if n_ranked == 0 else
             ": the most stable first, by mean Max-Sensitivity over the methods (lower = more stable); each caption "
             "gives the image's rank among all ranked images, rank 1 the lowest.")
    parts = []
    if pool.empty:
        parts.append("<p>No image has a map to show.</p>")
    elif len(picked) == len(pool):
        parts.append(f"<p>All {len(pool)} images with a map{order}</p>")
    else:
        which = ", the most and least stable" if n_ranked > cap else ""
        parts.append(f"<p>{len(picked)} of {len(pool)} images with a map{which}{order} "
                     f"<strong>{len(pool) - len(picked)} images are not shown</strong>; draw any of them with "
                     "<code>python -m xcv_batch show OUT --image ID --output FILE</code>.</p>")
    n_without = len(table.images) - len(pool)
    if n_without:
        parts.append(f'<p>{n_without} images failed for every method and have no map: see <a href="#failures">'
                     "Failures</a>.</p>")
    for image_id, why in picked:
        try:
            figure = _img(panel_figure(results, image_id, columns=_PANEL_COLUMNS), f"panel of {image_id}")
        except OutputError as err:  # its input cannot be decoded: the other panels are still drawn
            figure = f"<p>{html.escape(str(err))}</p>"
        parts.append(f"<figure><figcaption>{image_id_html(image_id)}: {html.escape(why)}</figcaption>{figure}"
                     "</figure>")
    return "\n".join(parts)


def _failures_section(summary: Summary) -> str:
    failures = summary.failures
    if not failures:
        return "<p>No failed images.</p>"
    shown = failures[:_FAILURES_SHOWN]
    more = f"; the first {_FAILURES_SHOWN} below" if len(failures) > _FAILURES_SHOWN else ""
    table = _table(Table.from_rows(["Image", "Method", "Message"],
                                   [[f.image_id, method_label(f.method), f.error or ""] for f in shown]))
    return (f"<details{' open' if len(shown) <= _FAILURES_OPEN else ''}><summary>{len(failures)} failed rows on "
            f"{summary.n_failed_images} images{more}</summary>\n{table}</details>")


#: How to look at every image; opened from browse (its Report link), this page also gets a link back to it, and the
#: gallery's image ids become links to their pages there.
_BROWSE_LINE = ("<p>Every image with its maps, to sort and filter: <code>python -m xcv_batch browse OUT</code> (a local "
                "page; its Report link opens this report, where each image id of the gallery links to the image's "
                "page).</p>")


def image_id_html(image_id) -> str:
    """An image id as text, marked (``class="image-id"``, ``data-image-id``) so that browse can link it to the
    image's page; opened from disk it stays plain text, with no link that could break."""
    text = html.escape(str(image_id))
    return f'<span class="image-id" data-image-id="{text}">{text}</span>'


def _controls_section(summary: Summary) -> str:
    """Whether each metric told the methods' maps from maps that know nothing about the model; empty without
    controls (the section is then left out)."""
    lines = control_sentences(summary.controls)
    return "".join(f'<p class="control">{html.escape(line)}</p>' for line in lines)


def _job_section(job: dict | None) -> str:
    job_text = yaml.safe_dump(job, sort_keys=False) if job else f"no {JOB_FILE}"
    return f"<details><summary>{JOB_FILE}</summary><pre>{html.escape(job_text)}</pre></details>"


def render_report(results: Results, summary: Summary, gallery: int = GALLERY_CAP) -> str:
    """The report's HTML text. Its rows are the summary's arrays (report/row_table.py; read again only for another
    open Results), and nothing in it grows with the images: one figure per metric, at most ``gallery`` panels, capped
    diagnostics and failures."""
    table = read_table(results, methods=results.methods)
    facts = summary.facts
    status_class = "complete" if facts.complete else "partial"
    title = html.escape(str(facts.job_name or results.out))
    sections = [
        Section("ranking", "Ranking", _ranking_section(summary)),
        Section("controls", "Control maps", _controls_section(summary)),
        Section("per-metric", "Per metric", _per_metric_section(summary)),
        Section("cost", "Cost", _cost_section(summary)),
        Section("agreement", "Metric agreement", _agreement_section(summary)),
        Section("diagnostics", "Diagnostics", _diagnostics_section(summary)),
        Section("distributions", "Distributions", _distributions_section(table, summary)),
        Section("quality-cost", "Quality vs cost", _cost_quality_section(summary)),
        Section("critical-difference", "Critical-difference diagrams", _cd_section(summary)),
        Section("gallery", "Gallery", _gallery_section(results, table, gallery)),
        Section("failures", "Failures", _failures_section(summary)),
        Section("job", "Job", _job_section(results.job)),
    ]
    sections = [s for s in sections if s.body]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>xcv_batch report: {title}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>xcv_batch report: {title}</h1>",
        f'<p class="{status_class}"><strong>{html.escape(summary.status_line())}</strong></p>',
        _header(summary),
        f"<p>Output: <code>{html.escape(results.out)}</code>. Fingerprint: "
        f"<code>{html.escape(str(facts.fingerprint or results.fingerprint))}</code>. "
        f"CIs: {html.escape(bootstrap_sentence(summary))}.</p>",
        _BROWSE_LINE,
        _contents(sections),
        *(_section_html(s) for s in sections),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(out: "str | Results", summary: Summary, gallery: int = GALLERY_CAP) -> str:
    """Write ``OUT/report.html`` (``out`` a path or its open Results); returns its path."""
    results = open_results(out)
    path = f"{results.out}/report.html"
    write_text(path, render_report(results, summary, gallery))
    return path
