"""``model.arch: resnet18`` (any torchvision classification builder): its weights, preprocessing and class names."""

from __future__ import annotations

import os
import urllib.error

import torchvision
from torch import nn

from ..errors import ConfigError, ModelError, cli_or_python
from .pinned import PinnedWeights
from .preprocessing import Preprocessing, imagenet_preprocessing, torchvision_preprocessing
from .source import BuiltModel
from .state_dict import head_size, last_linear_name, load_exactly, load_state_dict_file, seeded


def classification_archs() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check(arch: str) -> None:
    """``arch`` names a torchvision classifier (listing them builds nothing)."""
    if arch not in classification_archs():
        raise ConfigError("model.arch", f"'{arch}' is not a torchvision classifier (e.g. resnet18, resnet50, vgg19), "
                                        "timm:<name> or package.module:callable")


def _weights_enum(arch: str):
    try:
        return torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None


def _named(enum, weights: str):
    """The weights enum member ``weights`` names (DEFAULT included), or None."""
    if enum is None:
        return None
    if weights == "DEFAULT":
        return enum.DEFAULT
    return enum[weights] if weights in enum.__members__ else None


def _preprocessing(weights, resolution: int) -> Preprocessing:
    return torchvision_preprocessing(weights, resolution) if weights is not None else imagenet_preprocessing(resolution)


def build(arch: str, weights: str, seed: int, resolution: int,
          pinned: PinnedWeights | None = None) -> BuiltModel:
    check(arch)
    builder = torchvision.models.get_model_builder(arch)
    enum = _weights_enum(arch)
    default = enum.DEFAULT if enum is not None else None
    # Random and file weights keep the preprocessing of the arch's default weights: the transform it is trained with.
    if weights.lower() == "none":
        with seeded(seed):
            net = builder(weights=None)
        return BuiltModel(net, _preprocessing(default, resolution), None, "none")

    chosen = _named(enum, weights)
    if chosen is not None:
        try:
            net = builder(weights=chosen)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise ModelError(
                f"model.weights: could not fetch {arch} weights {weights} from {chosen.url} ({err}). "
                "Offline? Put the file in torch's hub cache (~/.cache/torch/hub/checkpoints), pass a local "
                "state_dict path, or " + cli_or_python("run with --set model.weights=none", "set model.weights to 'none'")
                + " (random init from the job seed)."
            ) from err
        categories = tuple(chosen.meta.get("categories") or ()) or None
        return BuiltModel(net, _preprocessing(chosen, resolution), categories, f"{enum.__name__}.{chosen.name}")

    if pinned is not None or os.path.exists(weights):
        state = load_state_dict_file(weights, pinned)
        with seeded(seed):  # the probe only names the head; seeded, so that the global RNG is left alone
            classes = head_size(state, last_linear_name(builder(weights=None)))
            net: nn.Module = builder(weights=None, **({"num_classes": classes} if classes else {}))
        load_exactly(net, state, f"model.weights: {weights} does not fit {arch}")
        return BuiltModel(net, _preprocessing(default, resolution), None, os.path.abspath(weights))

    # DEFAULT is an alias among the members: each name once, DEFAULT first
    names = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__])) if enum is not None else "(none published)"
    raise ConfigError(
        "model.weights",
        f"'{weights}' is neither a torchvision weights name for {arch} ({names}), 'none', nor an existing file",
    )


def describe(arch: str, weights: str, resolution: int) -> tuple[Preprocessing, tuple[str, ...] | None]:
    """What :func:`build` gives for preprocessing and class names, without building the network."""
    enum = _weights_enum(arch)
    chosen = _named(enum, weights) if weights.lower() != "none" else None
    if chosen is not None:
        return _preprocessing(chosen, resolution), tuple(chosen.meta.get("categories") or ()) or None
    return _preprocessing(enum.DEFAULT if enum is not None else None, resolution), None
