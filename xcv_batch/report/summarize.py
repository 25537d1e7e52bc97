"""Rank the methods across a run's images: the summary object, ``summary.json``, ``summary.md`` and the terminal table.

Ranking rules (Demšar 2006): per image and metric, the methods are ranked (1 = best by the metric's direction in
:mod:`metrics_info`, ties share the average rank); an image where a method has no value for that metric is left out
of that metric's ranks and tests. Only **quality** metrics are ranked. A method's ``mean_rank`` is the weighted mean
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
import json
import math
from dataclasses import asdict
from itertools import combinations
from typing import Any, Mapping, Sequence

import fsspec
import numpy as np
import pandas as pd
from rich.table import Table

from . import stats
from ..config import SensitivityConfig
from ..errors import ConfigError
from ..output.layout import JOB_FILE
from ..methods.settings import METHOD_SETTINGS
from ..metrics.registry import COST_COLUMNS, DIAGNOSTICS, metric_info, metric_title, metrics_in
from ..driver.plan import Passes, explanation_passes
from ..output.results import Results, method_label, open_results

SUMMARY_SCHEMA = 2

#: Mean Kendall's τ below which two metrics are said to disagree: (1 + τ) / 2 = 0.65, so about one pair of methods in
#: three is ordered the other way round; rank correlations under 0.3 are conventionally called weak.
AGREEMENT_THRESHOLD = 0.3
#: Disagreeing pairs named in the sentence, the lowest τ first (the count is always complete; the matrix has all).
_PAIRS_NAMED = 3
#: Images listed per diagnostic above its tolerance (the count is always complete).
_DIAGNOSTIC_IMAGES_LISTED = 20

#: The seed report's Table I (one photo, its machine): Max-Sensitivity and seconds per image.
SEED_TABLE_I = {
    "occlusion": {"sensitivity_max": 0.1300, "attr_seconds": 74.29},
    "integrated_gradients": {"sensitivity_max": 0.4889, "attr_seconds": 41.49},
    "ig_smoothgrad": {"sensitivity_max": 0.1600, "attr_seconds": 84.55},
    "guided_gradcam": {"sensitivity_max": 0.1255, "attr_seconds": 0.299},
    "lime": {"sensitivity_max": 0.0400, "attr_seconds": 85.97},
}
SEED_SENSITIVITY = asdict(SensitivityConfig())  # the job defaults are the seed's settings
SEED_RESOLUTION = 224


# --- the summary object ---------------------------------------------------------------------------------------------


def summarize(out: "str | Results", n_boot: int = 2000, seed: int = 0,
              rank_on: Mapping[str, float] | None = None) -> dict:
    """The summary of the output directory ``out`` (a path, or its open Results; finished or not); JSON-able, see
    :func:`summarize_rows`."""
    results = open_results(out)
    rows = results.rows()
    job = results.job
    summary = summarize_rows(rows, methods=results.methods, n_boot=n_boot, seed=seed, rank_on=rank_on, job=job)
    model = job.get("model") or {}
    expected_ids = results.stored_image_ids
    missing = _missing_rows(rows, expected_ids, results.methods)
    differences = seed_setting_differences(job)
    run = {
        "out": results.out,
        "job_name": job.get("name"),
        "fingerprint": results.fingerprint,
        "model": {"arch": model.get("arch", results.attrs.get("model")),
                  "weights": model.get("weights", results.attrs.get("weights")),
                  "resolution": model.get("resolution")},
        "target": job.get("target"),
        "n_expected": len(expected_ids) if expected_ids is not None else None,
        # Without the Zarr group's id list nobody knows how many images the run will have: not complete.
        "complete": expected_ids is not None and missing == 0,
        "n_missing_rows": missing,
        "seed_settings": {"matches": not differences, "differences": differences},
    }
    return {**summary, **_jsonable(run)}  # summarize_rows' part is plain already


def summarize_rows(rows: pd.DataFrame, methods: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                   alpha: float = stats.ALPHA, rank_on: Mapping[str, float] | None = None,
                   job: Mapping | None = None) -> dict:
    """Rankings, CIs, tests, agreement and cost of a table of metric rows (the Parquet schema); the part of
    :func:`summarize` that needs no files. ``rank_on``: metric → weight for the overall rank (default: every family
    of quality metrics present weighs 1); ``job``: the resolved job, for the cost's batch size and passes per image.

    Returns ``n_images``, ``n_boot``, ``seed``, ``alpha``, ``metrics`` (per ranked quality metric: direction, label,
    unit, family, images ranked, methods ranked, Nemenyi CD, its weight in the rank), ``metrics_skipped`` (metric →
    why), ``rank_on`` (the weights used and whether they were chosen), ``methods`` (per method: ``label``,
    ``mean_rank``, ``mean_rank_ci95``, ``win_rate``, ``n_ok``, ``n_error``, ``ranks`` {metric: mean_rank,
    mean_rank_ci95, win_rate, n_images}, and per metric {median, ci95, mean, n, n_missing, direction}), ``tests``
    (per metric: friedman, pairwise, nemenyi), ``agreement`` (see :func:`metric_agreement`), ``cost`` (see
    :func:`cost_summary`), ``diagnostics`` and ``failures`` (the error rows' image, method and message).
    """
    rows = _deduplicate(rows)
    method_names = list(dict.fromkeys([*(methods or []), *rows["method"].astype(str)]))
    images = _images_in_order(rows)
    ok = rows[rows["status"] == "ok"]

    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA, "n_images": len(images), "n_boot": int(n_boot), "seed": int(seed),
        "alpha": alpha, "metrics": {}, "metrics_skipped": {}, "methods": {}, "tests": {},
    }
    for name in method_names:
        of_method = rows[rows["method"] == name]
        summary["methods"][name] = {
            "label": method_label(name), "mean_rank": None, "mean_rank_ci95": [None, None], "win_rate": None,
            "n_ok": int((of_method["status"] == "ok").sum()), "n_error": int((of_method["status"] == "error").sum()),
            "ranks": {},
        }

    rank_tables: dict[str, tuple[list[str], np.ndarray]] = {}
    value_tables: dict[str, np.ndarray] = {}  # metric → (images, all methods) values, for the agreement
    for m_index, metric in enumerate(metrics_in(rows.columns)):
        info = metric_info(metric)
        if not pd.api.types.is_numeric_dtype(rows[metric]) and rows[metric].notna().any():
            summary["metrics_skipped"][metric] = f"column has non-numeric values ({rows[metric].dtype})"
            continue
        wide = ok.pivot(index="image_id", columns="method", values=metric).reindex(index=images, columns=method_names)
        values = wide.astype("float64").to_numpy(dtype=float, na_value=np.nan)
        has_value = np.isfinite(values)
        ranked = [name for j, name in enumerate(method_names) if has_value[:, j].any()]
        if not ranked:
            summary["metrics_skipped"][metric] = "no method has a value"
            continue
        value_tables[metric] = values
        for j, name in enumerate(method_names):
            entry = summary["methods"][name]
            rng = np.random.default_rng([seed, m_index + 1, j])
            median, ci = stats.median_ci(values[:, j], n_boot, rng)
            n = int(has_value[:, j].sum())
            entry[metric] = {"median": median, "ci95": list(ci), "mean": float(np.nanmean(values[:, j])) if n else None,
                             "n": n, "n_missing": entry["n_ok"] - n, "direction": info.direction}

        table = values[:, [method_names.index(name) for name in ranked]]
        ranks = stats.rank_rows(table, info.direction)
        wins = stats.win_shares(ranks)
        n_ranked = int(stats.complete_rows(table).sum())
        rank_tables[metric] = (ranked, ranks)
        for j, name in enumerate(ranked):
            summary["methods"][name]["ranks"][metric] = {
                "mean_rank": _nanmean(ranks[:, j]), "mean_rank_ci95": [None, None],
                "win_rate": _nanmean(wins[:, j]), "n_images": n_ranked,
            }
        cd = stats.nemenyi_cd(len(ranked), n_ranked, alpha)
        summary["metrics"][metric] = {
            "label": info.label, "unit": info.unit, "direction": info.direction, "family": info.family,
            "n_images": n_ranked, "methods": ranked, "nemenyi_cd": cd, "weight": 0.0,
        }
        summary["tests"][metric] = {
            "n_images": n_ranked,
            "friedman": stats.friedman(table, alpha),
            "pairwise": stats.pairwise_wilcoxon(table, ranked, info.direction, alpha),
            "nemenyi": {"alpha": alpha, "q_alpha": stats.NEMENYI_Q_005.get(len(ranked)), "cd": cd},
        }

    weights = rank_weights(summary["metrics"], rank_on, summary["metrics_skipped"])
    summary["rank_on"] = {"weights": weights, "chosen": rank_on is not None}
    for metric, weight in weights.items():
        summary["metrics"][metric]["weight"] = weight
    _add_rank_cis(summary, rank_tables, weights, n_boot, np.random.default_rng(seed))
    for name, entry in summary["methods"].items():
        per_metric = [(weights[m], r) for m, r in entry["ranks"].items() if m in weights and r["mean_rank"] is not None]
        if per_metric:
            total = sum(w for w, _ in per_metric)
            entry["mean_rank"] = float(sum(w * r["mean_rank"] for w, r in per_metric) / total)
            entry["win_rate"] = float(sum(w * r["win_rate"] for w, r in per_metric) / total)

    summary["agreement"] = metric_agreement(summary["metrics"], value_tables, method_names, weights, n_boot, seed)
    summary["cost"] = cost_summary(rows, method_names, job)
    summary["diagnostics"] = diagnostics_summary(ok)
    errors = rows[rows["status"] == "error"]
    summary["failures"] = [
        {"image_id": str(r.image_id), "method": str(r.method), "error": None if pd.isna(r.error) else str(r.error)}
        for r in errors.sort_values(["image_id", "method"]).itertuples()
    ]
    summary["n_failed_images"] = int(errors["image_id"].nunique())
    return _jsonable(summary)


# --- which metrics enter the rank -----------------------------------------------------------------------------------


def parse_rank_on(text: str) -> dict[str, float]:
    """``sensitivity_max:1,deletion_auc:2`` (a weight may be left out: 1) → {metric: weight}; ConfigError if malformed."""
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


def rank_weights(ranked: Mapping[str, dict], chosen: Mapping[str, float] | None,
                 skipped: Mapping[str, str] | None = None) -> dict[str, float]:
    """The weight of each ranked metric in the overall rank: the chosen ones, or by default 1 per family present,
    shared equally by the family's metrics (a metric of no known family is a family of its own)."""
    if chosen is None:
        families: dict[str, list[str]] = {}
        for metric, info in ranked.items():
            family = info.get("family") or "other"
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


def _add_rank_cis(summary: dict, rank_tables: dict, weights: Mapping[str, float], n_boot: int,
                  rng: np.random.Generator) -> None:
    """Bootstrap CIs of every per-metric mean rank and of each method's overall (weighted) mean rank, from shared
    resamples."""
    if not rank_tables:
        return
    metrics = list(rank_tables)
    samples = stats.bootstrap_means([rank_tables[m][1] for m in metrics], n_boot, rng)
    overall: dict[str, list[tuple[float, np.ndarray]]] = {}
    for metric, boot in zip(metrics, samples):
        for j, name in enumerate(rank_tables[metric][0]):
            entry = summary["methods"][name]["ranks"][metric]
            if entry["mean_rank"] is None:
                continue
            entry["mean_rank_ci95"] = list(stats.percentile_ci(boot[:, j]))
            if metric in weights:
                overall.setdefault(name, []).append((weights[metric], boot[:, j]))
    for name, columns in overall.items():
        w = np.array([weight for weight, _ in columns])[:, None]
        values = np.array([column for _, column in columns])
        present = np.isfinite(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            weighted = (np.where(present, values, 0.0) * w).sum(axis=0) / (present * w).sum(axis=0)
        summary["methods"][name]["mean_rank_ci95"] = list(stats.percentile_ci(weighted))


# --- agreement between the metrics ----------------------------------------------------------------------------------


def metric_agreement(metrics: Mapping[str, dict], values: Mapping[str, np.ndarray], method_names: Sequence[str],
                     weights: Mapping[str, float], n_boot: int, seed: int) -> dict:
    """How well the ranked metrics agree on the order of the methods, image by image.

    ``pairs``: for every pair of ranked metrics, the mean over images of Kendall's τ-b between the two metrics'
    orderings of the methods both rank (images where both have every one of those methods and neither ties them
    all), with a bootstrap CI over those images. ``matrix``: the mean τ as a metrics × metrics table (1 on the
    diagonal, None where undefined). ``kendalls_w``: Kendall's W of the metrics that enter the rank over the methods
    they all rank, per image, averaged with a bootstrap CI. ``disagreeing``: pairs of metrics that enter the rank
    with a mean τ below ``threshold``.
    """
    names = list(metrics)
    pairs = []
    matrix = [[1.0 if a == b else None for b in names] for a in names]
    for index, (i, j) in enumerate(combinations(range(len(names)), 2)):
        a, b = names[i], names[j]
        common = [m for m in metrics[a]["methods"] if m in metrics[b]["methods"]]
        if len(common) < 2:
            continue
        columns = [list(method_names).index(m) for m in common]
        taus = stats.kendall_tau_rows(_oriented(values[a][:, columns], metrics[a]["direction"]),
                                      _oriented(values[b][:, columns], metrics[b]["direction"]))
        mean, ci, n = stats.mean_ci(taus, n_boot, np.random.default_rng([seed, 7919, index]))
        pairs.append({"a": a, "b": b, "tau": mean, "ci95": list(ci), "n_images": n, "methods": common,
                      "in_rank": a in weights and b in weights})
        matrix[i][j] = matrix[j][i] = mean if n else None
    in_rank = [m for m in names if m in weights]
    disagreeing = [p for p in pairs if p["in_rank"] and p["n_images"] and p["tau"] < AGREEMENT_THRESHOLD]
    return {"threshold": AGREEMENT_THRESHOLD, "metrics": names, "matrix": matrix, "pairs": pairs,
            "kendalls_w": _concordance(metrics, values, method_names, in_rank, n_boot, seed),
            "disagreeing": [[p["a"], p["b"]] for p in disagreeing]}


def _oriented(values: np.ndarray, direction: str) -> np.ndarray:
    """Values turned so that lower is better, whatever the metric's direction."""
    return -values if direction == "higher" else values


def _concordance(metrics: Mapping[str, dict], values: Mapping[str, np.ndarray], method_names: Sequence[str],
                 in_rank: Sequence[str], n_boot: int, seed: int) -> dict:
    """Kendall's W of the metrics in the rank over the methods they all rank: per image, then the mean and its CI."""
    common = [m for m in method_names if all(m in metrics[name]["methods"] for name in in_rank)]
    result = {"value": None, "ci95": [None, None], "n_images": 0, "metrics": list(in_rank), "methods": common}
    if len(in_rank) < 2 or len(common) < 2:
        return result
    columns = [list(method_names).index(m) for m in common]
    ranks = np.stack([stats.rank_rows(values[name][:, columns], metrics[name]["direction"]) for name in in_rank], axis=1)
    mean, ci, n = stats.mean_ci(stats.kendalls_w_rows(ranks), n_boot, np.random.default_rng([seed, 7907]))
    result.update(value=mean, ci95=list(ci), n_images=n)
    return result


# --- cost: beside the rank, never in it -----------------------------------------------------------------------------


def cost_summary(rows: pd.DataFrame, method_names: Sequence[str], job: Mapping | None) -> dict:
    """Per method: seconds per image and images per second (attribution only, summed over workers), model passes per
    image from the method's settings (rows through the model, and forward-equivalents: a backward weighs two
    forwards) and forward-equivalents per second, and the share of the run's summed seconds (attribution, sensitivity
    and quality metrics) its rows took. No CI and no test: a row's time is its batch's time ÷ its images.
    """
    job = job or {}
    compute = job.get("compute") or {}
    seconds_columns = [c for c in rows.columns if c.endswith("_seconds")]
    seconds = rows[seconds_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    run_total = float(np.nansum(seconds)) if seconds.size else 0.0
    per_method = {}
    for name in method_names:
        mine = (rows["method"] == name).to_numpy()
        attr = pd.to_numeric(rows.loc[mine & (rows["status"] == "ok").to_numpy(), "attr_seconds"],
                             errors="coerce").dropna()
        total = float(attr.sum())
        images_per_second = len(attr) / total if total > 0 else None
        passes = _passes(name, job)
        method_total = float(np.nansum(seconds[mine])) if seconds.size else 0.0
        per_method[name] = {
            "n_images": int(len(attr)), "attr_seconds_total": total,
            "seconds_per_image": total / len(attr) if len(attr) else None,
            "images_per_second": images_per_second,
            "passes_per_image": passes.rows if passes else None,
            "passes": passes.describe() if passes else None,
            "forward_equivalents_per_image": passes.work if passes else None,
            "forward_equivalents_per_second": passes.work * images_per_second if passes and images_per_second else None,
            "share_of_run": method_total / run_total if run_total > 0 else None,
        }
    return {"batch_size": compute.get("batch_size"), "forward_batch": compute.get("forward_batch"),
            "device": compute.get("device"), "workers": compute.get("workers"), "methods": per_method}


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


def diagnostics_summary(ok: pd.DataFrame) -> dict:
    """Each diagnostic column present: its method's values, and the images above its tolerance (worst first)."""
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
        found[column] = {
            "label": info.label, "method": info.method, "tolerance": info.tolerance, "meaning": info.meaning,
            "n": int(present.sum()), "median": float(values[present].median()), "max": float(values[present].max()),
            "n_above": int(len(above)),
            "above": [{"image_id": str(r.image_id), "value": float(r.diagnostic_value)}
                      for r in above.head(_DIAGNOSTIC_IMAGES_LISTED).itertuples()],
        }
    return found


def _deduplicate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per image × method: a retried shard may have left an older row; an ``ok`` row wins over an error."""
    if rows.empty:
        return rows
    order = rows.assign(_ok=(rows["status"] == "ok")).reset_index(drop=True)
    order = order.sort_values("_ok", kind="stable")
    return order.drop_duplicates(["image_id", "method"], keep="last").drop(columns="_ok").sort_index()


def _images_in_order(rows: pd.DataFrame) -> list[str]:
    if rows.empty:
        return []
    key = "index" if "index" in rows.columns else "image_id"
    return rows.sort_values([key, "image_id"], kind="stable")["image_id"].drop_duplicates().tolist()


def _missing_rows(rows: pd.DataFrame, expected_ids: Sequence[str] | None, methods: Sequence[str]) -> int | None:
    if expected_ids is None:
        return None
    have = set(zip(rows["image_id"].astype(str), rows["method"].astype(str)))
    return sum((str(i), m) not in have for i in expected_ids for m in methods)


def _nanmean(column: np.ndarray) -> float | None:
    column = column[np.isfinite(column)]
    return float(column.mean()) if len(column) else None


def _jsonable(value: Any) -> Any:
    """Plain Python types; NaN and infinity become None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


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


# --- rendering ------------------------------------------------------------------------------------------------------


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


def ordered_methods(summary: dict) -> list[str]:
    """Methods best first (by overall mean rank; unranked last, in run order)."""
    methods = summary["methods"]
    return sorted(methods, key=lambda m: (methods[m]["mean_rank"] is None, methods[m]["mean_rank"] or 0.0))


def _with_seed(summary: dict) -> bool:
    """Show the seed's Table I beside ours: same settings, and its quality column (Max-Sensitivity) ranked."""
    return "sensitivity_max" in summary["metrics"] and bool(summary.get("seed_settings", {}).get("matches"))


def status_line(summary: dict) -> str:
    n, expected = summary["n_images"], summary.get("n_expected")
    state = "complete" if summary.get("complete") else "partial: still running, interrupted or failed"
    of = f" of {expected}" if expected is not None else ""
    return f"{n}{of} images ({state})"


def _weight_text(weight: float) -> str:
    return f"{weight:.3g}"


def rank_sentence(summary: dict) -> str:
    """Which metrics entered the mean rank, with their weights, and that cost did not."""
    weights = (summary.get("rank_on") or {}).get("weights") or {}
    if not weights:
        return "No quality metric has values, so nothing is ranked; cost is shown on its own."
    listed = ", ".join(f"{summary['metrics'][m]['label']} ×{_weight_text(w)}" for m, w in weights.items())
    if (summary.get("rank_on") or {}).get("chosen"):
        how = "weights chosen with --rank-on"
    else:
        how = "default weights: each metric family present weighs 1, shared by its metrics"
    return (f"Mean rank and win rate are the weighted mean over quality metrics only: {listed} ({how}). "
            "Cost (seconds, passes) is reported beside them, never averaged in.")


def agreement_sentence(summary: dict) -> str | None:
    """Whether the metrics that entered the rank agree on the order of the methods; None with fewer than two."""
    agreement = summary.get("agreement") or {}
    pairs = [p for p in agreement.get("pairs", []) if p["in_rank"] and p["n_images"]]
    if not pairs:
        return None
    threshold = agreement["threshold"]
    w = agreement.get("kendalls_w") or {}
    concordance = (f" Kendall's W over them: {fmt_rank(w['value'], w['ci95'])} (n = {w['n_images']} images)."
                   if w.get("value") is not None else "")
    low = sorted((p for p in pairs if p["tau"] < threshold), key=lambda p: p["tau"])
    if not low:
        return (f"The ranked metrics agree: every pair's mean Kendall's τ over images is ≥ {threshold}."
                + concordance)
    named = "; ".join(f"{summary['metrics'][p['a']]['label']} vs {summary['metrics'][p['b']]['label']} "
                      f"τ = {fmt_rank(p['tau'], p['ci95'])}" for p in low[:_PAIRS_NAMED])
    more = f" and {len(low) - _PAIRS_NAMED} more" if len(low) > _PAIRS_NAMED else ""
    return (f"The metrics disagree on the order of the methods: {len(low)} of {len(pairs)} pairs of ranked metrics "
            f"have a mean Kendall's τ below {threshold} ({named}{more}). Below it, two metrics order a pair of methods "
            f"the same way at most {(1 + threshold) / 2:.0%} of the time, so the overall rank depends on which metrics "
            "enter it; read the per-metric ranks." + concordance)


def diagnostic_sentences(summary: dict) -> list[str]:
    """One line per diagnostic: how many images exceed its tolerance."""
    lines = []
    for info in (summary.get("diagnostics") or {}).values():
        head = (f"{info['label']} ({method_label(info['method'])}): median {fmt(info['median'], 3)}, "
                f"max {fmt(info['max'], 3)}")
        if info["n_above"]:
            worst = ", ".join(f"{a['image_id']} ({fmt(a['value'], 3)})" for a in info["above"][:5])
            lines.append(f"{head}; {info['n_above']} of {info['n']} images above the tolerance {info['tolerance']:g} "
                         f"(e.g. {worst}): raise n_steps.")
        else:
            lines.append(f"{head}; all {info['n']} images within the tolerance {info['tolerance']:g}.")
    return lines


def summary_notes(summary: dict) -> list[str]:
    """The sentences printed under the terminal table and written above the report's tables."""
    notes = [rank_sentence(summary)]
    agreement = agreement_sentence(summary)
    if agreement:
        notes.append(agreement)
    return notes + diagnostic_sentences(summary)


def cost_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The cost table (not ranked): header and one row per method, in rank order."""
    header = ["Method", "s / image", "images / s", "model passes / image", "forward-eq. / image", "forward-eq. / s",
              "share of run"]
    body = []
    for name in ordered_methods(summary):
        cost = (summary.get("cost") or {}).get("methods", {}).get(name) or {}
        share = f"{cost['share_of_run']:.1%}" if cost.get("share_of_run") is not None else "–"
        body.append([summary["methods"][name]["label"], fmt(cost.get("seconds_per_image"), 3),
                     fmt(cost.get("images_per_second"), 3), cost.get("passes") or "–",
                     fmt(cost.get("forward_equivalents_per_image"), 4),
                     fmt(cost.get("forward_equivalents_per_second"), 3), share])
    return header, body


def cost_sentence(summary: dict) -> str:
    cost = summary.get("cost") or {}
    batch = cost.get("batch_size")
    at = f"at compute.batch_size = {batch} images" if batch else "at the run's batch size"
    return (f"Cost, not ranked: attribution seconds per image {at} (summed over workers), throughput, model passes per "
            "image from the method settings (forward-equivalents: a backward counts as two forwards), and each "
            "method's share of the run's summed seconds (attribution, sensitivity and metrics). A row's time is its "
            "batch's ÷ its images, so it carries no CI or test.")


def render_table(summary: dict) -> Table:
    """The ranking as a rich table, best method first (each CI under its value, so it fits 80 columns); cost on the
    right, apart from the rank."""
    table = Table(title=f"Method ranking — {status_line(summary)}; metrics: median [95% CI]", title_justify="left")
    table.add_column("Method", min_width=9)  # the only column that may wrap
    table.add_column("n ok", justify="right", no_wrap=True)
    table.add_column("n\nfailed", justify="right", no_wrap=True)
    table.add_column("Mean rank\n[95% CI]", justify="right", no_wrap=True)
    table.add_column("Win\nrate", justify="right", no_wrap=True)
    for metric, info in summary["metrics"].items():
        mark = "" if info.get("weight") else "\n(not in rank)"
        table.add_column(f"{metric_title(info)}{mark}", justify="right", no_wrap=True)
    table.add_column("Cost:\ns / image", justify="right", no_wrap=True)
    for name in ordered_methods(summary):
        entry = summary["methods"][name]
        rank = fmt_rank(entry["mean_rank"], entry["mean_rank_ci95"]).replace(" [", "\n[")
        medians = [fmt_ci(entry.get(m, {}).get("median"), entry.get(m, {}).get("ci95"), 3).replace(" [", "\n[")
                   for m in summary["metrics"]]
        cost = (summary.get("cost") or {}).get("methods", {}).get(name) or {}
        table.add_row(entry["label"], str(entry["n_ok"]), str(entry["n_error"]), rank, fmt_rank(entry["win_rate"]),
                      *medians, fmt(cost.get("seconds_per_image"), 3))
    return table


def render_markdown(summary: dict) -> str:
    """``summary.md``: a Table I with n and CIs (the seed's values beside ours when the settings match), the ranks
    per metric, the cost, the metrics' agreement, diagnostics, the tests and the failures."""
    lines = [f"# xcv_batch summary{': ' + summary['job_name'] if summary.get('job_name') else ''}", ""]
    model = summary.get("model") or {}
    if model.get("arch"):
        lines.append(f"- Model: {model['arch']} (weights {model.get('weights')}) at {model.get('resolution')} px"
                     + (f", target: {summary['target']}" if summary.get("target") else ""))
    if summary.get("fingerprint"):
        lines.append(f"- Job fingerprint: `{summary['fingerprint']}`")
    lines.append(f"- Images: {status_line(summary)}")
    lines.append(f"- 95% CIs: percentile bootstrap over images, {summary['n_boot']} resamples, seed {summary['seed']}")
    seed_settings = summary.get("seed_settings") or {}
    if seed_settings.get("differences"):
        lines.append("- Settings differ from the seed report's, so its Table I is not shown: "
                     + "; ".join(seed_settings["differences"]))
    lines += ["", *summary_notes(summary), "", "## Table I", ""]

    with_seed = _with_seed(summary)
    header = ["Method", "n ok", "n failed", "Mean rank [95% CI]", "Win rate"]
    for metric, info in summary["metrics"].items():
        header.append(f"{metric_title(info)} median [95% CI]")
        if with_seed and metric == "sensitivity_max":
            header.append(f"{info['label']} seed (Table I)")
    header.append("Seconds / image (cost)")
    if with_seed:
        header.append("Time seed (Table I)")
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for name in ordered_methods(summary):
        entry = summary["methods"][name]
        cells = [entry["label"], str(entry["n_ok"]), str(entry["n_error"]),
                 fmt_rank(entry["mean_rank"], entry["mean_rank_ci95"]), fmt_rank(entry["win_rate"])]
        for metric in summary["metrics"]:
            stat = entry.get(metric) or {}
            cells.append(fmt_ci(stat.get("median"), stat.get("ci95")))
            if with_seed and metric == "sensitivity_max":
                cells.append(_seed_cell(name, metric))
        cells.append(fmt((summary.get("cost") or {}).get("methods", {}).get(name, {}).get("seconds_per_image")))
        if with_seed:
            cells.append(_seed_cell(name, "attr_seconds"))
        lines.append(_md_row(cells))
    if with_seed:
        lines += ["", "Seed values: the seed report's Table I, one photo on its own machine; ours are medians over "
                      "the images above (time: total seconds ÷ images)."]

    if summary["metrics"]:
        lines += ["", "## Mean rank per metric (1 = best)", ""]
        header = ["Method"] + [f"{info['label']} (n={info['n_images']}, weight {_weight_text(info.get('weight', 0))})"
                               for info in summary["metrics"].values()]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for name in ordered_methods(summary):
            ranks = summary["methods"][name]["ranks"]
            lines.append(_md_row([summary["methods"][name]["label"]] + [
                fmt_rank(ranks.get(m, {}).get("mean_rank"), ranks.get(m, {}).get("mean_rank_ci95"))
                for m in summary["metrics"]
            ]))
    for metric, skipped_why in summary.get("metrics_skipped", {}).items():
        lines += ["", f"Not ranked: {metric} ({skipped_why})."]

    header, body = cost_rows(summary)
    lines += ["", "## Cost (not ranked)", "", cost_sentence(summary), "", _md_row(header),
              _md_row(["---"] * len(header)), *(_md_row(row) for row in body)]
    lines += _agreement_markdown(summary)

    lines += ["", "## Tests", ""]
    for metric, tests in summary["tests"].items():
        info = summary["metrics"][metric]
        lines += [f"### {info['label']} ({info['direction']} is better; n = {tests['n_images']} images with a value "
                  "for every method)", "", friedman_sentence(tests["friedman"])]
        if tests["nemenyi"]["cd"] is not None:
            lines.append(f"Nemenyi critical difference (α = {tests['nemenyi']['alpha']}): {tests['nemenyi']['cd']:.3f} "
                         "in mean rank.")
        if tests["pairwise"]:
            lines += ["", _md_row(["A", "B", "n", "p", "p (Holm)", "rank-biserial r (A − B)", "better", "significant"]),
                      _md_row(["---"] * 8)]
            for pair in tests["pairwise"]:
                lines.append(_md_row([
                    method_label(pair["a"]), method_label(pair["b"]), str(pair["n"]), fmt(pair["p"], 3),
                    fmt(pair["p_holm"], 3), fmt(pair["effect_size"], 3),
                    method_label(pair["better"]) if pair["better"] else "–", "yes" if pair["reject"] else "no",
                ]))
        lines.append("")

    failures = summary.get("failures") or []
    lines += ["## Failures", ""]
    if not failures:
        lines.append("None.")
    else:
        lines.append(f"{len(failures)} failed rows on {summary.get('n_failed_images', '?')} images"
                     + (" (the first 50):" if len(failures) > 50 else ":"))
        lines.append("")
        for failure in failures[:50]:
            lines.append(f"- `{failure['image_id']}` {method_label(failure['method'])}: {failure['error']}")
    return "\n".join(lines).rstrip() + "\n"


def _seed_cell(method: str, column: str) -> str:
    seed_value = SEED_TABLE_I.get(method, {}).get(column)
    return "–" if seed_value is None else f"{seed_value:.4g}"


def agreement_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The metrics × metrics table of mean Kendall's τ (header and rows)."""
    agreement = summary.get("agreement") or {}
    names = agreement.get("metrics") or []
    labels = [summary["metrics"][m]["label"] for m in names]
    body = [[label] + [fmt_rank(v) for v in row] for label, row in zip(labels, agreement.get("matrix") or [])]
    return ["Mean Kendall's τ"] + labels, body


def _agreement_markdown(summary: dict) -> list[str]:
    agreement = summary.get("agreement") or {}
    if len(agreement.get("metrics") or []) < 2:
        return []
    header, body = agreement_rows(summary)
    lines = ["", "## Metric agreement", "",
             "Per image, Kendall's τ-b between the method orders two metrics give; mean over images [95% CI].", "",
             _md_row(["A", "B", "mean τ [95% CI]", "n images", "both in the rank"]), _md_row(["---"] * 5)]
    for p in agreement["pairs"]:
        lines.append(_md_row([summary["metrics"][p["a"]]["label"], summary["metrics"][p["b"]]["label"],
                              fmt_rank(p["tau"], p["ci95"]), str(p["n_images"]), "yes" if p["in_rank"] else "no"]))
    lines += ["", _md_row(header), _md_row(["---"] * len(header)), *(_md_row(row) for row in body)]
    sentence = agreement_sentence(summary)
    return lines + (["", sentence] if sentence else [])


def friedman_sentence(friedman: dict) -> str:
    """One line saying what the Friedman test found."""
    if friedman.get("skipped"):
        return f"Friedman test not run: {friedman['skipped']}."
    verdict = "the methods differ" if friedman["reject"] else "no evidence that the methods differ"
    return (f"Friedman χ² = {friedman['statistic']:.3f}, p = {fmt(friedman['p'], 3)}, "
            f"Kendall's W = {friedman['kendalls_w']:.3f}: {verdict}.")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# --- files ----------------------------------------------------------------------------------------------------------


def write_summary(out: str, summary: dict) -> list[str]:
    """Write ``OUT/summary.json`` and ``OUT/summary.md``; returns their paths."""
    out = str(out).rstrip("/")
    written = []
    for name, text in (("summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"),
                       ("summary.md", render_markdown(summary))):
        path = f"{out}/{name}"
        with fsspec.open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written

