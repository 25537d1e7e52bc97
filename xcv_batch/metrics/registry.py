"""The metric registry: one :class:`MetricSpec` per metric, and the rankable columns its metrics write.

Torch-free, so that validating a job (config) and summarising results (``summarize``, which never imports torch)
read the same registry as the worker. The implementation (torch) is named as ``"module:Class"`` and imported only when
a job evaluates the metric (:meth:`MetricSpec.build`).

A spec is everything the rest of the package knows about a metric:

* ``name`` — its key under ``metrics:`` in a job file (Max-Sensitivity's is the top-level ``sensitivity:``, see
  ``job_key``), and of its cost column ``<name>_seconds`` (the batch's time for it ÷ its images);
* ``settings`` — a frozen dataclass of its settings with an optional ``check()`` raising ``ConfigError`` (or, for a
  switch such as localisation's ``auto | true | false``, the type of its value), and ``default``, its value when a
  job does not name it (None: off); ``doc`` — the meaning of a switch's job key;
* ``columns`` — the Parquet columns it writes, each a :class:`MetricInfo` (label, unit, which way is better,
  family);
* ``passes`` — the model passes it costs per image and method, for ``run --dry-run`` and the progress weights;
* ``implementation`` — ``"module:Class"`` of its :class:`~xcv_batch.metrics.base.Metric`; a module that starts with
  ``.`` is relative to ``xcv_batch.metrics``; ``uses_masks`` — whether it reads ground-truth masks.

``summarize`` ranks every numeric column registered here and ignores the others (``target_prob``, ``index``, the
``*_seconds`` costs, per-method diagnostics such as ``ig_completeness_gap`` …). Only quality enters a rank. Time is a
cost, not a quality, and ``attr_seconds`` is a batch's time ÷ its images (every image of a batch holds the same
value), so it is reported as throughput beside the ranking, never ranked or tested.

The built-in metrics register when ``xcv_batch.metrics.settings`` is imported; every lookup here imports it first.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

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

    def __post_init__(self) -> None:
        if self.direction not in ("lower", "higher"):
            raise ValueError(f"direction of metric {self.name!r} must be 'lower' or 'higher', got {self.direction!r}")


def metric_title(info: Mapping) -> str:
    """A metric's label with its unit, for table headers and axes; ``info`` is a summary's entry for the metric."""
    return f"{info['label']} ({info['unit']})" if info["unit"] else info["label"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric, as the registry knows it (see the module docstring)."""

    name: str
    settings: Any
    columns: tuple[MetricInfo, ...]
    implementation: str
    default: Any = None
    job_key: str = ""
    uses_masks: bool = False
    #: what its job key means where ``settings`` is no dataclass (a settings dataclass's docstring says it)
    doc: str = ""
    #: the model passes it costs per image and method, from its settings and the method's ``Passes`` for one
    #: explanation (None: no passes of its own); ``run --dry-run`` and the progress weights add them up
    passes: Callable[[Any, Any], Any] | None = None

    def __post_init__(self) -> None:
        module, _, cls = self.implementation.partition(":")
        if not module or not cls:
            raise ValueError(f"metric {self.name!r}: implementation must be 'module:Class', got {self.implementation!r}")
        if not self.job_key:
            object.__setattr__(self, "job_key", f"metrics.{self.name}")
        object.__setattr__(self, "columns", tuple(self.columns))

    @property
    def cost_column(self) -> str:
        """The column of its cost: the batch's seconds for it ÷ the batch's images."""
        return f"{self.name}_seconds"

    @property
    def in_metrics_section(self) -> bool:
        """Whether its job key sits under ``metrics:`` (Max-Sensitivity's does not)."""
        return self.job_key == f"metrics.{self.name}"

    @property
    def module(self) -> str:
        """The absolute name of the implementation's module."""
        return importlib.util.resolve_name(self.implementation.split(":")[0], __package__)

    def load(self) -> type:
        """The implementation class (imports its module, and with it torch)."""
        return getattr(importlib.import_module(self.module), self.implementation.split(":")[1])

    def build(self, settings: Any, context: Any):
        """The implementation built for one worker: ``Class(settings, context)``, named after the spec."""
        metric = self.load()(settings, context)
        metric.name = self.name
        return metric


_SPECS: dict[str, MetricSpec] = {}
_METRICS: dict[str, MetricInfo] = {}


def _builtins() -> None:
    importlib.import_module(f"{__package__}.settings")  # registers the built-in metrics on first import


def register(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` and its columns; a name, and a column, is registered once."""
    _builtins()
    if spec.name in _SPECS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    taken = [c.name for c in spec.columns if any(c.name in [o.name for o in s.columns] for s in _SPECS.values())]
    if taken:
        raise ValueError(f"metric {spec.name!r}: column {taken[0]!r} is already written by another metric")
    _SPECS[spec.name] = spec
    for column in spec.columns:
        _METRICS[column.name] = column
    return spec


def unregister(name: str) -> MetricSpec:
    """Remove the metric ``name`` and its columns (for tests that register a metric of their own); returns its spec."""
    spec = _SPECS.pop(name)
    for column in spec.columns:
        _METRICS.pop(column.name, None)
    return spec


@contextlib.contextmanager
def registered(spec: MetricSpec) -> Iterator[MetricSpec]:
    """``spec`` registered while the block runs."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def metric_spec(name: str) -> MetricSpec:
    """The spec registered as ``name`` (KeyError when none is)."""
    _builtins()
    return _SPECS[name]


def metric_specs() -> tuple[MetricSpec, ...]:
    """Every registered spec, in registration order: the order the runner evaluates them in."""
    _builtins()
    return tuple(_SPECS.values())


def enabled_metrics(sensitivity: Any, metrics: Mapping[str, Any]) -> list[tuple[MetricSpec, Any]]:
    """The registered metrics a job turns on, in registration order, with their settings. ``sensitivity`` is the
    job's top-level ``sensitivity:`` (Max-Sensitivity), ``metrics`` its ``metrics:`` section; None or False is off."""
    enabled = []
    for spec in metric_specs():
        settings = metrics.get(spec.name, spec.default) if spec.in_metrics_section else sensitivity
        if settings is not None and settings is not False:
            enabled.append((spec, settings))
    return enabled


def register_metric(name: str, direction: Direction, label: str, unit: str = "", family: str = "other") -> MetricInfo:
    """Declare the Parquet column ``name`` a rankable metric without a spec (a column written elsewhere);
    registering a name again replaces its entry."""
    info = MetricInfo(name, direction, label, unit, family)
    _METRICS[name] = info
    return info


def metric_info(name: str) -> MetricInfo:
    """The registered entry of the column ``name`` (KeyError if it is not a metric)."""
    _builtins()
    return _METRICS[name]


def registered_metrics() -> tuple[MetricInfo, ...]:
    """Every registered metric column, in registration order (the order of table columns)."""
    _builtins()
    return tuple(_METRICS.values())


def metrics_in(columns: Iterable[str]) -> list[str]:
    """The registered metric columns among ``columns``, in registration order."""
    _builtins()
    present = set(columns)
    return [name for name in _METRICS if name in present]


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
