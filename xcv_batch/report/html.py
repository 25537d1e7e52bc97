"""``OUT/report.html``: one self-contained file (PNGs base64-embedded, inline CSS, nothing fetched).

Sections: a header (model, weights, resolution, target rule, images, failures; a banner for random weights), the
ranking table with the metrics that entered the rank, the cost beside it, the metrics' agreement (heat map of
Kendall's τ), per-method diagnostics (IG's completeness gap), tests, distributions, quality rank vs cost with the
Pareto front, critical-difference diagrams, a gallery of Fig. 1-style panels (most and least stable images),
failures, the job. The tables and sentences are summary.md's (summary_text.py), laid out as HTML by tables.py.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from . import stats
from ..errors import OutputError
from ..output.layout import JOB_FILE
from .panel import panel_figure
from ..output.results import Results, open_results
from .controls import control_sentences
from .labels import method_label
from .summary_text import (SEED, agreement_matrix_table, agreement_pairs_table, agreement_sentence,
                           cost_sentence, cost_table, diagnostic_sentences, fmt, friedman_sentence, pairwise_table,
                           rank_sentence, ranking_table)
from .summarize import write_text
from .summary_types import Summary
from .tables import Table, to_html

_FAILURES_SHOWN = 200

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.complete { color: #176117; } .partial { color: #a15c00; }
.warning { background: #fff1d6; border: 2px solid #d08a00; padding: 0.6em 1em; font-weight: bold; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


# --- figures --------------------------------------------------------------------------------------------------------


def _ok_values(rows: pd.DataFrame, metric: str, method: str) -> np.ndarray:
    selected = rows[(rows["method"] == method) & (rows["status"] == "ok")][metric]
    values = pd.to_numeric(selected, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return values[np.isfinite(values)]


def _log_scale_helps(values: list[np.ndarray]) -> bool:
    """Log axis when every value is positive and they span more than two decades (seconds: 0.3 s vs 90 s)."""
    joined = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.array([])
    return len(joined) > 0 and joined.min() > 0 and joined.max() / joined.min() > 100


def distribution_figure(rows: pd.DataFrame, summary: Summary) -> Figure | None:
    """One box plot per ranked metric, a box per method."""
    metrics = list(summary.metrics)
    if not metrics:
        return None
    methods = summary.best_first()
    figure = Figure(figsize=(5.5 * len(metrics), 4.0), dpi=100)
    for ax, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
        info = summary.metrics[metric]
        values = [_ok_values(rows, metric, m) for m in methods]
        shown = [(v, method_label(m)) for v, m in zip(values, methods) if len(v)]
        ax.boxplot([v for v, _ in shown], showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(shown) + 1), [label for _, label in shown], rotation=30, ha="right", fontsize=8)
        if _log_scale_helps(values):
            ax.set_yscale("log")
        ax.set_title(f"{info.title}, {info.direction} is better", fontsize=10)
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


def gallery_images(rows: pd.DataFrame, count: int) -> list[tuple[str, str]]:
    """(image id, why) of up to ``count`` images: the ⌈count/2⌉ most and ⌊count/2⌋ least stable by mean
    Max-Sensitivity over the methods (every image when there are no more than ``count``), most stable first; the
    first images when sensitivity is off.

    Each label gives the image's rank among all ranked images (1 = lowest mean sensitivity); only rank 1 is called
    "most stable" and only the last "least stable", so no image is called both and no two are "most stable".
    """
    ok = rows[rows["status"] == "ok"]
    if count <= 0 or ok.empty:
        return []
    per_image = _mean_sensitivity_per_image(ok)
    if per_image.empty:
        return [(i, "first images") for i in ok["image_id"].drop_duplicates().head(count)]
    n = len(per_image)
    ranks = range(n) if n <= count else [*range((count + 1) // 2), *range(n - count // 2, n)]
    return [(per_image.index[r], stability_label(r + 1, n, float(per_image.iloc[r]))) for r in ranks]


def _mean_sensitivity_per_image(ok: pd.DataFrame) -> pd.Series:
    """Mean Max-Sensitivity over methods per image, ascending; over the images with a value for every method that
    has any (a mean over fewer methods mixes scales: IG's values are ten times LIME's), else over what there is."""
    if "sensitivity_max" not in ok:
        return pd.Series(dtype=float)
    values = ok.assign(s=pd.to_numeric(ok["sensitivity_max"], errors="coerce"))
    wide = values.pivot_table(index="image_id", columns="method", values="s", aggfunc="mean", dropna=False)
    wide = wide.dropna(axis=1, how="all")
    if wide.empty:
        return pd.Series(dtype=float)
    complete = wide.dropna()
    per_image = (complete if not complete.empty else wide).mean(axis=1).dropna()
    return per_image.sort_values(kind="stable")


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


def _img(figure: Figure | None, alt: str) -> str:
    if figure is None:
        return ""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _ranking_table(summary: Summary) -> str:
    """The ranking with each metric's mean rank beside its median (the seed's values are summary.md's alone)."""
    return to_html(ranking_table(summary).select(drop={SEED}))


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


def _cost_section(summary: Summary) -> str:
    return f"<p>{html.escape(cost_sentence(summary))}</p>" + to_html(cost_table(summary))


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
    parts.append(to_html(agreement_matrix_table(summary)))
    parts.append(to_html(agreement_pairs_table(summary)))
    return "\n".join(parts)


def _diagnostics_section(summary: Summary) -> str:
    diagnostics = summary.diagnostics
    if not diagnostics:
        return ""
    parts = ["<h2>Diagnostics</h2>", "<p>Checks of a method's own output; reported, not ranked.</p>"]
    for sentence, info in zip(diagnostic_sentences(summary), diagnostics.values()):
        css = ' class="warning"' if info.n_above else ""
        parts.append(f"<p{css}>{html.escape(sentence)} {html.escape(info.meaning)}.</p>")
        if info.above:
            parts.append(to_html(Table.from_rows(["Image", info.label],
                                                 [[a.image_id, fmt(a.value, 3)] for a in info.above])))
    return "\n".join(parts)


def _tests_section(summary: Summary) -> str:
    parts = []
    for metric, tests in summary.tests.items():
        info = summary.metrics[metric]
        parts.append(f"<h3>{html.escape(info.label)}</h3><p>{html.escape(friedman_sentence(tests.friedman))}"
                     + (f" Nemenyi CD = {tests.nemenyi.cd:.3f}." if tests.nemenyi.cd is not None else "")
                     + "</p>")
        if tests.pairwise:
            parts.append(to_html(pairwise_table(tests)))
    return "\n".join(parts) or "<p>No metric to test.</p>"


def _failures_section(summary: Summary) -> str:
    failures = summary.failures
    if not failures:
        return "<p>No failed images.</p>"
    note = f"<p>{len(failures)} failed rows on {summary.n_failed_images} images"
    note += f"; the first {_FAILURES_SHOWN}:</p>" if len(failures) > _FAILURES_SHOWN else ":</p>"
    return note + to_html(Table.from_rows(["Image", "Method", "Message"],
                                          [[f.image_id, method_label(f.method), f.error or ""]
                                           for f in failures[:_FAILURES_SHOWN]]))


def render_report(results: Results, summary: Summary, gallery: int = 4) -> str:
    """The report's HTML text. Its rows are read compact (ids as codes, only the ranked metrics and Max-Sensitivity),
    and nothing in it grows with the images: box plots, ``gallery`` panels, capped diagnostics and failures."""
    rows, image_ids = results.compact_rows(lambda columns: [*summary.metrics, "sensitivity_max"])
    facts = summary.facts
    status_class = "complete" if facts.complete else "partial"
    job = results.job
    title = html.escape(str(facts.job_name or results.out))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>xcv_batch report: {title}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>xcv_batch report: {title}</h1>",
        f'<p class="{status_class}"><strong>{html.escape(summary.status_line())}</strong></p>',
        _header(summary),
        f"<p>Output: <code>{html.escape(results.out)}</code>. Fingerprint: "
        f"<code>{html.escape(str(facts.fingerprint or results.fingerprint))}</code>. "
        f"CIs: percentile bootstrap over images, {summary.n_boot} resamples, seed {summary.seed}.</p>",
        "<h2>Ranking</h2>",
        "<p>Per image, the methods are ranked on each quality metric (1 = best, ties share the average rank); the "
        "win rate is the share of images a method ranks first on (ties shared). "
        f"{html.escape(rank_sentence(summary))}</p>",
        _ranking_table(summary),
        *(f"<p class=\"control\">{html.escape(line)}</p>" for line in control_sentences(summary.controls)),
        "<h2>Cost</h2>", _cost_section(summary),
        "<h2>Metric agreement</h2>", _agreement_section(summary),
        _diagnostics_section(summary),
        "<h2>Tests</h2>", _tests_section(summary),
        "<h2>Distributions</h2>", _img(distribution_figure(rows, summary), "distributions per method"),
        "<h2>Quality vs cost</h2>", _img(cost_quality_figure(summary), "quality rank vs seconds, Pareto front"),
        "<h2>Critical-difference diagrams</h2>",
        "<p>Methods joined by a bar are not significantly different (Nemenyi, α = 0.05).</p>",
    ]
    parts += [_img(cd_figure(summary, metric), f"critical-difference diagram: {metric}") for metric in summary.metrics]
    picked = [(image_ids[int(code)], why) for code, why in gallery_images(rows, gallery)]
    parts.append("<h2>Gallery</h2>")
    if picked:
        parts.append(f"<p>{len(picked)} images: the most stable first, by mean Max-Sensitivity over the methods "
                     "(lower = more stable); each caption gives the image's rank among all ranked images, rank 1 the lowest.</p>")
    for image_id, why in picked:
        parts.append(f"<h3>{html.escape(str(image_id))}: {html.escape(why)}</h3>")
        try:
            parts.append(_img(panel_figure(results, image_id), f"panel of {image_id}"))
        except OutputError as err:  # its input cannot be decoded: the other panels are still drawn
            parts.append(f"<p>{html.escape(str(err))}</p>")
    job_text = yaml.safe_dump(job, sort_keys=False) if job else f"no {JOB_FILE}"
    parts += ["<h2>Failures</h2>", _failures_section(summary),
              "<h2>Job</h2>", f"<pre>{html.escape(job_text)}</pre>",
              "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_report(out: "str | Results", summary: Summary, gallery: int = 4) -> str:
    """Write ``OUT/report.html`` (``out`` a path or its open Results); returns its path."""
    results = open_results(out)
    path = f"{results.out}/report.html"
    write_text(path, render_report(results, summary, gallery))
    return path
