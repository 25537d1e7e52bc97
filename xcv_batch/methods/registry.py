"""The attribution-method registry: one :class:`MethodSpec` per method, registered beside its settings class.

Torch-free, so that validating a job (config), planning it (plan) and labelling its results read the same registry
without importing a model. The implementation (torch) is named as ``"module:Class"`` and imported only when a job
builds the method (``xcv_batch.methods.method_class``).

A spec is everything the rest of the package knows about a method:

* ``name`` — the key under ``methods:`` in a job file, the ``method`` column of the results;
* ``settings`` — a frozen dataclass of its settings, with an optional ``check()`` raising ``ConfigError``;
* ``label`` — its display name in summaries, reports and panels;
* ``passes(settings, height, width)`` — the rows one explanation of one image pushes through the model
  (:class:`Passes`: forward only, forward + backward, extra backwards of those rows);
* ``implementation`` — ``"module:Class"`` of its :class:`~xcv_batch.methods.base.AttributionMethod`; a module that
  starts with ``.`` is relative to ``xcv_batch.methods``;
* ``differentiates`` — whether its passes differentiate the model; ``stochastic`` — whether its seeds change its map;
* ``classifies`` — whether its first pass is the forward that picks each image's target (the images as they are,
  on the model the engine classifies with): it then hands that forward's outputs to the engine
  (``AttributionMethod.attribute_classifying``), which takes the targets and their probabilities from them instead
  of a forward of its own;
* ``signed`` — whether its maps take both signs (a panel draws them diverging around 0), or a function of its
  settings (as saved in OUT/job.yaml, a mapping) that says so; None: unknown, decided by a map's content;
* ``diagnostics`` — the row columns of its own per-image checks (:class:`DiagnosticInfo`), reported, never ranked;
* ``check_job(settings, job)`` — its checks against the rest of the job (e.g. the model's resolution), raising
  ``ConfigError`` with the full key, when the job loads;
* ``check_model`` — ``"module:function"`` of ``check(classifier, settings)``, its checks against the built model
  (e.g. that a layer exists), run by ``run --dry-run``'s probe as the run's build of the method would;
* ``unhashed`` — its settings keys that change how maps are computed, not what they are, left out of the job's
  fingerprint (so that ``--resume`` accepts a run made with another value);
* ``control`` — a control map that knows nothing about the model (``random``, ``edges``, ``centre``): every metric
  scores it as it scores a method, ``summarize`` measures each metric's power to rank the real methods above it, and
  it never enters the method ranking; its map is a function of the image alone (its seed, its pixels).

The built-in methods register when ``xcv_batch.methods.settings`` is imported; every lookup here imports it first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..registry import Registry, check_reference, load_reference, reference_module

#: A backward pass, in forwards of the same rows.
BACKWARD_COST = 2.0


@dataclass(frozen=True)
class Passes:
    """Rows through the model for one image: forward only, forward + backward, and extra backwards of those rows."""

    forward: int = 0
    forward_backward: int = 0
    extra_backward: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(self.forward + other.forward, self.forward_backward + other.forward_backward,
                      self.extra_backward + other.extra_backward)

    def times(self, factor: int) -> "Passes":
        return Passes(self.forward * factor, self.forward_backward * factor, self.extra_backward * factor)

    @property
    def rows(self) -> int:
        """Rows that go through the model's forward (what a forward hook sees)."""
        return self.forward + self.forward_backward

    @property
    def work(self) -> float:
        """Forward-equivalents."""
        return self.forward + (1 + BACKWARD_COST) * self.forward_backward + BACKWARD_COST * self.extra_backward

    def describe(self) -> str:
        parts = []
        if self.forward:
            parts.append(f"{self.forward:,} forward")
        if self.forward_backward:
            parts.append(f"{self.forward_backward:,} forward+backward")
        if self.extra_backward:
            parts.append(f"{self.extra_backward:,} extra backward")
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class DiagnosticInfo:
    """A method's check of its own correctness, as a row column: reported and flagged above ``tolerance``, not ranked.
    ``method`` is the name of the method whose spec declares it (filled in by the spec)."""

    name: str
    label: str
    tolerance: float
    meaning: str
    method: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method, as the registry knows it (see the module docstring)."""

    name: str
    settings: type
    label: str
    passes: Callable[[Any, int, int], Passes]
    implementation: str
    differentiates: bool = False
    stochastic: bool = False
    #: ``"module:function"`` of its per-image reference, ``oracle(net, x, target, settings) -> map`` on one (1, C, H,
    #: W) input (a module starting with ``.`` is relative to this package): the tests compare every deterministic
    #: method that names one with it, on stock networks ("" for none; stochastic methods have their own tests)
    oracle: str = ""
    signed: bool | Callable[[Mapping], bool] | None = None
    diagnostics: tuple[DiagnosticInfo, ...] = ()
    check_job: Callable[[Any, Any], None] | None = None
    #: ``"module:function"`` (imported only when a model is checked; "" for none)
    check_model: str = ""
    unhashed: tuple[str, ...] = ()
    #: a control map (random, edges, centre): blind to the model, scored by every metric, never ranked
    control: bool = False
    #: whether its copies may run a path of their own rather than ordinary passes of the model: the dry run's probe
    #: then builds the method and times its ``row_probe`` step along the path it will take
    own_path: bool = False
    #: whether its passes may run on a ``torch.compile``d model (``compute.compile``); False keeps it eager
    compilable: bool = True
    #: whether its first pass can stand in for the engine's classifying forward (``attribute_classifying``)
    classifies: bool = False

    def __post_init__(self) -> None:
        check_reference("method", self.name, "implementation", self.implementation)
        if self.oracle:
            check_reference("method", self.name, "oracle", self.oracle)
        if self.check_model:
            check_reference("method", self.name, "check_model", self.check_model)
        object.__setattr__(self, "diagnostics", tuple(
            dataclasses.replace(info, method=self.name) for info in self.diagnostics))
        object.__setattr__(self, "unhashed", tuple(self.unhashed))

    def is_signed(self, settings: Mapping | None = None) -> bool | None:
        """Whether its maps take both signs with ``settings`` (a mapping, as in OUT/job.yaml; None: the defaults)."""
        if callable(self.signed):
            return bool(self.signed(dict(settings or {})))
        return self.signed

    def load_check_model(self) -> Callable | None:
        """The function named by ``check_model`` (imports its module, and with it torch); None when it names none."""
        return load_reference(self.check_model, __package__) if self.check_model else None

    @property
    def module(self) -> str:
        """The absolute name of the implementation's module."""
        return reference_module(self.implementation, __package__)

    def load(self) -> type:
        """The implementation class (imports its module, and with it torch)."""
        return load_reference(self.implementation, __package__)

    def load_oracle(self) -> Callable:
        """The reference function named by ``oracle`` (imports its module)."""
        return load_reference(self.oracle, __package__)

    def bind(self, cls: type) -> type:
        """Give the implementation class the spec's name, settings type, ``stochastic``, ``differentiates``,
        ``control`` and ``classifies`` as class attributes (what code holding a method object reads)."""
        cls.name = self.name
        cls.settings_type = self.settings
        cls.stochastic = self.stochastic
        cls.differentiates = self.differentiates
        cls.control = self.control
        cls.classifies = self.classifies
        return cls


_REGISTRY: Registry[MethodSpec] = Registry("method", f"{__package__}.settings")  # settings.py registers the built-ins

register = _REGISTRY.register
unregister = _REGISTRY.unregister
registered = _REGISTRY.registered
method_spec = _REGISTRY.get
method_specs = _REGISTRY.specs
method_names = _REGISTRY.names


def spec_of_class(module: str, qualname: str) -> MethodSpec | None:
    """The spec whose implementation is ``module:qualname``, if one is registered."""
    return next((s for s in method_specs() if s.module == module and s.implementation.split(":")[1] == qualname),
                None)


def control_names() -> tuple[str, ...]:
    """The registered control maps, in registration order."""
    return tuple(spec.name for spec in method_specs() if spec.control)


def is_control(name: str) -> bool:
    """Whether ``name`` is a registered control map (False for an unknown name: it is not one)."""
    return name in control_names()


def method_diagnostics() -> dict[str, DiagnosticInfo]:
    """Every registered method's diagnostic columns: column → its :class:`DiagnosticInfo`."""
    return {info.name: info for spec in method_specs() for info in spec.diagnostics}


class RegistryView(Mapping):
    """A read-only, always current ``name → spec.<field>`` mapping over the registry (``METHOD_SETTINGS`` etc.)."""

    def __init__(self, field: str):
        self._field = field

    def __getitem__(self, name: str):
        return getattr(method_spec(name), self._field)

    def __iter__(self):
        return iter(method_names())

    def __len__(self) -> int:
        return len(method_names())

    def __repr__(self) -> str:
        return f"RegistryView({self._field!r}, {dict(self)!r})"
