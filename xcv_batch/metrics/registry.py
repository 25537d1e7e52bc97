"""The registry of rankable metrics: which Parquet columns are metrics, which way is better, and which family each
belongs to.

``summarize`` ranks every numeric column registered here and ignores the others (``target_prob``, ``index``, the
``*_seconds`` costs, per-method diagnostics such as ``ig_completeness_gap`` …), so a new metric joins the rankings,
tests and report by one :func:`register_metric` line at the bottom of this file.

Only quality enters a rank. Time is a cost, not a quality, and ``attr_seconds`` is a batch's time ÷ its images (every
image of a batch holds the same value), so it is reported as throughput beside the ranking, never ranked or tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class MetricInfo:
    """How to rank and show one metric column."""

    name: str
    direction: Direction
    label: str
    unit: str = ""
    #: what the metric measures (Quantus' categories): the default rank gives every family present the same weight
    family: str = "other"


def metric_title(info: Mapping) -> str:
    """A metric's label with its unit, for table headers and axes; ``info`` is a summary's entry for the metric."""
    return f"{info['label']} ({info['unit']})" if info["unit"] else info["label"]


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, direction: Direction, label: str, unit: str = "", family: str = "other") -> MetricInfo:
    """Declare the Parquet column ``name`` a metric; registering a name again replaces its entry."""
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction of metric {name!r} must be 'lower' or 'higher', got {direction!r}")
    info = MetricInfo(name, direction, label, unit, family)
    _METRICS[name] = info
    return info


def metric_info(name: str) -> MetricInfo:
    """The registered entry of ``name`` (KeyError if it is not a metric)."""
    return _METRICS[name]


def registered_metrics() -> tuple[MetricInfo, ...]:
    """Every registered metric, in registration order (the order of table columns)."""
    return tuple(_METRICS.values())


def metrics_in(columns: Iterable[str]) -> list[str]:
    """The registered metrics among ``columns``, in registration order."""
    present = set(columns)
    return [name for name in _METRICS if name in present]


# The seed report's quality column (Table I); its other column, time, is a cost (see the module docstring).
register_metric("sensitivity_max", "lower", "Max-Sensitivity", family="robustness")
# Every metric the worker can write is declared here, not only next to the code that computes it: `summarize` runs in
# a process that never imports the torch-side modules (faithfulness.py, localisation.py, quality.py), so a
# registration made there alone would leave its column unranked. Those modules may register again with the same
# values; a column that is absent from a run is simply not ranked.
register_metric("infidelity", "lower", "Infidelity", family="faithfulness")
register_metric("deletion_auc", "lower", "Deletion AUC", family="faithfulness")
register_metric("insertion_auc", "higher", "Insertion AUC", family="faithfulness")
register_metric("pointing_game", "higher", "Pointing game", family="localisation")
register_metric("relevance_mass", "higher", "Relevance mass", family="localisation")
register_metric("relevance_rank", "higher", "Relevance rank", family="localisation")
# Similarity of a map to the map of a randomised model (Adebayo et al. 2018): a map that survives randomisation does
# not depend on what the model learned, so lower is better.
register_metric("randomisation_spearman", "lower", "Randomisation Spearman", family="randomisation")
register_metric("randomisation_ssim", "lower", "Randomisation SSIM", family="randomisation")
# Complexity (complexity.py): a concentrated map is easier to read; an all-zero map has neither value.
register_metric("sparseness", "higher", "Sparseness", family="complexity")
register_metric("effective_complexity", "lower", "Effective complexity", "px", family="complexity")


# --- costs and diagnostics: shown, never ranked ---------------------------------------------------------------------

#: Cost columns: batch time ÷ images, identical for every image of a batch (no per-image spread to test).
COST_COLUMNS = ("attr_seconds",)


@dataclass(frozen=True)
class DiagnosticInfo:
    """A per-method check of a method's own correctness: reported and flagged above ``tolerance``, not ranked."""

    name: str
    method: str
    label: str
    tolerance: float
    meaning: str


DIAGNOSTICS: dict[str, DiagnosticInfo] = {
    # Sundararajan et al. 2017 check completeness and raise the step count until the sum is within 5 %.
    "ig_completeness_gap": DiagnosticInfo(
        "ig_completeness_gap", "integrated_gradients", "IG completeness gap", 0.05,
        "|Σ attribution − (f(x) − f(baseline))| ÷ |f(x) − f(baseline)|: above the tolerance, n_steps is too few"),
}
