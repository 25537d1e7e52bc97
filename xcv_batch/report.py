"""``OUT/report.html``: one self-contained file (PNGs base64-embedded, inline CSS, nothing fetched).

Sections: status, ranking table, tests, per-method distributions, seconds vs sensitivity with the Pareto front,
critical-difference diagrams, a gallery of Fig. 1-style panels (most and least stable images), failures, the job.
"""

from __future__ import annotations

import base64
import html
import io

import fsspec
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from . import stats
from .panel import panel_figure
from .results import Results, method_label, open_results
from .metrics_info import metric_title
from .summarize import fmt, fmt_ci, fmt_rank, friedman_sentence, ordered_methods, status_line

# Points per method in the scatter: enough to show the spread, few enough to keep the PNG (and the HTML) small.
_SCATTER_POINTS = 400
_FAILURES_SHOWN = 200

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.complete { color: #176117; } .partial { color: #a15c00; }
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


def distribution_figure(rows: pd.DataFrame, summary: dict) -> Figure | None:
    """One box plot per ranked metric, a box per method."""
    metrics = list(summary["metrics"])
    if not metrics:
        return None
    methods = ordered_methods(summary)
    figure = Figure(figsize=(5.5 * len(metrics), 4.0), dpi=100)
    for ax, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
        info = summary["metrics"][metric]
        values = [_ok_values(rows, metric, m) for m in methods]
        shown = [(v, method_label(m)) for v, m in zip(values, methods) if len(v)]
        ax.boxplot([v for v, _ in shown], showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(shown) + 1), [label for _, label in shown], rotation=30, ha="right", fontsize=8)
        if _log_scale_helps(values):
            ax.set_yscale("log")
        ax.set_title(f"{metric_title(info)}, {info['direction']} is better", fontsize=10)
    figure.tight_layout()
    return figure


def tradeoff_figure(rows: pd.DataFrame, summary: dict, x_metric: str = "attr_seconds",
                    y_metric: str = "sensitivity_max") -> Figure | None:
    """Per-image points and per-method medians of two metrics, the medians' Pareto front drawn and ringed."""
    if x_metric not in summary["metrics"] or y_metric not in summary["metrics"]:
        return None
    x_info, y_info = summary["metrics"][x_metric], summary["metrics"][y_metric]
    figure = Figure(figsize=(7.5, 5.0), dpi=100)
    ax = figure.subplots()
    rng = np.random.default_rng(0)
    ok = rows[rows["status"] == "ok"]
    medians, names = [], []
    colors = {m: f"C{i}" for i, m in enumerate(summary["methods"])}
    for method in summary["methods"]:
        points = ok[ok["method"] == method][[x_metric, y_metric]].apply(pd.to_numeric, errors="coerce").dropna()
        if points.empty:
            continue
        if len(points) > _SCATTER_POINTS:
            points = points.iloc[rng.choice(len(points), _SCATTER_POINTS, replace=False)]
        ax.scatter(points[x_metric], points[y_metric], s=6, alpha=0.3, color=colors[method])
        entry = summary["methods"][method]
        median = (entry.get(x_metric, {}).get("median"), entry.get(y_metric, {}).get("median"))
        if None in median:
            continue
        medians.append(median)
        names.append(method)
        ax.scatter(*median, s=90, color=colors[method], edgecolor="black", zorder=3, label=method_label(method))
    if medians:
        points = np.asarray(medians, dtype=float)
        front = stats.pareto_front(points, [x_info["direction"], y_info["direction"]])
        on_front = points[front][np.argsort(points[front][:, 0])]
        ax.plot(on_front[:, 0], on_front[:, 1], "k--", linewidth=1, zorder=2, label="Pareto front (medians)")
        ax.scatter(on_front[:, 0], on_front[:, 1], s=260, facecolor="none", edgecolor="black", zorder=4)
        if (points[:, 0] > 0).all() and points[:, 0].max() / points[:, 0].min() > 20:
            ax.set_xscale("log")
    ax.set_xlabel(f"{metric_title(x_info)}, {x_info['direction']} is better")
    ax.set_ylabel(f"{y_info['label']}, {y_info['direction']} is better")
    ax.legend(fontsize=8)
    ax.set_title("Per image (dots) and median (large); ringed: not beaten on both axes", fontsize=10)
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


def cd_figure(summary: dict, metric: str) -> Figure | None:
    """Demšar's critical-difference diagram of one metric: mean ranks on an axis, the CD bar, and bars joining the
    methods that Nemenyi's test cannot tell apart."""
    info = summary["metrics"][metric]
    cd = info.get("nemenyi_cd")
    ranked = [(summary["methods"][m]["ranks"][metric]["mean_rank"], m) for m in info["methods"]
              if summary["methods"][m]["ranks"].get(metric, {}).get("mean_rank") is not None]
    if cd is None or len(ranked) < 2:
        return None
    ranked.sort()
    k = len(info["methods"])
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
    ax.set_title(f"{info['label']}: mean rank (1 = best), n = {info['n_images']} images", fontsize=10)
    figure.tight_layout()
    return figure


def gallery_images(rows: pd.DataFrame, count: int) -> list[tuple[str, str]]:
    """(image id, why) of the most and least stable images by mean Max-Sensitivity over methods (the first images
    when sensitivity is off)."""
    ok = rows[rows["status"] == "ok"]
    if count <= 0 or ok.empty:
        return []
    sensitivity = pd.to_numeric(ok.get("sensitivity_max"), errors="coerce") if "sensitivity_max" in ok else None
    if sensitivity is None or sensitivity.isna().all():
        return [(i, "first images") for i in ok["image_id"].drop_duplicates().head(count)]
    per_image = sensitivity.groupby(ok["image_id"]).mean().dropna().sort_values(kind="stable")
    stable = list(per_image.index[: (count + 1) // 2])
    unstable = [i for i in per_image.index[::-1][: count // 2] if i not in stable]
    return ([(i, f"most stable (mean sensitivity {per_image[i]:.3g})") for i in stable]
            + [(i, f"least stable (mean sensitivity {per_image[i]:.3g})") for i in unstable])


# --- HTML -----------------------------------------------------------------------------------------------------------


def _img(figure: Figure | None, alt: str) -> str:
    if figure is None:
        return ""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>\n" for row in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def _ranking_table(summary: dict) -> str:
    metrics = summary["metrics"]
    header = ["Method", "n ok", "n failed", "Mean rank [95% CI]", "Win rate"]
    header += [f"{metric_title(info)} median [95% CI]" for info in metrics.values()]
    header += [f"{i['label']} rank" for i in metrics.values()]
    body = []
    for name in ordered_methods(summary):
        entry = summary["methods"][name]
        body.append(
            [entry["label"], entry["n_ok"], entry["n_error"], fmt_rank(entry["mean_rank"], entry["mean_rank_ci95"]),
             fmt_rank(entry["win_rate"])]
            + [fmt_ci(entry.get(m, {}).get("median"), entry.get(m, {}).get("ci95")) for m in metrics]
            + [fmt_rank(entry["ranks"].get(m, {}).get("mean_rank"), entry["ranks"].get(m, {}).get("mean_rank_ci95"))
               for m in metrics]
        )
    return _table(header, body)


def _tests_section(summary: dict) -> str:
    parts = []
    for metric, tests in summary["tests"].items():
        info = summary["metrics"][metric]
        parts.append(f"<h3>{html.escape(info['label'])}</h3><p>{html.escape(friedman_sentence(tests['friedman']))}"
                     + (f" Nemenyi CD = {tests['nemenyi']['cd']:.3f}." if tests["nemenyi"]["cd"] is not None else "")
                     + "</p>")
        if tests["pairwise"]:
            parts.append(_table(
                ["A", "B", "n", "p", "p (Holm)", "rank-biserial r (A − B)", "better", "significant"],
                [[method_label(p["a"]), method_label(p["b"]), p["n"], fmt(p["p"], 3), fmt(p["p_holm"], 3),
                  fmt(p["effect_size"], 3), method_label(p["better"]) if p["better"] else "–",
                  "yes" if p["reject"] else "no"] for p in tests["pairwise"]],
            ))
    return "\n".join(parts) or "<p>No metric to test.</p>"


def _failures_section(summary: dict) -> str:
    failures = summary.get("failures") or []
    if not failures:
        return "<p>No failed images.</p>"
    note = f"<p>{len(failures)} failed rows on {summary.get('n_failed_images')} images"
    note += f"; the first {_FAILURES_SHOWN}:</p>" if len(failures) > _FAILURES_SHOWN else ":</p>"
    return note + _table(["Image", "Method", "Message"],
                         [[f["image_id"], method_label(f["method"]), f["error"] or ""] for f in failures[:_FAILURES_SHOWN]])


def render_report(results: Results, summary: dict, gallery: int = 4) -> str:
    """The report's HTML text."""
    rows = results.rows()
    status_class = "complete" if summary.get("complete") else "partial"
    job = results.job
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>xcv_batch report: {html.escape(str(summary.get('job_name') or results.out))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>xcv_batch report: {html.escape(str(summary.get('job_name') or results.out))}</h1>",
        f'<p class="{status_class}"><strong>{html.escape(status_line(summary))}</strong></p>',
        f"<p>Output: <code>{html.escape(results.out)}</code>. Fingerprint: "
        f"<code>{html.escape(str(summary.get('fingerprint') or results.fingerprint))}</code>. "
        f"CIs: percentile bootstrap over images, {summary['n_boot']} resamples, seed {summary['seed']}.</p>",
        "<h2>Ranking</h2>",
        "<p>Per image, the methods are ranked on each metric (1 = best, ties share the average rank); the mean rank "
        "is the mean over metrics; the win rate is the share of images a method ranks first on (ties shared).</p>",
        _ranking_table(summary),
        "<h2>Tests</h2>", _tests_section(summary),
        "<h2>Distributions</h2>", _img(distribution_figure(rows, summary), "distributions per method"),
        "<h2>Time vs sensitivity</h2>", _img(tradeoff_figure(rows, summary), "seconds vs sensitivity, Pareto front"),
        "<h2>Critical-difference diagrams</h2>",
        "<p>Methods joined by a bar are not significantly different (Nemenyi, α = 0.05).</p>",
    ]
    parts += [_img(cd_figure(summary, metric), f"critical-difference diagram: {metric}") for metric in summary["metrics"]]
    parts.append("<h2>Gallery</h2>")
    for image_id, why in gallery_images(rows, gallery):
        parts.append(f"<h3>{html.escape(str(image_id))}: {html.escape(why)}</h3>")
        parts.append(_img(panel_figure(results, image_id), f"panel of {image_id}"))
    parts += ["<h2>Failures</h2>", _failures_section(summary),
              "<h2>Job</h2>", f"<pre>{html.escape(yaml.safe_dump(job, sort_keys=False) if job else 'no job.yaml')}</pre>",
              "</body></html>"]
    return "\n".join(p for p in parts if p)


def write_report(out: "str | Results", summary: dict, gallery: int = 4) -> str:
    """Write ``OUT/report.html`` (``out`` a path or its open Results); returns its path."""
    results = open_results(out)
    path = f"{results.out}/report.html"
    with fsspec.open(path, "w", encoding="utf-8") as f:
        f.write(render_report(results, summary, gallery))
    return path
