"""Rank the methods across a run's images: the summary object, ``summary.json``, ``summary.md`` and the terminal table.

Ranking rules (Demšar 2006): per image and metric, the methods are ranked (1 = best by the metric's direction in
:mod:`metrics_info`, ties share the average rank); an image where a method has no value for that metric is left out
of that metric's ranks and tests. A method's ``mean_rank`` is the mean over metrics of its per-metric mean ranks, its
``win_rate`` the mean over metrics of the share of images it ranks first on (ties shared); both are also kept per
metric under ``ranks``. Every CI is a percentile bootstrap over images with a fixed seed; all rank CIs of one summary
come from the same resamples.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, Sequence

import fsspec
import numpy as np
import pandas as pd
from rich.table import Table

from . import stats
from .config import SensitivityConfig
from .methods.settings import METHOD_SETTINGS
from .metrics_info import metric_info, metric_title, metrics_in
from .results import Results, method_label, open_results

SUMMARY_SCHEMA = 1

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


def summarize(out: "str | Results", n_boot: int = 2000, seed: int = 0) -> dict:
    """The summary of the output directory ``out`` (a path, or its open Results; finished or not); JSON-able, see
    :func:`summarize_rows`."""
    results = open_results(out)
    rows = results.rows()
    summary = summarize_rows(rows, methods=results.methods, n_boot=n_boot, seed=seed)
    job = results.job
    model = job.get("model") or {}
    expected_ids = results.image_ids if results.attrs.get("image_ids") is not None else None
    missing = _missing_rows(rows, expected_ids, results.methods)
    differences = seed_setting_differences(job)
    run = {
        "out": results.out,
        "job_name": job.get("name"),
        "fingerprint": results.fingerprint,
        "model": {"arch": model.get("arch", results.attrs.get("model")),
                  "weights": model.get("weights", results.attrs.get("weights")),
                  "resolution": model.get("resolution")},
        "n_expected": len(expected_ids) if expected_ids is not None else None,
        # Without the Zarr group's id list nobody knows how many images the run will have: not complete.
        "complete": expected_ids is not None and missing == 0,
        "n_missing_rows": missing,
        "seed_settings": {"matches": not differences, "differences": differences},
    }
    return {**summary, **_jsonable(run)}  # summarize_rows' part is plain already


def summarize_rows(rows: pd.DataFrame, methods: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                   alpha: float = stats.ALPHA) -> dict:
    """Rankings, CIs and tests of a table of metric rows (the Parquet schema); the part of :func:`summarize` that
    needs no files.

    Returns ``n_images``, ``n_boot``, ``seed``, ``alpha``, ``metrics`` (per ranked metric: direction, label, unit,
    images ranked, methods ranked, Nemenyi CD), ``metrics_skipped`` (metric → why), ``methods`` (per method:
    ``label``, ``mean_rank``, ``mean_rank_ci95``, ``win_rate``, ``n_ok``, ``n_error``, ``ranks`` {metric: mean_rank,
    mean_rank_ci95, win_rate, n_images}, and per metric {median, ci95, mean, n, n_missing, direction}), ``tests``
    (per metric: friedman, pairwise, nemenyi) and ``failures`` (the error rows' image, method and message).
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
            "label": info.label, "unit": info.unit, "direction": info.direction, "n_images": n_ranked,
            "methods": ranked, "nemenyi_cd": cd,
        }
        summary["tests"][metric] = {
            "n_images": n_ranked,
            "friedman": stats.friedman(table, alpha),
            "pairwise": stats.pairwise_wilcoxon(table, ranked, info.direction, alpha),
            "nemenyi": {"alpha": alpha, "q_alpha": stats.NEMENYI_Q_005.get(len(ranked)), "cd": cd},
        }

    _add_rank_cis(summary, rank_tables, n_boot, np.random.default_rng(seed))
    for name, entry in summary["methods"].items():
        per_metric = [r for r in entry["ranks"].values() if r["mean_rank"] is not None]
        if per_metric:
            entry["mean_rank"] = float(np.mean([r["mean_rank"] for r in per_metric]))
            entry["win_rate"] = float(np.mean([r["win_rate"] for r in per_metric]))

    errors = rows[rows["status"] == "error"]
    summary["failures"] = [
        {"image_id": str(r.image_id), "method": str(r.method), "error": None if pd.isna(r.error) else str(r.error)}
        for r in errors.sort_values(["image_id", "method"]).itertuples()
    ]
    summary["n_failed_images"] = int(errors["image_id"].nunique())
    return _jsonable(summary)


def _add_rank_cis(summary: dict, rank_tables: dict, n_boot: int, rng: np.random.Generator) -> None:
    """Bootstrap CIs of every per-metric mean rank and of each method's overall mean rank, from shared resamples."""
    if not rank_tables:
        return
    metrics = list(rank_tables)
    samples = stats.bootstrap_means([rank_tables[m][1] for m in metrics], n_boot, rng)
    overall: dict[str, list[np.ndarray]] = {}
    for metric, boot in zip(metrics, samples):
        for j, name in enumerate(rank_tables[metric][0]):
            entry = summary["methods"][name]["ranks"][metric]
            if entry["mean_rank"] is None:
                continue
            entry["mean_rank_ci95"] = list(stats.percentile_ci(boot[:, j]))
            overall.setdefault(name, []).append(boot[:, j])
    for name, columns in overall.items():
        with np.errstate(invalid="ignore"):
            summary["methods"][name]["mean_rank_ci95"] = list(stats.percentile_ci(np.nanmean(columns, axis=0)))


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
        return ["no job.yaml"]
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
    """Show the seed's Table I beside ours: same settings, and at least one of its two columns ranked."""
    ranked = any(metric in SEED_TABLE_I["occlusion"] for metric in summary["metrics"])
    return ranked and bool(summary.get("seed_settings", {}).get("matches"))


def status_line(summary: dict) -> str:
    n, expected = summary["n_images"], summary.get("n_expected")
    state = "complete" if summary.get("complete") else "partial: still running, interrupted or failed"
    of = f" of {expected}" if expected is not None else ""
    return f"{n}{of} images ({state})"


def render_table(summary: dict) -> Table:
    """The ranking as a rich table, best method first (each CI under its value, so it fits 80 columns)."""
    table = Table(title=f"Method ranking — {status_line(summary)}", title_justify="left")
    table.add_column("Method", min_width=9)  # the only column that may wrap
    table.add_column("n ok", justify="right", no_wrap=True)
    table.add_column("n\nfailed", justify="right", no_wrap=True)
    table.add_column("Mean rank\n[95% CI]", justify="right", no_wrap=True)
    table.add_column("Win\nrate", justify="right")
    for info in summary["metrics"].values():
        table.add_column(f"{metric_title(info)}\nmedian [95% CI]", justify="right", no_wrap=True)
    for name in ordered_methods(summary):
        entry = summary["methods"][name]
        rank = fmt_rank(entry["mean_rank"], entry["mean_rank_ci95"]).replace(" [", "\n[")
        medians = [fmt_ci(entry.get(m, {}).get("median"), entry.get(m, {}).get("ci95"), 3).replace(" [", "\n[")
                   for m in summary["metrics"]]
        table.add_row(entry["label"], str(entry["n_ok"]), str(entry["n_error"]), rank, fmt_rank(entry["win_rate"]),
                      *medians)
    return table


def render_markdown(summary: dict) -> str:
    """``summary.md``: a Table I with n and CIs (the seed's values beside ours when the settings match), the ranks
    per metric, the tests and the failures."""
    lines = [f"# xcv_batch summary{': ' + summary['job_name'] if summary.get('job_name') else ''}", ""]
    model = summary.get("model") or {}
    if model.get("arch"):
        lines.append(f"- Model: {model['arch']} (weights {model.get('weights')}) at {model.get('resolution')} px")
    if summary.get("fingerprint"):
        lines.append(f"- Job fingerprint: `{summary['fingerprint']}`")
    lines.append(f"- Images: {status_line(summary)}")
    lines.append(f"- 95% CIs: percentile bootstrap over images, {summary['n_boot']} resamples, seed {summary['seed']}")
    seed_settings = summary.get("seed_settings") or {}
    if seed_settings.get("differences"):
        lines.append("- Settings differ from the seed report's, so its Table I is not shown: "
                     + "; ".join(seed_settings["differences"]))
    lines += ["", "## Table I", ""]

    with_seed = _with_seed(summary)
    header = ["Method", "n ok", "n failed", "Mean rank [95% CI]", "Win rate"]
    for metric, info in summary["metrics"].items():
        header.append(f"{metric_title(info)} median [95% CI]")
        if with_seed and metric in SEED_TABLE_I["occlusion"]:
            header.append(f"{info['label']} seed (Table I)")
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for name in ordered_methods(summary):
        entry = summary["methods"][name]
        cells = [entry["label"], str(entry["n_ok"]), str(entry["n_error"]),
                 fmt_rank(entry["mean_rank"], entry["mean_rank_ci95"]), fmt_rank(entry["win_rate"])]
        for metric in summary["metrics"]:
            stat = entry.get(metric) or {}
            cells.append(fmt_ci(stat.get("median"), stat.get("ci95")))
            if with_seed and metric in SEED_TABLE_I["occlusion"]:
                seed_value = SEED_TABLE_I.get(name, {}).get(metric)
                cells.append("–" if seed_value is None else f"{seed_value:.4g}")
        lines.append(_md_row(cells))
    if with_seed:
        lines += ["", "Seed values: the seed report's Table I, one photo on its own machine; ours are medians over "
                      "the images above."]

    if summary["metrics"]:
        lines += ["", "## Mean rank per metric (1 = best)", ""]
        header = ["Method"] + [f"{info['label']} (n={info['n_images']})" for info in summary["metrics"].values()]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for name in ordered_methods(summary):
            ranks = summary["methods"][name]["ranks"]
            lines.append(_md_row([summary["methods"][name]["label"]] + [
                fmt_rank(ranks.get(m, {}).get("mean_rank"), ranks.get(m, {}).get("mean_rank_ci95"))
                for m in summary["metrics"]
            ]))
    for metric, skipped_why in summary.get("metrics_skipped", {}).items():
        lines += ["", f"Not ranked: {metric} ({skipped_why})."]

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

