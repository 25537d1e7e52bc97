"""Rank the methods across a run's images: the :class:`~xcv_batch.report.summary_types.Summary` and its files,
``summary.json`` and ``summary.md`` (the words and tables are in summary_text.py).

Ranking rules (Demšar 2006): per image and metric, the methods are ranked (1 = best by the metric's direction in
:mod:`xcv_batch.metrics.registry`, ties share the average rank); an image where a method has no value for that metric is
left out of that metric's ranks and tests. Only **quality** metrics are ranked. A method's ``mean_rank`` is the weighted mean
over the metrics that enter the rank (``rank_on``) of its per-metric mean ranks, its ``win_rate`` the same weighted
mean of the share of images it ranks first on (ties shared); both are also kept per metric under ``ranks``. By
default every metric family present (robustness, faithfulness, randomisation, localisation, complexity) weighs 1,
shared equally by its metrics, so three localisation columns do not outvote one sensitivity column; ``rank_on``
names the metrics and weights instead.

**Cost** (seconds per image, throughput, model passes) is reported beside the rank and never averaged into it: time
is not a quality, and ``attr_seconds`` is a batch's time ÷ its images, the same for every image of a batch, so it has
no per-image spread to put a CI or a test on.

**Agreement**: for every pair of ranked metrics, Kendall's τ-b between the method orders they give each image, its
mean over images with a bootstrap CI; and Kendall's W of the metrics that enter the rank, per image, averaged. Below
a mean τ of 0.3 the two metrics order a pair of methods the same way at most 65 % of the time ((1 + τ) / 2): the
summary says so, since then the overall rank mostly reflects which metrics were chosen.

Every CI is a percentile bootstrap over images with a fixed seed; all rank CIs of one summary come from the same
resamples.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from typing import Mapping, Sequence

import fsspec
import numpy as np
import pandas as pd

from . import stats
from ..config import SensitivityConfig
from ..cores import usable_cores
from ..errors import ConfigError, OutputError, first_line
from ..output.layout import JOB_FILE
from ..methods.settings import METHOD_SETTINGS
from ..metrics.registry import COST_COLUMNS, DIAGNOSTICS, metric_info
from ..plan import Passes, explanation_passes
from ..output.results import Results, open_results
from .controls import control_power, metric_power_of
from .row_table import OK, RowTable, frame_table, read_table
from .labels import method_label
from .summary_text import render_markdown
from .summary_types import (Agreement, Concordance, ControlPower, Cost, Diagnostic, DiagnosticImage, Failure, FriedmanTest,
                            MethodCost, MethodSummary, MetricPair, MetricPower, MetricRank, MetricTests, MetricValues,
                            ModelFacts,
                            NemenyiTest, PairwiseTest, RankedMetric, RankOn, RunFacts, SeedSettings, Summary, plain)

#: Mean Kendall's τ below which two metrics are said to disagree: (1 + τ) / 2 = 0.65, so about one pair of methods in
#: three is ordered the other way round; rank correlations under 0.3 are conventionally called weak.
AGREEMENT_THRESHOLD = 0.3
#: Images listed per diagnostic above its tolerance (the count is always complete).
_DIAGNOSTIC_IMAGES_LISTED = 20
#: Most bootstrap resamples: a 95 % percentile bound from B resamples has a Monte Carlo error in its tail probability
#: of √(0.025 · 0.975 / B), 0.0005 at 100,000, finer than any digit the summary prints; beyond that only the time
#: grows (50× the default's, per metric and pair of metrics), and a typo such as 1e9 would run for days.
MAX_BOOTSTRAP = 100_000
#: Threads for the work of separate metrics (and pairs of metrics), each with its own seeds, so the summary does not
#: depend on them: two keep two cores busy (numpy's loops and sorts release the GIL) while a million images'
#: temporaries of two metrics, a few hundred MB each, fit beside the table.
_THREADS = max(1, min(2, usable_cores()))
#: Images per block of Kendall's W: a million images' ranks by 11 metrics of 5 methods would take 440 MB at once.
_CONCORDANCE_BLOCK_ROWS = 65_536
#: ``--rank-on reliable``: rank on the metrics that are not flagged (see report/controls.py).
RELIABLE = "reliable"

SEED_SENSITIVITY = asdict(SensitivityConfig())  # the job defaults are the seed's settings
SEED_RESOLUTION = 224


# --- the summary ----------------------------------------------------------------------------------------------------


def summarize(out: "str | Results", n_boot: int = 2000, seed: int = 0,
              rank_on: Mapping[str, float] | str | None = None, scheme: str = stats.AUTO) -> Summary:
    """The summary of the output directory ``out`` (a path, or its open Results; finished or not): that of
    :func:`summarize_rows` with the run's facts (model, fingerprint, completeness, the seed's settings). The rows are
    read as arrays, only the columns used (report/row_table.py): memory grows by the numbers kept, not by rows."""
    check_bootstrap(n_boot, scheme)
    results = open_results(out)
    table = read_table(results, methods=results.methods)
    job = results.job
    summary = summarize_table(table, n_boot=n_boot, seed=seed, rank_on=rank_on, job=job, scheme=scheme)
    model = job.get("model") or {}
    expected_ids = results.stored_image_ids
    missing = table.missing_rows(expected_ids, results.methods) if expected_ids is not None else None
    differences = seed_setting_differences(job)
    run = RunFacts(
        out=results.out, job_name=job.get("name"), fingerprint=results.fingerprint,
        model=ModelFacts(arch=model.get("arch", results.attrs.get("model")),
                         weights=model.get("weights", results.attrs.get("weights")),
                         resolution=model.get("resolution")),
        target=job.get("target"),
        n_expected=len(expected_ids) if expected_ids is not None else None,
        # Without the Zarr group's id list nobody knows how many images the run will have: not complete.
        complete=expected_ids is not None and missing == 0,
        n_missing_rows=missing,
        seed_settings=SeedSettings(matches=not differences, differences=differences),
    )
    return replace(summary, run=plain(run))


def summarize_rows(rows: pd.DataFrame, methods: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                   alpha: float = stats.ALPHA, rank_on: Mapping[str, float] | str | None = None,
                   job: Mapping | None = None, image_ids: Sequence[str] | None = None,
                   scheme: str = stats.AUTO) -> Summary:
    """Rankings, CIs, tests, agreement and cost of a table of metric rows (the Parquet schema); the part of
    :func:`summarize` that needs no files. ``rank_on``: metric → weight for the overall rank (default: every family
    of quality metrics present weighs 1, a metric that ties the methods on most images left out; :data:`RELIABLE`:
    likewise over the metrics that are not flagged); ``job``: the resolved job, for the cost's batch size and passes
    per image. The control maps' rows are set apart first: they enter ``controls`` (each metric's power to reject
    them, see report/controls.py) and nothing else.

    The summary holds the ranked quality metrics (direction, label, unit, family, images ranked, methods ranked,
    Nemenyi CD, weight in the rank), the metrics skipped and why, the weights used, per method its overall mean rank
    and win rate with CIs, its status counts, its ranks and values per metric, per metric its tests (Friedman,
    pairwise Wilcoxon + Holm, Nemenyi), the agreement (see :func:`metric_agreement`), the cost (see
    :func:`cost_summary`), the diagnostics and the failures (the error rows' image, method and message).
    ``image_ids``: when given, the ``image_id`` column holds integer codes into it, in the ids' order.
    ``scheme``: how the bootstrap draws its resamples (:data:`~xcv_batch.report.stats.SCHEMES`; by default images
    are resampled below :data:`~xcv_batch.report.stats.LARGE_SAMPLE_IMAGES` counting images, and the resample means
    drawn from their large-sample normal law from there on).
    """
    check_bootstrap(n_boot, scheme)
    return summarize_table(frame_table(rows, methods, image_ids), n_boot=n_boot, seed=seed, alpha=alpha,
                           rank_on=rank_on, job=job, scheme=scheme)


def summarize_table(table: RowTable, n_boot: int = 2000, seed: int = 0, alpha: float = stats.ALPHA,
                    rank_on: Mapping[str, float] | str | None = None, job: Mapping | None = None,
                    scheme: str = stats.AUTO) -> Summary:
    """:func:`summarize_rows` of rows already kept one per image × method, as arrays (report/row_table.py)."""
    check_bootstrap(n_boot, scheme)
    method_names, control_names = table.methods, table.controls
    counts = table.counts

    metrics: dict[str, RankedMetric] = {}
    skipped: dict[str, str] = {}
    tests: dict[str, MetricTests] = {}
    powers: dict[str, MetricPower] = {}
    values_of: dict[str, dict[str, MetricValues]] = {name: {} for name in method_names}
    rank_tables: dict[str, tuple[list[str], np.ndarray, list, int]] = {}  # metric → ranked, ranks, win rates, n
    value_tables: dict[str, np.ndarray] = {}  # metric → (images, all methods) values, for the agreement
    for metric in table.values:
        if metric in table.skipped:
            skipped[metric] = table.skipped[metric]
        elif not np.isfinite(table.values[metric][:, :len(method_names)]).any():
            skipped[metric] = "no method has a value"
    ranked_metrics = [metric for metric in table.values if metric not in skipped]

    def one_metric(metric: str) -> _MetricPart:
        return _metric_part(table, metric, list(table.values).index(metric), ranked_metrics.index(metric), n_boot,
                            seed, alpha, scheme)

    # Each metric's values, ranks, tests and control power depend on that metric alone, with its own seeds.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for part in pool.map(one_metric, ranked_metrics):
            metric = part.metric
            for name, values in part.values.items():
                values_of[name][metric] = values
            value_tables[metric] = table.values[metric][:, :len(method_names)]  # a view: the agreement picks columns
            rank_tables[metric] = part.rank_table
            metrics[metric], tests[metric], powers[metric] = part.info, part.tests, part.power

    power = control_power(powers, method_names, control_names, table.n_control_errors)
    weights = rank_weights(metrics, rank_on, skipped, power)
    metrics = {metric: replace(info, weight=weights.get(metric, info.weight)) for metric, info in metrics.items()}
    metric_cis, overall_cis = _rank_cis(rank_tables, weights, n_boot, np.random.default_rng(seed), scheme)
    summaries = {}
    for name in method_names:
        ranks_of = {metric: MetricRank(mean_rank=_nanmean(ranks[:, ranked.index(name)]),
                                       mean_rank_ci95=metric_cis.get((metric, name), [None, None]),
                                       win_rate=win_rates[ranked.index(name)], n_images=n_ranked)
                    for metric, (ranked, ranks, win_rates, n_ranked) in rank_tables.items() if name in ranked}
        per_metric = [(weights[m], r) for m, r in ranks_of.items() if m in weights and r.mean_rank is not None]
        mean_rank = win_rate = None
        if per_metric:
            total = sum(w for w, _ in per_metric)
            mean_rank = float(sum(w * r.mean_rank for w, r in per_metric) / total)
            win_rate = float(sum(w * r.win_rate for w, r in per_metric) / total)
        summaries[name] = MethodSummary(
            label=method_label(name), mean_rank=mean_rank, mean_rank_ci95=overall_cis.get(name, [None, None]),
            win_rate=win_rate, n_ok=counts[name][0], n_error=counts[name][1], ranks=ranks_of, values=values_of[name])

    error_rows = sorted(table.errors, key=lambda r: (int(table.row_image[r]), method_names[table.row_method[r]]))
    failures = [Failure(image_id=table.name(table.row_image[r]), method=method_names[table.row_method[r]],
                        error=table.errors[r]) for r in error_rows]
    return plain(Summary(
        n_images=len(table.images), n_boot=int(n_boot), bootstrap_scheme=scheme, seed=int(seed), alpha=alpha,
        metrics=metrics,
        metrics_skipped=skipped, methods=summaries, tests=tests,
        rank_on=RankOn(weights=weights, chosen=rank_on is not None, reliable=rank_on == RELIABLE),
        agreement=metric_agreement(metrics, value_tables, method_names, weights, n_boot, seed, scheme),
        cost=cost_summary(table, job), diagnostics=diagnostics_summary(_diagnostic_rows(table), table.name),
        failures=failures, n_failed_images=len({int(table.row_image[r]) for r in error_rows}), controls=power,
    ))


@dataclass(frozen=True)
class _MetricPart:
    """What one ranked metric adds to the summary (see :func:`_metric_part`)."""

    metric: str
    values: dict[str, MetricValues]  # method → its values of the metric
    rank_table: tuple  # ranked methods, (images, ranked) ranks, win rates, images ranked
    info: RankedMetric
    tests: MetricTests
    power: MetricPower


def _metric_part(table: RowTable, metric: str, m_index: int, power_index: int, n_boot: int, seed: int, alpha: float,
                 scheme: str) -> _MetricPart:
    """The ``m_index``-th metric column's values per method, ranks, tests and control power (the ``power_index``-th
    ranked metric's), each CI with its own seed."""
    info = metric_info(metric)
    method_names = table.methods
    values = table.real_values(metric)
    has_value = np.isfinite(values)
    ranked = [name for j, name in enumerate(method_names) if has_value[:, j].any()]
    values_of = {}
    for j, name in enumerate(method_names):
        rng = np.random.default_rng([seed, m_index + 1, j])
        median, ci = stats.median_ci(values[:, j], n_boot, rng)
        n = int(has_value[:, j].sum())
        values_of[name] = MetricValues(
            median=median, ci95=list(ci), mean=float(np.nanmean(values[:, j])) if n else None, n=n,
            n_missing=table.counts[name][0] - n, direction=info.direction)
    table_ranked = values[:, [method_names.index(name) for name in ranked]]
    ranks = stats.rank_rows(table_ranked, info.direction)
    n_ranked = int(stats.complete_rows(table_ranked).sum())
    wins = stats.win_shares(ranks)
    rank_table = (ranked, ranks, [_nanmean(wins[:, j]) for j in range(len(ranked))], n_ranked)
    cd = stats.nemenyi_cd(len(ranked), n_ranked, alpha)
    tests = MetricTests(
        n_images=n_ranked,
        friedman=FriedmanTest(**stats.friedman(table_ranked, alpha)),
        pairwise=[PairwiseTest(**pair)
                  for pair in stats.pairwise_wilcoxon(table_ranked, ranked, info.direction, alpha)],
        nemenyi=NemenyiTest(alpha=alpha, q_alpha=stats.NEMENYI_Q_005.get(len(ranked)), cd=cd),
    )
    power = metric_power_of(metric, info.direction, table.values[metric], method_names, table.controls, n_boot, seed,
                            power_index, scheme)
    return _MetricPart(
        metric=metric, values=values_of, rank_table=rank_table,
        info=RankedMetric(label=info.label, unit=info.unit, direction=info.direction, family=info.family,
                          n_images=n_ranked, methods=ranked, nemenyi_cd=cd, weight=0.0),
        tests=tests, power=power)


# --- which metrics enter the rank -----------------------------------------------------------------------------------


def check_bootstrap(n_boot: int, scheme: str = stats.AUTO) -> None:
    """``n_boot`` is a whole number of resamples, 1 … :data:`MAX_BOOTSTRAP`, and ``scheme`` one of
    :data:`~xcv_batch.report.stats.SCHEMES` (ConfigError naming ``--bootstrap`` or ``--bootstrap-scheme``)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or not 1 <= n_boot <= MAX_BOOTSTRAP:
        raise ConfigError("--bootstrap", f"must be 1 … {MAX_BOOTSTRAP:,} resamples (default 2,000), got {n_boot!r}")
    if scheme not in stats.SCHEMES:
        raise ConfigError("--bootstrap-scheme", f"must be one of {', '.join(stats.SCHEMES)}, got {scheme!r}")


def parse_rank_on(text: str) -> dict[str, float] | str:
    """``sensitivity_max:1,deletion_auc:2`` (a weight may be left out: 1) → {metric: weight}, or :data:`RELIABLE`;
    ConfigError if malformed."""
    if str(text).strip() == RELIABLE:
        return RELIABLE
    weights: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, _, weight_text = part.partition(":")
        name = name.strip()
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise ConfigError("--rank-on", f"weight of {name!r} must be a number, got {weight_text.strip()!r}") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError("--rank-on", f"weight of {name!r} must be > 0, got {weight_text.strip()}")
        if name in weights:
            raise ConfigError("--rank-on", f"{name!r} is named twice")
        weights[name] = weight
    if not weights:
        raise ConfigError("--rank-on", "name at least one metric, e.g. sensitivity_max:1,deletion_auc:2")
    return weights


def rank_weights(ranked: Mapping[str, RankedMetric], chosen: Mapping[str, float] | str | None,
                 skipped: Mapping[str, str] | None = None, power: ControlPower | None = None) -> dict[str, float]:
    """The weight of each ranked metric in the overall rank: the chosen ones, or by default 1 per family present,
    shared equally by the family's metrics (a metric of no known family is a family of its own). By default a metric
    that ties the methods on most images is left out (``power``); :data:`RELIABLE` leaves out every flagged metric."""
    if chosen == RELIABLE:
        flagged = power.flagged if power is not None else []
        if ranked and all(metric in flagged for metric in ranked):
            raise ConfigError("--rank-on", f"reliable: every ranked metric is flagged ({', '.join(ranked)}), so "
                                           "none is left to rank on; name the metrics instead")
        return rank_weights({m: info for m, info in ranked.items() if m not in flagged}, None)
    if chosen is None and power is not None:
        ranked = {m: info for m, info in ranked.items() if not (m in power.metrics and power.metrics[m].tied)}
    if chosen is None:
        families: dict[str, list[str]] = {}
        for metric, info in ranked.items():
            family = info.family or "other"
            families.setdefault(metric if family == "other" else family, []).append(metric)
        return {metric: 1.0 / len(members) for members in families.values() for metric in members}
    for metric in chosen:
        if metric in ranked:
            continue
        if metric in COST_COLUMNS:
            why = "is a cost, reported beside the rank (batch time ÷ images: no per-image spread to rank)"
        elif metric in DIAGNOSTICS:
            why = f"is a diagnostic of {method_label(DIAGNOSTICS[metric].method)}, not a metric of every method"
        elif skipped and metric in skipped:
            why = f"cannot be ranked in this run ({skipped[metric]})"
        else:
            why = "is not a quality metric of this run"
        raise ConfigError("--rank-on", f"{metric} {why}; ranked metrics here: {', '.join(ranked) or 'none'}")
    return {metric: float(weight) for metric, weight in chosen.items()}


def _rank_cis(rank_tables: Mapping[str, tuple], weights: Mapping[str, float], n_boot: int,
              rng: np.random.Generator, scheme: str) -> tuple[dict[tuple[str, str], list], dict[str, list]]:
    """Bootstrap CIs of every per-metric mean rank ({(metric, method): CI}) and of each method's overall (weighted)
    mean rank ({method: CI}), from shared resamples."""
    per_metric: dict[tuple[str, str], list] = {}
    if not rank_tables:
        return per_metric, {}
    metrics = list(rank_tables)
    samples = stats.bootstrap_means([rank_tables[m][1] for m in metrics], n_boot, rng, scheme)
    overall: dict[str, list[tuple[float, np.ndarray]]] = {}
    for metric, boot in zip(metrics, samples):
        ranked, ranks = rank_tables[metric][:2]
        for j, name in enumerate(ranked):
            if _nanmean(ranks[:, j]) is None:
                continue
            per_metric[(metric, name)] = list(stats.percentile_ci(boot[:, j]))
            if metric in weights:
                overall.setdefault(name, []).append((weights[metric], boot[:, j]))
    overall_cis = {}
    for name, columns in overall.items():
        w = np.array([weight for weight, _ in columns])[:, None]
        values = np.array([column for _, column in columns])
        present = np.isfinite(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            weighted = (np.where(present, values, 0.0) * w).sum(axis=0) / (present * w).sum(axis=0)
        overall_cis[name] = list(stats.percentile_ci(weighted))
    return per_metric, overall_cis


# --- agreement between the metrics ----------------------------------------------------------------------------------


def metric_agreement(metrics: Mapping[str, RankedMetric], values: Mapping[str, np.ndarray],
                     method_names: Sequence[str], weights: Mapping[str, float], n_boot: int, seed: int,
                     scheme: str = stats.AUTO) -> Agreement:
    """How well the ranked metrics agree on the order of the methods, image by image.

    ``pairs``: for every pair of ranked metrics, the mean over images of Kendall's τ-b between the two metrics'
    orderings of the methods both rank (images where both have every one of those methods and neither ties them
    all), with a bootstrap CI over those images. ``matrix``: the mean τ as a metrics × metrics table (1 on the
    diagonal, None where undefined). ``kendalls_w``: Kendall's W of the metrics that enter the rank over the methods
    they all rank, per image, averaged with a bootstrap CI. ``disagreeing``: pairs of metrics that enter the rank
    with a mean τ below ``threshold``.
    """
    names = list(metrics)
    matrix = [[1.0 if a == b else None for b in names] for a in names]
    compared = []  # (index, i, j, methods both rank, their columns): the pairs of metrics with a τ
    for index, (i, j) in enumerate(combinations(range(len(names)), 2)):
        common = [m for m in metrics[names[i]].methods if m in metrics[names[j]].methods]
        if len(common) >= 2:
            compared.append((index, i, j, common, tuple(list(method_names).index(m) for m in common)))
    in_rank = [m for m in names if m in weights]

    def orders_of(key: tuple[str, tuple[int, ...]]) -> tuple:
        metric, columns = key
        return stats.pair_orders(_oriented(values[metric][:, list(columns)], metrics[metric].direction))

    def pair_of(item: tuple) -> MetricPair:
        index, i, j, common, columns = item
        a, b = names[i], names[j]
        taus = stats.kendall_tau_of_orders(orders[(a, columns)], orders[(b, columns)])
        mean, ci, n = stats.mean_ci(taus, n_boot, np.random.default_rng([seed, 7919, index]), scheme=scheme)
        return MetricPair(a=a, b=b, tau=mean, ci95=list(ci), n_images=n, methods=common,
                          in_rank=a in weights and b in weights)

    # Each metric's pair orders once (shared by its pairs), then every pair with its own seed, two at a time.
    keys = list(dict.fromkeys(key for _, i, j, _, columns in compared for key in ((names[i], columns),
                                                                                   (names[j], columns))))
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        concordance = pool.submit(_concordance, metrics, values, method_names, in_rank, n_boot, seed, scheme)
        orders = dict(zip(keys, pool.map(orders_of, keys)))
        pairs = list(pool.map(pair_of, compared))
    kendalls_w = concordance.result()
    for (_, i, j, _, _), pair in zip(compared, pairs):
        matrix[i][j] = matrix[j][i] = pair.tau if pair.n_images else None
    disagreeing = [p for p in pairs if p.in_rank and p.n_images and p.tau < AGREEMENT_THRESHOLD]
    return Agreement(threshold=AGREEMENT_THRESHOLD, metrics=names, matrix=matrix, pairs=pairs,
                     kendalls_w=kendalls_w, disagreeing=[[p.a, p.b] for p in disagreeing])


def _oriented(values: np.ndarray, direction: str) -> np.ndarray:
    """Values turned so that lower is better, whatever the metric's direction."""
    return -values if direction == "higher" else values


def _concordance(metrics: Mapping[str, RankedMetric], values: Mapping[str, np.ndarray], method_names: Sequence[str],
                 in_rank: Sequence[str], n_boot: int, seed: int, scheme: str) -> Concordance:
    """Kendall's W of the metrics in the rank over the methods they all rank: per image, then the mean and its CI."""
    common = [m for m in method_names if all(m in metrics[name].methods for name in in_rank)]
    if len(in_rank) < 2 or len(common) < 2:
        return Concordance(value=None, ci95=[None, None], n_images=0, metrics=list(in_rank), methods=common)
    columns = [list(method_names).index(m) for m in common]
    n_images = len(values[in_rank[0]])
    w = np.empty(n_images)
    for start in range(0, n_images, _CONCORDANCE_BLOCK_ROWS):  # (images, metrics, methods) ranks a block at a time
        rows = slice(start, start + _CONCORDANCE_BLOCK_ROWS)
        ranks = np.stack([stats.rank_rows(values[name][rows, columns], metrics[name].direction) for name in in_rank],
                         axis=1)
        w[rows] = stats.kendalls_w_rows(ranks)
    mean, ci, n = stats.mean_ci(w, n_boot, np.random.default_rng([seed, 7907]), scheme=scheme)
    return Concordance(value=mean, ci95=list(ci), n_images=n, metrics=list(in_rank), methods=common)


# --- cost: beside the rank, never in it -----------------------------------------------------------------------------


def cost_summary(table: RowTable, job: Mapping | None) -> Cost:
    """Per method: seconds per image and images per second (attribution only, summed over workers), model passes per
    image from the method's settings (rows through the model, and forward-equivalents: a backward weighs two
    forwards) and forward-equivalents per second, and the share of the run's summed seconds (attribution, sensitivity
    and quality metrics) its rows took. No CI and no test: a row's time is its batch's time ÷ its images.
    """
    job = job or {}
    compute = job.get("compute") or {}
    # (rows, columns), laid out column by column as pandas hands a frame's columns over: the sums below add the same
    # numbers in the same order as they always did, so the figures stay the same to the last digit.
    seconds = table.seconds.T
    run_total = float(np.nansum(seconds)) if seconds.size else 0.0
    ok = table.row_status == OK
    attr_column = (table.seconds[table.seconds_columns.index("attr_seconds")]
                   if "attr_seconds" in table.seconds_columns else np.full(len(ok), np.nan))
    per_method = {}
    for j, name in enumerate(table.methods):
        mine = table.row_method == j
        attr = attr_column[mine & ok]
        attr = pd.Series(attr[~np.isnan(attr)], dtype=float)
        total = float(attr.sum())
        images_per_second = len(attr) / total if total > 0 else None
        passes = _passes(name, job)
        method_total = float(np.nansum(seconds[mine])) if seconds.size else 0.0
        per_method[name] = MethodCost(
            n_images=int(len(attr)), attr_seconds_total=total,
            seconds_per_image=total / len(attr) if len(attr) else None,
            images_per_second=images_per_second,
            passes_per_image=passes.rows if passes else None,
            passes=passes.describe() if passes else None,
            forward_equivalents_per_image=passes.work if passes else None,
            forward_equivalents_per_second=passes.work * images_per_second if passes and images_per_second else None,
            share_of_run=method_total / run_total if run_total > 0 else None,
        )
    return Cost(batch_size=compute.get("batch_size"), forward_batch=compute.get("forward_batch"),
                device=compute.get("device"), workers=compute.get("workers"), methods=per_method)


def _passes(method: str, job: Mapping) -> Passes | None:
    """One explanation's passes per image, from the method's settings in ``job`` (OUT/job.yaml); None if unknown."""
    resolution = (job.get("model") or {}).get("resolution")
    settings_type = METHOD_SETTINGS.get(method)
    if settings_type is None or not resolution:
        return None
    known = {f.name for f in dataclasses.fields(settings_type)}
    given = (job.get("methods") or {}).get(method) or {}
    return explanation_passes(method, settings_type(**{k: v for k, v in given.items() if k in known}), resolution)


# --- per-method diagnostics -----------------------------------------------------------------------------------------


def diagnostics_summary(ok: pd.DataFrame, name_of=str) -> dict[str, Diagnostic]:
    """Each diagnostic column present: its method's values, and the images above its tolerance (worst first);
    ``name_of`` turns an ``image_id`` value into the id (see :func:`summarize_rows`)."""
    found = {}
    for column, info in DIAGNOSTICS.items():
        if column not in ok.columns:
            continue
        mine = ok[ok["method"] == info.method]
        values = pd.to_numeric(mine[column], errors="coerce")
        present = values.notna()
        if not present.any():
            continue
        above = mine[values > info.tolerance].assign(diagnostic_value=values[values > info.tolerance])
        above = above.sort_values("diagnostic_value", ascending=False, kind="stable")
        found[column] = Diagnostic(
            label=info.label, method=info.method, tolerance=info.tolerance, meaning=info.meaning,
            n=int(present.sum()), median=float(values[present].median()), max=float(values[present].max()),
            n_above=int(len(above)),
            above=[DiagnosticImage(image_id=name_of(r.image_id), value=float(r.diagnostic_value))
                   for r in above.head(_DIAGNOSTIC_IMAGES_LISTED).itertuples()],
        )
    return found


def _diagnostic_rows(table: RowTable) -> pd.DataFrame:
    """The ok rows of the methods that have a diagnostic, in file order, with their diagnostic columns."""
    ok = table.row_status == OK
    mine = ok & np.isin(table.row_method, [j for j, name in enumerate(table.methods)
                                           if any(info.method == name for info in DIAGNOSTICS.values())])
    return pd.DataFrame({"image_id": table.row_image[mine],
                         "method": np.asarray(table.methods, dtype=object)[table.row_method[mine]],
                         **{column: values[mine] for column, values in table.diagnostics.items()}})


def _nanmean(column: np.ndarray) -> float | None:
    column = column[np.isfinite(column)]
    return float(column.mean()) if len(column) else None


# --- the seed's settings --------------------------------------------------------------------------------------------


def seed_setting_differences(job: dict) -> list[str]:
    """How the job's settings differ from the seed report's (empty: its Table I is comparable with ours)."""
    if not job:
        return [f"no {JOB_FILE}"]
    differences = []
    for name, settings in (job.get("methods") or {}).items():
        if name not in METHOD_SETTINGS:
            continue
        for key, default in asdict(METHOD_SETTINGS[name]()).items():
            value = (settings or {}).get(key, default)
            if value != default:
                differences.append(f"methods.{name}.{key}={value} (seed: {default})")
    sensitivity = job.get("sensitivity")
    if not sensitivity:
        differences.append("sensitivity is off")
    else:
        for key, default in SEED_SENSITIVITY.items():
            if sensitivity.get(key, default) != default:
                differences.append(f"sensitivity.{key}={sensitivity.get(key)} (seed: {default})")
    resolution = (job.get("model") or {}).get("resolution", SEED_RESOLUTION)
    if resolution != SEED_RESOLUTION:
        differences.append(f"model.resolution={resolution} (seed: {SEED_RESOLUTION})")
    return differences


# --- files ----------------------------------------------------------------------------------------------------------


def write_summary(out: str, summary: Summary) -> list[str]:
    """Write ``OUT/summary.json`` and ``OUT/summary.md``; returns their paths. OutputError when OUT cannot be written
    (a read-only copy of a run: the summary itself is still there to print)."""
    out = str(out).rstrip("/")
    written = []
    for name, text in (("summary.json", summary.to_json()), ("summary.md", render_markdown(summary))):
        path = f"{out}/{name}"
        write_text(path, text)
        written.append(path)
    return written


def write_text(path: str, text: str) -> None:
    """``text`` to ``path`` (a local path or URL); any failure to write there is one OutputError naming it."""
    try:
        with fsspec.open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except Exception as err:  # noqa: BLE001 - OSError locally; a URL's backend raises its own (missing credentials…)
        raise OutputError(f"cannot write {path} ({type(err).__name__}: {first_line(err)})") from err
