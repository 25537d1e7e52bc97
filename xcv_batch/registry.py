"""The one mechanism under the package's registries (methods, metrics): specs by name, each registered once, the
built-in ones registered on first use, and code named as ``"module:Name"`` and imported only when asked for.

Torch-free: validating a job and summarising results read the registries without importing a model.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any, Generic, Iterator, TypeVar

Spec = TypeVar("Spec")


def check_reference(kind: str, name: str, field: str, reference: str) -> None:
    """``ValueError`` unless ``reference`` reads ``"module:Name"``."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"{kind} {name!r}: {field} must be 'module:Name', got {reference!r}")


def reference_module(reference: str, package: str) -> str:
    """The absolute module of ``"module:Name"``; a module starting with ``.`` is relative to ``package``."""
    return importlib.util.resolve_name(reference.partition(":")[0], package)


def load_reference(reference: str, package: str) -> Any:
    """What ``"module:Name"`` names (imports its module)."""
    return getattr(importlib.import_module(reference_module(reference, package)), reference.partition(":")[2])


class Registry(Generic[Spec]):
    """Specs with a ``name``, in registration order. ``builtins`` is the module whose import registers the built-in
    ones; every lookup imports it first, so a registry is never read half-filled."""

    def __init__(self, kind: str, builtins: str):
        self.kind = kind
        self._builtins = builtins
        self._loaded = False
        self._specs: dict[str, Spec] = {}

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so the registrations that the import makes do not import it again
            try:
                importlib.import_module(self._builtins)
            except BaseException:
                self._loaded = False
                raise

    def register(self, spec: Spec) -> Spec:
        """Add ``spec``; a name is registered once."""
        self._load_builtins()
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str) -> Spec:
        """Remove ``name`` (for tests that register one of their own); returns its spec."""
        return self._specs.pop(name)

    @contextlib.contextmanager
    def registered(self, spec: Spec) -> Iterator[Spec]:
        """``spec`` registered while the block runs."""
        self.register(spec)
        try:
            yield spec
        finally:
            self.unregister(spec.name)

    def get(self, name: str) -> Spec:
        """The spec registered as ``name`` (KeyError when none is)."""
        self._load_builtins()
        return self._specs[name]

    def specs(self) -> tuple[Spec, ...]:
        self._load_builtins()
        return tuple(self._specs.values())

    def names(self) -> tuple[str, ...]:
        self._load_builtins()
        return tuple(self._specs)
