"""The summary in words and tables: number formats, the sentences under the ranking, the table models built once
from the summary (ranking, per-metric ranks, cost, agreement, pairwise tests), ``summary.md`` and the terminal table.

report.html lays out the same tables and sentences (see html.py); only their arrangement differs per medium.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from .controls import control_sentences
from .stats import AUTO, LARGE_SAMPLE_IMAGES, NORMAL
from .labels import method_label
from .summary_types import FriedmanTest, MetricTests, Summary
from .tables import HTML, MARKDOWN, TERMINAL, Column, Table, to_markdown, to_rich

#: The seed report's Table I (one photo, its machine): Max-Sensitivity and seconds per image.
SEED_TABLE_I = {
    "occlusion": {"sensitivity_max": 0.1300, "attr_seconds": 74.29},
    "integrated_gradients": {"sensitivity_max": 0.4889, "attr_seconds": 41.49},
    "ig_smoothgrad": {"sensitivity_max": 0.1600, "attr_seconds": 84.55},
    "guided_gradcam": {"sensitivity_max": 0.1255, "attr_seconds": 0.299},
    "lime": {"sensitivity_max": 0.0400, "attr_seconds": 85.97},
}

#: Disagreeing pairs named in the sentence, the lowest τ first (the count is always complete; the matrix has all).
_PAIRS_NAMED = 3
#: Failed rows listed in summary.md (the count is always complete).
_FAILURES_LISTED = 50

# Column groups of the ranking table, so that each medium can show its own selection.
METHOD, COUNTS, RANK, METRIC, SEED = "method", "counts", "rank", "metric", "seed"
METRIC_RANK, COST = "metric_rank", "cost"


# --- numbers --------------------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}g}"


def fmt_ci(median: Any, ci: Sequence[Any] | None, digits: int = 4) -> str:
    """``median [lo, hi]``."""
    if median is None:
        return "–"
    lo, hi = (ci or [None, None])[:2]
    return f"{fmt(median, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def fmt_rank(value: Any, ci: Sequence[Any] | None = None) -> str:
    """A mean rank or a win rate with two decimals (they live on a fixed scale), with its CI when given."""
    if value is None:
        return "–"
    text = f"{value:.2f}"
    if ci is not None:
        lo, hi = ci[:2]
        text += " [" + ", ".join("–" if v is None else f"{v:.2f}" for v in (lo, hi)) + "]"
    return text


def _two_lines(text: str) -> str:
    """A value over its CI, so that a terminal column stays narrow."""
    return text.replace(" [", "\n[")


def _weight_text(weight: float) -> str:
    return f"{weight:.3g}"


# --- sentences ------------------------------------------------------------------------------------------------------


def rank_sentence(summary: Summary) -> str:
    """Which metrics entered the mean rank, with their weights, and that cost did not."""
    weights = summary.rank_on.weights
    if not weights:
        if summary.metrics:
            return ("Every quality metric ties the methods on most images, so nothing is ranked; cost is shown on its "
                    "own.")
        return "No quality metric has values, so nothing is ranked; cost is shown on its own."
    listed = ", ".join(f"{summary.metrics[m].label} ×{_weight_text(w)}" for m, w in weights.items())
    if summary.rank_on.chosen:
        how = ("--rank-on reliable: each metric family present weighs 1, over the metrics not flagged below"
               if summary.rank_on.reliable else "weights chosen with --rank-on")
    else:
        how = "default weights: each metric family present weighs 1, shared by its metrics"
    return (f"Mean rank and win rate are the weighted mean over quality metrics only: {listed} ({how}). "
            "Cost (seconds, passes) is reported beside them, never averaged in.")


def agreement_sentence(summary: Summary) -> str | None:
    """Whether the metrics that entered the rank agree on the order of the methods; None with fewer than two."""
    agreement = summary.agreement
    pairs = [p for p in agreement.pairs if p.in_rank and p.n_images]
    if not pairs:
        return None
    threshold = agreement.threshold
    w = agreement.kendalls_w
    concordance = (f" Kendall's W over them: {fmt_rank(w.value, w.ci95)} (n = {w.n_images} images)."
                   if w.value is not None else "")
    low = sorted((p for p in pairs if p.tau < threshold), key=lambda p: p.tau)
    if not low:
        return (f"The ranked metrics agree: every pair's mean Kendall's τ over images is ≥ {threshold}."
                + concordance)
    named = "; ".join(f"{summary.metrics[p.a].label} vs {summary.metrics[p.b].label} "
                      f"τ = {fmt_rank(p.tau, p.ci95)}" for p in low[:_PAIRS_NAMED])
    more = f" and {len(low) - _PAIRS_NAMED} more" if len(low) > _PAIRS_NAMED else ""
    return (f"The metrics disagree on the order of the methods: {len(low)} of {len(pairs)} pairs of ranked metrics "
            f"have a mean Kendall's τ below {threshold} ({named}{more}). Below it, two metrics order a pair of methods "
            f"the same way at most {(1 + threshold) / 2:.0%} of the time, so the overall rank depends on which metrics "
            "enter it; read the per-metric ranks." + concordance)


def diagnostic_sentences(summary: Summary) -> list[str]:
    """One line per diagnostic: how many images exceed its tolerance."""
    lines = []
    for info in summary.diagnostics.values():
        head = f"{info.label} ({method_label(info.method)}): median {fmt(info.median, 3)}, max {fmt(info.max, 3)}"
        if info.n_above:
            worst = ", ".join(f"{a.image_id} ({fmt(a.value, 3)})" for a in info.above[:5])
            lines.append(f"{head}; {info.n_above} of {info.n} images above the tolerance {info.tolerance:g} "
                         f"(e.g. {worst}): raise n_steps.")
        else:
            lines.append(f"{head}; all {info.n} images within the tolerance {info.tolerance:g}.")
    return lines


def summary_notes(summary: Summary) -> list[str]:
    """The sentences printed under the terminal table and written above the report's tables."""
    notes = [rank_sentence(summary)]
    agreement = agreement_sentence(summary)
    if agreement:
        notes.append(agreement)
    return notes + control_sentences(summary.controls) + diagnostic_sentences(summary)


def bootstrap_sentence(summary: Summary) -> str:
    """How the CIs were made: ``percentile bootstrap over images, 2000 resamples, seed 0`` and the scheme."""
    text = f"percentile bootstrap over images, {summary.n_boot} resamples, seed {summary.seed}"
    if summary.bootstrap_scheme == NORMAL:
        return text + "; each resample's means drawn from their large-sample normal law (the mean and covariance of " \
                      "resampling images)"
    if summary.bootstrap_scheme == AUTO:
        return text + f"; from {LARGE_SAMPLE_IMAGES:,} images on, each resample's means drawn from their " \
                      "large-sample normal law (the mean and covariance of resampling images)"
    return text


def cost_sentence(summary: Summary) -> str:
    batch = summary.cost.batch_size
    at = f"at compute.batch_size = {batch} images" if batch else "at the run's batch size"
    return (f"Cost, not ranked: attribution seconds per image {at} (summed over workers), throughput, model passes per "
            "image from the method settings (forward-equivalents: a backward counts as two forwards), and each "
            "method's share of the run's summed seconds (attribution, sensitivity and metrics). A row's time is its "
            "batch's ÷ its images, so it carries no CI or test.")


def friedman_sentence(friedman: FriedmanTest) -> str:
    """One line saying what the Friedman test found."""
    if friedman.skipped:
        return f"Friedman test not run: {friedman.skipped}."
    verdict = "the methods differ" if friedman.reject else "no evidence that the methods differ"
    return (f"Friedman χ² = {friedman.statistic:.3f}, p = {fmt(friedman.p, 3)}, "
            f"Kendall's W = {friedman.kendalls_w:.3f}: {verdict}.")


# --- tables ---------------------------------------------------------------------------------------------------------


def with_seed(summary: Summary) -> bool:
    """Show the seed's Table I beside ours: same settings, and its quality column (Max-Sensitivity) ranked."""
    return "sensitivity_max" in summary.metrics and summary.facts.seed_settings.matches


def _seed_cell(method: str, column: str) -> str:
    seed_value = SEED_TABLE_I.get(method, {}).get(column)
    return "–" if seed_value is None else f"{seed_value:.4g}"


def ranking_table(summary: Summary) -> Table:
    """The ranking, best method first: counts, mean rank and win rate, each metric's median, each metric's mean rank
    (group ``metric_rank``), the seed's Table I where comparable (group ``seed``) and the cost, apart from the rank.

    The terminal shows fewer digits, each CI under its value, so that the table fits 80 columns.
    """
    order = summary.best_first()
    methods = [summary.methods[name] for name in order]
    costs = [summary.cost.methods.get(name) for name in order]
    seconds = [cost.seconds_per_image if cost else None for cost in costs]
    ranks = [fmt_rank(m.mean_rank, m.mean_rank_ci95) for m in methods]
    columns = [
        Column("Method", [m.label for m in methods], METHOD),
        Column("n ok", [str(m.n_ok) for m in methods], COUNTS),
        Column("n failed", [str(m.n_error) for m in methods], COUNTS, header_in={TERMINAL: "n\nfailed"}),
        Column("Mean rank [95% CI]", ranks, RANK, header_in={TERMINAL: "Mean rank\n[95% CI]"},
               cells_in={TERMINAL: [_two_lines(r) for r in ranks]}),
        Column("Win rate", [fmt_rank(m.win_rate) for m in methods], RANK, header_in={TERMINAL: "Win\nrate"}),
    ]
    seed = with_seed(summary)
    for metric, info in summary.metrics.items():
        values = [m.values.get(metric) for m in methods]
        medians = [(v.median, v.ci95) if v else (None, None) for v in values]
        header = f"{info.title} median [95% CI]"
        columns.append(Column(
            header, [fmt_ci(median, ci) for median, ci in medians], METRIC,
            header_in={HTML: header + ("" if info.weight else " (not in rank)"),
                       TERMINAL: info.title + ("" if info.weight else "\n(not in rank)")},
            cells_in={TERMINAL: [_two_lines(fmt_ci(median, ci, 3)) for median, ci in medians]}))
        if seed and metric == "sensitivity_max":
            columns.append(Column(f"{info.label} seed (Table I)", [_seed_cell(name, metric) for name in order], SEED))
    for metric, info in summary.metrics.items():
        of_metric = [m.ranks.get(metric) for m in methods]
        columns.append(Column(
            f"{info.label} rank", [fmt_rank(r.mean_rank, r.mean_rank_ci95) if r else "–" for r in of_metric],
            METRIC_RANK, header_in={MARKDOWN: f"{info.label} (n={info.n_images}, weight {_weight_text(info.weight)})"}))
    columns.append(Column("Cost: s / image", [fmt(s, 3) for s in seconds], COST,
                          header_in={MARKDOWN: "Seconds / image (cost)", TERMINAL: "Cost:\ns / image"},
                          cells_in={MARKDOWN: [fmt(s) for s in seconds]}))
    if seed:
        columns.append(Column("Time seed (Table I)", [_seed_cell(name, "attr_seconds") for name in order], SEED))
    return Table(columns, title=f"Method ranking — {summary.status_line()}; metrics: median [95% CI]")


def cost_table(summary: Summary) -> Table:
    """The cost (not ranked): one row per method, in rank order."""
    header = ["Method", "s / image", "images / s", "model passes / image", "forward-eq. / image", "forward-eq. / s",
              "share of run"]
    body = []
    for name in summary.best_first():
        cost = summary.cost.methods.get(name)
        if cost is None:
            body.append([summary.methods[name].label, "–", "–", "–", "–", "–", "–"])
            continue
        share = f"{cost.share_of_run:.1%}" if cost.share_of_run is not None else "–"
        body.append([summary.methods[name].label, fmt(cost.seconds_per_image, 3), fmt(cost.images_per_second, 3),
                     cost.passes or "–", fmt(cost.forward_equivalents_per_image, 4),
                     fmt(cost.forward_equivalents_per_second, 3), share])
    return Table.from_rows(header, body)


def agreement_pairs_table(summary: Summary) -> Table:
    """Every pair of ranked metrics: mean Kendall's τ [95% CI], images, whether both enter the rank."""
    return Table.from_rows(["A", "B", "mean τ [95% CI]", "n images", "both in the rank"], [
        [summary.metrics[p.a].label, summary.metrics[p.b].label, fmt_rank(p.tau, p.ci95), p.n_images,
         "yes" if p.in_rank else "no"] for p in summary.agreement.pairs])


def agreement_matrix_table(summary: Summary) -> Table:
    """The metrics × metrics table of mean Kendall's τ."""
    labels = [summary.metrics[m].label for m in summary.agreement.metrics]
    body = [[label] + [fmt_rank(v) for v in row] for label, row in zip(labels, summary.agreement.matrix)]
    return Table.from_rows(["Mean Kendall's τ"] + labels, body)


def pairwise_table(tests: MetricTests) -> Table:
    """The Wilcoxon signed-rank tests of one metric, Holm-adjusted."""
    return Table.from_rows(
        ["A", "B", "n", "p", "p (Holm)", "rank-biserial r (A − B)", "better", "significant"],
        [[method_label(p.a), method_label(p.b), p.n, fmt(p.p, 3), fmt(p.p_holm, 3), fmt(p.effect_size, 3),
          method_label(p.better) if p.better else "–", "yes" if p.reject else "no"] for p in tests.pairwise])


def metric_ranks_table(summary: Summary) -> Table:
    """Each method's mean rank on each metric alone: a row per metric, a column per method (best overall first), so
    that a dozen metrics stay as narrow as the methods (the CIs are in :func:`metric_table`)."""
    order = summary.best_first()
    header = ["Metric (1 = best)", *(summary.methods[name].label for name in order)]
    body = []
    for metric, info in summary.metrics.items():
        ranks = [summary.methods[name].ranks.get(metric) for name in order]
        body.append([info.label, *(fmt_rank(r.mean_rank) if r else "–" for r in ranks)])
    return Table.from_rows(header, body)


def metric_table(summary: Summary, metric: str) -> Table:
    """One ranked metric in detail, best method first: images with a value, median [95% CI], mean rank [95% CI] and
    win rate on this metric alone, and the seed's Table I value where comparable."""
    seed = with_seed(summary) and metric == "sensitivity_max"
    header = ["Method", "n", "median [95% CI]", "mean rank [95% CI]", "win rate"] + (["seed (Table I)"] if seed else [])
    body = []
    for name in summary.best_first():
        method = summary.methods[name]
        value, rank = method.values.get(metric), method.ranks.get(metric)
        row = [method.label, str(value.n) if value else "0", fmt_ci(value.median, value.ci95) if value else "–",
               fmt_rank(rank.mean_rank, rank.mean_rank_ci95) if rank else "–", fmt_rank(rank.win_rate) if rank else "–"]
        body.append(row + ([_seed_cell(name, metric)] if seed else []))
    return Table.from_rows(header, body)


# --- the terminal and summary.md ------------------------------------------------------------------------------------


def render_table(summary: Summary):
    """The ranking as a rich table, best method first (each CI under its value); cost on the right, apart from the
    rank. Every column: see :func:`fit_table` for one that fits a terminal."""
    return to_rich(ranking_table(summary).select(drop={SEED, METRIC_RANK}))


#: Which of the ranking's columns a narrow terminal keeps first: the method and its rank, the cost, then each metric
#: in the summary's order, then the counts. Shown columns keep the table's own order.
_KEEP_FIRST = (METHOD, RANK, COST, METRIC, COUNTS)


def fit_table(summary: Summary, width: int) -> tuple[Any, list[str]]:
    """The ranking as a rich table no wider than ``width`` terminal columns, and the headers of the columns left
    out to fit (summary.md has them all). Columns are added by :data:`_KEEP_FIRST` while the table's natural width
    (nothing wrapped or cut) still fits; the method's name and its rank are always there."""
    from rich.console import Console

    table = ranking_table(summary).select(drop={SEED, METRIC_RANK})
    measure = Console(width=100_000)
    order = sorted(range(len(table.columns)), key=lambda j: (_KEEP_FIRST.index(table.columns[j].group)
                                                             if table.columns[j].group in _KEEP_FIRST
                                                             else len(_KEEP_FIRST), j))
    kept: list[int] = []
    for j in order:
        trial = sorted(kept + [j])
        fits = measure.measure(to_rich(replace(table, columns=[table.columns[i] for i in trial]))).maximum <= width
        if fits or table.columns[j].group in (METHOD, RANK):
            kept = trial
    left_out = [table.columns[j].header_for(MARKDOWN) for j in range(len(table.columns)) if j not in kept]
    return to_rich(replace(table, columns=[table.columns[j] for j in kept])), left_out


def render_markdown(summary: Summary) -> str:
    """``summary.md``: a Table I with n and CIs (the seed's values beside ours when the settings match), the ranks
    per metric, the cost, the metrics' agreement, diagnostics, the tests and the failures."""
    facts = summary.facts
    lines = [f"# xcv_batch summary{': ' + facts.job_name if facts.job_name else ''}", ""]
    model = facts.model
    if model.arch:
        lines.append(f"- Model: {model.arch} (weights {model.weights}) at {model.resolution} px"
                     + (f", target: {facts.target}" if facts.target else ""))
    if facts.fingerprint:
        lines.append(f"- Job fingerprint: `{facts.fingerprint}`")
    lines.append(f"- Images: {summary.status_line()}")
    lines.append(f"- 95% CIs: {bootstrap_sentence(summary)}")
    if facts.seed_settings.differences:
        lines.append("- Settings differ from the seed report's, so its Table I is not shown: "
                     + "; ".join(facts.seed_settings.differences))
    lines += ["", *summary_notes(summary), "", "## Table I", ""]

    ranking = ranking_table(summary)
    lines += to_markdown(ranking.select(drop={METRIC_RANK}))
    if with_seed(summary):
        lines += ["", "Seed values: the seed report's Table I, one photo on its own machine; ours are medians over "
                      "the images above (time: total seconds ÷ images)."]
    if summary.metrics:
        per_metric = ranking.select(keep={METHOD, METRIC_RANK})
        lines += ["", "## Mean rank per metric (1 = best)", "", *to_markdown(per_metric)]
    for metric, skipped_why in summary.metrics_skipped.items():
        lines += ["", f"Not ranked: {metric} ({skipped_why})."]

    lines += ["", "## Cost (not ranked)", "", cost_sentence(summary), "", *to_markdown(cost_table(summary))]
    lines += _agreement_markdown(summary)

    lines += ["", "## Tests", ""]
    for metric, tests in summary.tests.items():
        info = summary.metrics[metric]
        lines += [f"### {info.label} ({info.direction} is better; n = {tests.n_images} images with a value "
                  "for every method)", "", friedman_sentence(tests.friedman)]
        if tests.nemenyi.cd is not None:
            lines.append(f"Nemenyi critical difference (α = {tests.nemenyi.alpha}): {tests.nemenyi.cd:.3f} "
                         "in mean rank.")
        if tests.pairwise:
            lines += ["", *to_markdown(pairwise_table(tests))]
        lines.append("")

    failures = summary.failures
    lines += ["## Failures", ""]
    if not failures:
        lines.append("None.")
    else:
        lines.append(f"{len(failures)} failed rows on {summary.n_failed_images} images"
                     + (f" (the first {_FAILURES_LISTED}):" if len(failures) > _FAILURES_LISTED else ":"))
        lines.append("")
        for failure in failures[:_FAILURES_LISTED]:
            lines.append(f"- `{failure.image_id}` {method_label(failure.method)}: {failure.error}")
    return "\n".join(lines).rstrip() + "\n"


def _agreement_markdown(summary: Summary) -> list[str]:
    if len(summary.agreement.metrics) < 2:
        return []
    lines = ["", "## Metric agreement", "",
             "Per image, Kendall's τ-b between the method orders two metrics give; mean over images [95% CI].", "",
             *to_markdown(agreement_pairs_table(summary)), "", *to_markdown(agreement_matrix_table(summary))]
    sentence = agreement_sentence(summary)
    return lines + (["", sentence] if sentence else [])
