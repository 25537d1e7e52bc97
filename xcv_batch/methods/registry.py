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
* ``differentiates`` — whether its passes differentiate the model; ``stochastic`` — whether its seeds change its map.

The built-in methods register when ``xcv_batch.methods.settings`` is imported; every lookup here imports it first.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

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

    def __post_init__(self) -> None:
        module, _, cls = self.implementation.partition(":")
        if not module or not cls:
            raise ValueError(f"method {self.name!r}: implementation must be 'module:Class', got {self.implementation!r}")

    @property
    def module(self) -> str:
        """The absolute name of the implementation's module."""
        return importlib.util.resolve_name(self.implementation.split(":")[0], __package__)

    def load(self) -> type:
        """The implementation class (imports its module, and with it torch)."""
        return getattr(importlib.import_module(self.module), self.implementation.split(":")[1])

    def load_oracle(self) -> Callable:
        """The reference function named by ``oracle`` (imports its module)."""
        module, _, function = self.oracle.partition(":")
        return getattr(importlib.import_module(importlib.util.resolve_name(module, __package__)), function)

    def bind(self, cls: type) -> type:
        """Give the implementation class the spec's name, settings type, ``stochastic`` and ``differentiates`` as
        class attributes (what code holding a method object reads)."""
        cls.name = self.name
        cls.settings_type = self.settings
        cls.stochastic = self.stochastic
        cls.differentiates = self.differentiates
        return cls


_REGISTRY: dict[str, MethodSpec] = {}


def _builtins() -> None:
    importlib.import_module(f"{__package__}.settings")  # registers the built-in methods on first import


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec``; a name is registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove the method ``name`` (for tests that register a method of their own); returns its spec."""
    return _REGISTRY.pop(name)


@contextlib.contextmanager
def registered(spec: MethodSpec) -> Iterator[MethodSpec]:
    """``spec`` registered while the block runs."""
    _builtins()
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def method_spec(name: str) -> MethodSpec:
    """The spec registered as ``name`` (KeyError when none is)."""
    _builtins()
    return _REGISTRY[name]


def method_specs() -> tuple[MethodSpec, ...]:
    """Every registered spec, in registration order."""
    _builtins()
    return tuple(_REGISTRY.values())


def spec_of_class(module: str, qualname: str) -> MethodSpec | None:
    """The spec whose implementation is ``module:qualname``, if one is registered."""
    _builtins()
    return next((s for s in _REGISTRY.values() if s.module == module and s.implementation.split(":")[1] == qualname),
                None)


def method_names() -> tuple[str, ...]:
    _builtins()
    return tuple(_REGISTRY)


class RegistryView(Mapping):
    """A read-only, always current ``name → spec.<field>`` mapping over the registry (``METHOD_SETTINGS`` etc.)."""

    def __init__(self, field: str):
        self._field = field

    def __getitem__(self, name: str):
        _builtins()
        return getattr(_REGISTRY[name], self._field)

    def __iter__(self):
        _builtins()
        return iter(tuple(_REGISTRY))

    def __len__(self) -> int:
        _builtins()
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"RegistryView({self._field!r}, {dict(self)!r})"
