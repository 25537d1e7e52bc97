"""The model-kind registry: one :class:`ModelKindSpec` per kind of ``model.arch`` (torchvision, ``timm:``,
``package.module:callable``).

Torch-free: the job's validation (``config``) reads the kinds to check how an arch is written, and the models package
reads them to build one; the builder module (torch) is named and imported only when a model is checked or built. A
spec is everything the rest of the package knows about a kind:

* ``name`` — what it is called in messages and tests;
* ``builder`` — the module with ``check(name)``, ``build(name, weights, seed, resolution, pinned=None) ->
  BuiltModel`` and ``describe(name, weights, resolution)`` (see :mod:`.source`); a module starting with ``.`` is
  relative to ``xcv_batch.models``;
* ``written`` — how such an arch is written, for the messages that list the kinds ("timm:<name>");
* ``prefix`` — ``"timm:"``: an arch that starts with it is of this kind, and the builder gets the rest
  (``timm:resnet18`` → ``resnet18``); "" for the two kinds told apart by their syntax alone, torchvision names (no
  colon) and ``package.module:callable``, whose builders get the whole arch;
* ``matches(arch)`` — how a kind without a prefix recognises its archs;
* ``example`` — an arch of this kind, for the message about a prefix with no name after it;
* ``user_code`` — whether the arch names the user's module, which building imports and runs (``submit`` says so).

Kinds with a prefix are asked first, then the others, each in registration order. The built-in kinds register at
the end of this module.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

from ..registry import Registry

#: ``package.module:callable`` (a dotted path of identifiers on each side of the colon).
CALLABLE_ARCH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class ModelKindSpec:
    """One kind of model, as the registry knows it (see the module docstring)."""

    name: str
    builder: str
    written: str
    prefix: str = ""
    matches: Optional[Callable[[str], bool]] = None
    example: str = ""
    user_code: bool = False

    def __post_init__(self) -> None:
        if bool(self.prefix) == (self.matches is not None):
            raise ValueError(f"model kind {self.name!r}: give either a prefix or matches, not both or neither")

    def accepts(self, arch: str) -> bool:
        return arch.startswith(self.prefix) if self.prefix else bool(self.matches(arch))

    def name_in(self, arch: str) -> str:
        """What the builder gets for ``arch``: the arch without the prefix."""
        return arch[len(self.prefix):]

    def load(self) -> ModuleType:
        """The builder module (imports it, and with it torch)."""
        return importlib.import_module(importlib.util.resolve_name(self.builder, __package__))


_REGISTRY: Registry[ModelKindSpec] = Registry("model kind", __name__)  # the built-ins register below

register = _REGISTRY.register
unregister = _REGISTRY.unregister
registered = _REGISTRY.registered
model_kind_spec = _REGISTRY.get
model_kind_specs = _REGISTRY.specs


def model_kind(arch: str) -> ModelKindSpec | None:
    """The kind of ``arch``: the first with a prefix it starts with, else the first other that matches it."""
    specs = model_kind_specs()
    return next((spec for spec in specs if spec.prefix and spec.accepts(arch)),
                next((spec for spec in specs if not spec.prefix and spec.accepts(arch)), None))


def kinds_text(conjunction: str) -> str:
    """The ways to write an arch, for messages: "a torchvision classifier, timm:<name>, nor package.module:callable"
    (``conjunction`` "nor") or "… timm:<name> or package.module:callable" ("or")."""
    written = [spec.written for spec in model_kind_specs()]
    if len(written) == 1:
        return written[0]
    comma = "," if conjunction == "nor" else ""
    return f"{', '.join(written[:-1])}{comma} {conjunction} {written[-1]}"


register(ModelKindSpec(name="torchvision", builder=".torchvision_models", written="a torchvision classifier",
                       matches=lambda arch: ":" not in arch))
register(ModelKindSpec(name="timm", builder=".timm_models", written="timm:<name>", prefix="timm:",
                       example="timm:resnet18"))
register(ModelKindSpec(name="callable", builder=".callable_models", written="package.module:callable",
                       matches=CALLABLE_ARCH.match, user_code=True))
