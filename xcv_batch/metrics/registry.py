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
  ``.`` is relative to ``xcv_batch.metrics``; ``uses_masks`` — whether it reads ground-truth masks;
* ``masks_required(settings)`` — whether, with these settings, every image must have a mask (an image without one
  is then a failed row, and the Python API refuses a call without one);
* ``hashed_when_off`` — whether its ``null`` (off) still enters the job's fingerprint: True for the metrics that
  existed before off metrics left it, so that their runs still resume; a metric added later leaves it False.

``summarize`` ranks every numeric column registered here and ignores the others (``target_prob``, ``index``, the
``*_seconds`` costs, per-method diagnostics such as ``ig_completeness_gap`` …). Only quality enters a rank. Time is a
cost, not a quality, and ``attr_seconds`` is a batch's time ÷ its images (every image of a batch holds the same
value), so it is reported as throughput beside the ranking, never ranked or tested.

The built-in metrics register when ``xcv_batch.metrics.settings`` is imported; every lookup here imports it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from ..methods.registry import DiagnosticInfo, method_diagnostics
from ..registry import Registry, check_reference, load_reference, reference_module

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
    masks_required: Callable[[Any], bool] | None = None
    hashed_when_off: bool = False

    def __post_init__(self) -> None:
        check_reference("metric", self.name, "implementation", self.implementation)
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
        return reference_module(self.implementation, __package__)

    def load(self) -> type:
        """The implementation class (imports its module, and with it torch)."""
        return load_reference(self.implementation, __package__)

    def build(self, settings: Any, context: Any):
        """The implementation built for one worker: ``Class(settings, context)``, named after the spec."""
        metric = self.load()(settings, context)
        metric.name = self.name
        return metric


class _MetricRegistry(Registry[MetricSpec]):
    """The metric specs, and beside them every rankable column, each written by one metric."""

    def __init__(self) -> None:
        super().__init__("metric", f"{__package__}.settings")  # settings.py registers the built-ins
        self.columns: dict[str, MetricInfo] = {}

    def register(self, spec: MetricSpec) -> MetricSpec:
        """Add ``spec`` and its columns; a name, and a column, is registered once."""
        written = {column.name for other in self.specs() for column in other.columns}
        taken = [column.name for column in spec.columns if column.name in written]
        if taken and spec.name not in self.names():  # a name registered twice is the base's error
            raise ValueError(f"metric {spec.name!r}: column {taken[0]!r} is already written by another metric")
        super().register(spec)
        for column in spec.columns:
            self.columns[column.name] = column
        return spec

    def unregister(self, name: str) -> MetricSpec:
        """Remove the metric ``name`` and its columns; returns its spec."""
        spec = super().unregister(name)
        for column in spec.columns:
            self.columns.pop(column.name, None)
        return spec

    def column_infos(self) -> dict[str, MetricInfo]:
        self._load_builtins()
        return self.columns


_REGISTRY = _MetricRegistry()

register = _REGISTRY.register
unregister = _REGISTRY.unregister
registered = _REGISTRY.registered
metric_spec = _REGISTRY.get
metric_specs = _REGISTRY.specs


def enabled_metrics(sensitivity: Any, metrics: Mapping[str, Any]) -> list[tuple[MetricSpec, Any]]:
    """The registered metrics a job turns on, in registration order, with their settings. ``sensitivity`` is the
    job's top-level ``sensitivity:`` (Max-Sensitivity), ``metrics`` its ``metrics:`` section; None or False is off."""
    enabled = []
    for spec in metric_specs():
        settings = metrics.get(spec.name, spec.default) if spec.in_metrics_section else sensitivity
        if settings is not None and settings is not False:
            enabled.append((spec, settings))
    return enabled


def masks_required_by(sensitivity: Any, metrics: Mapping[str, Any]) -> MetricSpec | None:
    """The first metric the job turns on with settings that need a mask for every image; None when none does."""
    return next((spec for spec, settings in enabled_metrics(sensitivity, metrics)
                 if spec.masks_required is not None and spec.masks_required(settings)), None)


def metric_info(name: str) -> MetricInfo:
    """The registered entry of the column ``name`` (KeyError if it is not a metric)."""
    return _REGISTRY.column_infos()[name]


def registered_metrics() -> tuple[MetricInfo, ...]:
    """Every registered metric column, in registration order (the order of table columns)."""
    return tuple(_REGISTRY.column_infos().values())


def metrics_in(columns: Iterable[str]) -> list[str]:
    """The registered metric columns among ``columns``, in registration order."""
    present = set(columns)
    return [name for name in _REGISTRY.column_infos() if name in present]


# --- costs and diagnostics: shown, never ranked ---------------------------------------------------------------------

#: Cost columns: batch time ÷ images, identical for every image of a batch (no per-image spread to test).
COST_COLUMNS = ("attr_seconds",)


class _Diagnostics(Mapping):
    """Column → :class:`~xcv_batch.methods.registry.DiagnosticInfo` of every registered method, read from the method
    specs when asked (methods registered later included)."""

    def __getitem__(self, name: str) -> DiagnosticInfo:
        return method_diagnostics()[name]

    def __iter__(self):
        return iter(method_diagnostics())

    def __len__(self) -> int:
        return len(method_diagnostics())


#: The per-method diagnostic columns, each declared by its method's spec (``MethodSpec.diagnostics``).
DIAGNOSTICS: Mapping[str, DiagnosticInfo] = _Diagnostics()
