"""Which kind of model ``model.arch`` names (torchvision, ``timm:``, ``package.module:callable``, or any other kind
registered in :mod:`.kinds`), and what building one gives back. Each kind's builder is a module with the same three
functions:

- ``check(name)``: the name exists (cheap; no network is built), else a one-line ``ConfigError``;
- ``build(name, weights, seed, resolution, pinned=None) -> BuiltModel``: the network with the weights loaded (a
  weights file from ``pinned``'s bytes when given: :mod:`.pinned`);
- ``describe(name, weights, resolution) -> (Preprocessing | None, class names | None)``: what ``build`` would give
  for preprocessing and class names, without building it (the driver's Zarr attributes).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from torch import nn

from ..errors import ConfigError
from .kinds import kinds_text, model_kind
from .preprocessing import Preprocessing


@dataclass
class BuiltModel:
    net: nn.Module
    #: the input transform the weights imply, at the job's resolution; None when they say nothing (ImageNet's then)
    preprocessing: Preprocessing | None
    #: class names from the weights' metadata, if they have any
    categories: tuple[str, ...] | None
    #: how the weights are described in the provenance (an enum member, a file's absolute path, none, …)
    weights: str


def source_of(arch: str) -> tuple[ModuleType, str]:
    """The module that builds ``arch``, and the name to hand it (``timm:resnet18`` → the timm module, ``resnet18``)."""
    kind = model_kind(arch)
    if kind is None:
        raise ConfigError("model.arch", f"'{arch}' is neither {kinds_text('nor')}")
    return kind.load(), kind.name_in(arch)
