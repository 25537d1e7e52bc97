"""A classifier ready for attribution, from a job's ``model`` keys or from any ``nn.Module`` a caller already has.

:func:`build_classifier` builds the network ``model.arch`` names (see :mod:`.source`: torchvision, ``timm:``,
``package.module:callable``) with its weights, then hands it to :func:`classifier_from_module`, which every caller
with its own module uses too: eval mode, frozen parameters, on the device, the number of classes from one blank
forward. Nothing method-specific is installed here (Guided Grad-CAM swaps the ReLUs of the network it is given).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelError, cli_or_python
from .layers import auto_target_layer, layer_candidates  # noqa: F401 - re-exported: scripts and tests import them here
from .preprocessing import Preprocessing, imagenet_preprocessing, preprocessing_from, with_overrides
from .pinned import PinnedWeights
from .source import source_of
from .state_dict import first_sentence

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A classifier ready for attribution: eval mode, on its device, parameters frozen."""

    arch: str
    net: nn.Module
    device: torch.device
    preprocessing: Preprocessing
    num_classes: int
    categories: tuple[str, ...] | None
    weights: str

    def category(self, index: int) -> str | None:
        if self.categories is None or not 0 <= index < len(self.categories):
            return None
        return self.categories[index]


def place_on_device(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` moved to ``device``, with channels_last weights on a GPU (cuDNN's fast layout)."""
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    return net


def resolve_device(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("compute.device", f"'{name}' asked for, but torch sees no CUDA device; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError("compute.device", f"'{name}' is not a torch device (auto, cpu, cuda, cuda:N)") from err


def check_arch(arch: str) -> None:
    """``arch`` names a model that exists (torchvision's list, timm's registry, an importable callable), without
    building it: the driver asks before starting workers."""
    source, name = source_of(arch)
    source.check(name)


def _blank_forward(net: nn.Module, arch: str, resolution: int, layer_name: str | None) -> tuple[int, tuple]:
    """(logit columns, ``layer_name``'s output shape or ``()``) of one forward of a blank image."""
    seen: list[tuple[int, ...]] = []
    hook = None
    if layer_name is not None:
        layer = dict(net.named_modules())[layer_name]
        hook = layer.register_forward_hook(lambda module, args, out: seen.append(tuple(getattr(out, "shape", ()))))
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    try:
        with torch.no_grad():
            logits = net(torch.zeros((1, 3, resolution, resolution), device=device, dtype=dtype))
    except Exception as err:  # noqa: BLE001 - any failure here means the model cannot run this job
        channels = _input_channels(net)
        if channels is not None and channels != 3:
            raise ModelError(f"model.arch: {arch} takes {channels}-channel inputs ({first_sentence(err)}); every "
                             "method explains RGB images, (N, 3, H, W): give the model a 3-channel first layer "
                             "or wrap it to map RGB to what it takes") from err
        raise ModelError(f"model.arch: {arch} cannot take {resolution} px inputs ({first_sentence(err)}); change "
                         + cli_or_python("model.resolution", "model.resolution (the Explainer's resolution=)")) from err
    finally:
        if hook is not None:
            hook.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ModelError(f"model.arch: {arch} returns {_describe_output(logits)}, not (batch, classes) logits; "
                         "wrap it in a module whose forward returns that tensor alone")
    return int(logits.shape[1]), (seen[0] if seen else ())


def _input_channels(net: nn.Module) -> int | None:
    """The input channels of the network's first convolution, None without one."""
    first = next((m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return None if first is None else int(first.in_channels)


def _describe_output(value) -> str:
    """What a forward returned, for a message: a tensor's shape, a mapping's keys, a sequence's length."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:5]) + (", …" if len(value) > 5 else "")
        return f"a {type(value).__name__} with keys {keys}" if value else f"an empty {type(value).__name__}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def check_forward(net: nn.Module, arch: str, resolution: int, layer_name: str | None = None) -> tuple[int, ...]:
    """One forward of a blank input at the job's resolution, before any image: an architecture that cannot take
    the resolution fails here with one line. Returns the shape of ``layer_name``'s output, if one is named (Guided
    Grad-CAM's maps; the method checks its layer so), else ``()``."""
    return _blank_forward(net, arch, resolution, layer_name)[1]


def as_float32(net: nn.Module, arch: str) -> nn.Module:
    """``net`` with its floating-point parameters and buffers in float32, the dtype every method computes in (inputs,
    baselines and perturbations are float32; ``compute.precision`` autocasts from there), with a warning line when
    they were another (a ``.double()`` or ``.half()`` model). A module on the meta device has no weights to cast or
    run: ModelError."""
    tensors = list(itertools.chain(net.parameters(), net.buffers()))
    if any(t.is_meta for t in tensors):
        raise ModelError(f"model: {arch} is on the meta device (its parameters have shapes but no values); "
                         "materialise it first, e.g. module.to_empty(device='cpu') then load_state_dict(...)")
    other = sorted({str(t.dtype).removeprefix("torch.") for t in tensors
                    if t.is_floating_point() and t.dtype != torch.float32})
    if other:
        log.warning("model: %s has %s parameters; cast to float32, the dtype the methods compute in "
                    "(compute.precision fp16/bf16 autocasts from float32)", arch, " and ".join(other))
        net.float()
    return net


def read_categories(categories: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Class names from ``model.categories``: a text file, one name a line, or the names themselves."""
    if categories is None:
        return None
    if not isinstance(categories, str):
        return tuple(str(name) for name in categories)
    try:
        with open(categories, encoding="utf-8") as fh:
            return tuple(line.strip() for line in fh if line.strip())
    except OSError as err:
        raise ConfigError("model.categories", f"cannot read {categories}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError("model.categories", f"{categories} is not UTF-8 text (byte {err.start}: "
                                              f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8") from None


def classifier_from_module(
    module: nn.Module,
    preprocessing=None,
    categories: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    name: str | None = None,
    weights: str = "as given",
) -> Classifier:
    """Any ``nn.Module`` mapping (N, 3, H, W) normalised images to (N, classes) logits, as a Classifier.

    ``preprocessing``: a :class:`Preprocessing`, the job file's ``model.preprocessing`` keys as a dict (``crop`` is
    the input size), or None for ImageNet's at 224 px. The module itself is used, not a copy: it is put in eval mode
    with its parameters frozen (the methods take gradients with respect to the inputs only) and moved to ``device``.
    A list of ``categories`` must name every output.
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(module).__name__}")
    preprocessing = preprocessing_from(preprocessing)
    arch = name or type(module).__name__
    device = resolve_device(device)
    net = place_on_device(as_float32(module, arch).eval(), device)
    for parameter in net.parameters():
        parameter.requires_grad_(False)  # gradients are taken w.r.t. inputs only; skips weight-grad work in backward
    num_classes, _ = _blank_forward(net, arch, preprocessing.crop_size, None)
    names = read_categories(categories)
    if names is not None and len(names) != num_classes:
        raise ConfigError("model.categories", f"{len(names)} names for a model with {num_classes} classes")
    return Classifier(arch=arch, net=net, device=device, preprocessing=preprocessing, num_classes=num_classes,
                      categories=names, weights=weights)


def build_classifier(
    arch: str,
    weights: str,
    resolution: int,
    seed: int,
    device: torch.device | str = "cpu",
    categories: Sequence[str] | None = None,
    preprocessing=None,
    pinned: PinnedWeights | None = None,
) -> Classifier:
    """The classifier ``model.arch`` / ``model.weights`` name, at ``resolution``; ``categories`` (names) replace the
    weights' own, ``preprocessing`` (``model.preprocessing``) overrides theirs key by key. ``pinned``: the bytes of
    the weights file as the run read them (:mod:`.pinned`), loaded instead of the file."""
    source, name = source_of(arch)
    built = source.build(name, weights, seed, resolution, pinned=pinned)
    chosen = with_overrides(built.preprocessing or imagenet_preprocessing(resolution), preprocessing)
    return classifier_from_module(built.net, chosen, categories if categories is not None else built.categories,
                                  device=device, name=arch, weights=built.weights)


def describe_weights(arch: str, weights: str, resolution: int,
                     preprocessing=None) -> tuple[Preprocessing, tuple[str, ...] | None]:
    """Preprocessing and class names of a model, without building it (for the driver, which holds no model)."""
    source, name = source_of(arch)
    described, categories = source.describe(name, weights, resolution)
    return with_overrides(described or imagenet_preprocessing(resolution), preprocessing), categories


def describe_model(model) -> tuple[Preprocessing, tuple[str, ...] | None]:
    """:func:`describe_weights` for a job's ``model`` section, ``model.categories`` taking precedence."""
    preprocessing, categories = describe_weights(model.arch, model.weights, model.resolution, model.preprocessing)
    return preprocessing, read_categories(model.categories) or categories
