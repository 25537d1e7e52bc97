"""The registry of rankable metrics: which Parquet columns are metrics, and which way is better.

``summarize`` ranks every numeric column registered here and ignores the others (``target_prob``, ``index``, the
``*_seconds`` costs of metrics …), so a new metric joins the rankings, tests and report by one :func:`register_metric`
line at the bottom of this file.
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



def metric_title(info: Mapping) -> str:
    """A metric's label with its unit, for table headers and axes; ``info`` is a summary's entry for the metric."""
    return f"{info['label']} ({info['unit']})" if info["unit"] else info["label"]


_METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, direction: Direction, label: str, unit: str = "") -> MetricInfo:
    """Declare the Parquet column ``name`` a metric; registering a name again replaces its entry."""
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction of metric {name!r} must be 'lower' or 'higher', got {direction!r}")
    info = MetricInfo(name, direction, label, unit)
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


# The seed report's two columns (Table I).
register_metric("sensitivity_max", "lower", "Max-Sensitivity")
# Time is the attribution step alone: sensitivity_seconds is the cost of *measuring* the method (about n_perturb ×
# attr_seconds), so ranking it too would count speed twice.
register_metric("attr_seconds", "lower", "Time", "s")
# Every metric the worker can write is declared here, not only next to the code that computes it: `summarize` runs in
# a process that never imports the torch-side modules (faithfulness.py, localisation.py, quality.py), so a
# registration made there alone would leave its column unranked. Those modules may register again with the same
# values; a column that is absent from a run is simply not ranked.
register_metric("infidelity", "lower", "Infidelity")
register_metric("deletion_auc", "lower", "Deletion AUC")
register_metric("insertion_auc", "higher", "Insertion AUC")
register_metric("pointing_game", "higher", "Pointing game")
register_metric("relevance_mass", "higher", "Relevance mass")
register_metric("relevance_rank", "higher", "Relevance rank")
# Similarity of a map to the map of a randomised model (Adebayo et al. 2018): a map that survives randomisation does
# not depend on what the model learned, so lower is better.
register_metric("randomisation_spearman", "lower", "Randomisation Spearman")
register_metric("randomisation_ssim", "lower", "Randomisation SSIM")
