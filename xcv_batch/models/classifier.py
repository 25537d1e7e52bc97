"""Building the classifier: architecture, weights, preprocessing, class names and Guided Grad-CAM's layer.

Every ``nn.ReLU`` is swapped for a :class:`SwitchableReLU` that computes exactly what ReLU computes, forward and
backward, until :attr:`GuidedBackpropSwitch.guided` is set: then its backward also clamps the incoming gradient at
zero, which is guided backpropagation (Springenberg et al. 2015) as Captum's ``GuidedBackprop`` does it. The switch
is read at *backward* time, so one forward pass serves both Grad-CAM's plain backward and the guided one, and the
hooks are installed once per model instead of per call. Swapping modules also catches torchvision's in-place ReLUs,
which forward/backward hooks handle badly.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import urllib.error
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torchvision
from torch import nn

from ..errors import ConfigError, ModelError
from ..output.layout import IMAGENET_MEAN, IMAGENET_STD  # for architectures without torchvision weights to take them from


class GuidedBackpropSwitch:
    """Shared by every SwitchableReLU of one model; ``with switch.enabled():`` turns guided backprop on."""

    def __init__(self) -> None:
        self.guided = False

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        self.guided = True
        try:
            yield
        finally:
            self.guided = False


class _SwitchableReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, switch: GuidedBackpropSwitch) -> torch.Tensor:  # type: ignore[override]
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.switch = switch
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        grad_in = torch.ops.aten.threshold_backward(grad_out, out, 0)  # ReLU's own backward kernel
        if ctx.switch.guided:
            # Captum's GuidedBackprop returns relu(grad_input) from its ReLU backward hook; same thing.
            grad_in = grad_in.clamp_min(0)
        return grad_in, None


class SwitchableReLU(nn.Module):
    """``nn.ReLU`` whose backward turns into guided backprop while its switch is on."""

    def __init__(self, switch: GuidedBackpropSwitch, inplace: bool = False):
        super().__init__()
        self.switch = switch
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SwitchableReLUFunction.apply(x, self.switch)
        # No gradient wanted (occlusion, LIME): the plain kernel, in place where the original was.
        return torch.relu_(x) if self.inplace else torch.relu(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


def make_relus_switchable(net: nn.Module, switch: GuidedBackpropSwitch) -> int:
    """Replace every ``nn.ReLU`` in ``net`` (recursively) with a SwitchableReLU; returns how many."""
    count = 0
    for name, child in list(net.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(net, name, SwitchableReLU(switch, inplace=child.inplace))
            count += 1
        else:
            count += make_relus_switchable(child, switch)
    return count


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise: torchvision's ``ImageClassification``."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def mean_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def std_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def normalize(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → model input."""
        return (pixels01 - self.mean_tensor(pixels01.device)) / self.std_tensor(pixels01.device)

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model input → (B, 3, H, W) pixel values (≈ [0, 1]; perturbed inputs may leave it slightly)."""
        return inputs * self.std_tensor(inputs.device) + self.mean_tensor(inputs.device)


@dataclass
class Classifier:
    """A classifier ready for attribution: eval mode, on its device, ReLUs switchable."""

    arch: str
    net: nn.Module
    device: torch.device
    preprocessing: Preprocessing
    num_classes: int
    categories: tuple[str, ...] | None
    #: the guided-backprop switch every SwitchableReLU of ``net`` reads (Guided Grad-CAM turns it on)
    guided: GuidedBackpropSwitch
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


def classification_archs() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """``arch`` names a torchvision classifier (listing them builds nothing: the driver asks before starting workers)."""
    if arch not in classification_archs():
        raise ConfigError("model.arch", f"'{arch}' is not a torchvision classifier (e.g. resnet18, resnet50, vgg19)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("compute.device", f"'{name}' asked for, but torch sees no CUDA device; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError("compute.device", f"'{name}' is not a torch device (auto, cpu, cuda, cuda:N)") from err


def _weights_enum(arch: str):
    try:
        return torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None


def _preprocessing_for(weights, resolution: int) -> Preprocessing:
    """The weights' own transform (resize/crop ratio, mean, std), scaled to the job's resolution."""
    if weights is None:
        return Preprocessing(round(resolution * 256 / 224), resolution, IMAGENET_MEAN, IMAGENET_STD)
    transform = weights.transforms()
    crop = transform.crop_size[0]
    resize = transform.resize_size[0]
    return Preprocessing(
        resize_size=round(resolution * resize / crop),
        crop_size=resolution,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        interpolation=transform.interpolation.value,
    )


def _last_linear_name(net: nn.Module) -> str | None:
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def _load_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text advises weights_only=False, i.e. running the file's code: never do that for a job file.
        raise ModelError(f"model.weights: {path} holds pickled Python objects (a whole saved model?), not a "
                         "state_dict; save model.state_dict() with torch.save and point at that file") from err
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise ModelError(f"model.weights: cannot load state_dict from {path}: {_first_sentence(err)}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.weights: {path} does not hold a state_dict (a dict of tensors)")
    # Checkpoints saved from DataParallel / torch.compile carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _first_sentence(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    return first.split(". ")[0][:300]


def check_forward(net: nn.Module, arch: str, resolution: int, layer_name: str | None = None) -> tuple[int, ...]:
    """One forward of a blank input at the job's resolution, before any image: an architecture that cannot take
    the resolution fails here with one line. Returns the shape of ``layer_name``'s output, if one is named (Guided
    Grad-CAM's maps; the method checks its layer so), else ``()``."""
    seen: list[tuple[int, ...]] = []
    hook = None
    if layer_name is not None:
        layer = dict(net.named_modules())[layer_name]
        hook = layer.register_forward_hook(lambda module, args, out: seen.append(tuple(getattr(out, "shape", ()))))
    parameter = next(net.parameters())
    try:
        with torch.no_grad():
            logits = net(torch.zeros((1, 3, resolution, resolution), device=parameter.device, dtype=parameter.dtype))
    except Exception as err:  # noqa: BLE001 - any failure here means the model cannot run this job
        raise ModelError(f"model.arch: {arch} cannot take {resolution} px inputs ({_first_sentence(err)}); "
                         "change model.resolution") from err
    finally:
        if hook is not None:
            hook.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ModelError(f"model.arch: {arch} returns {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}"
                         ", not (batch, classes) logits")
    return seen[0] if seen else ()


def _load_exactly(net: nn.Module, state: dict, context: str) -> None:
    """``load_state_dict`` that must use every key and fill every parameter; one line saying what does not fit."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise ModelError(f"{context}: {mismatch or _first_sentence(err)}") from err
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} parameters missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise ModelError(f"{context}: {', '.join(problems)}")


def _build_net(arch: str, weights_spec: str, seed: int) -> tuple[nn.Module, object, str]:
    """Returns (net, torchvision weights or None for preprocessing/categories, weights description)."""
    builder = torchvision.models.get_model_builder(arch)
    enum = _weights_enum(arch)
    default_weights = enum.DEFAULT if enum is not None else None

    if weights_spec.lower() == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(weights=None), default_weights, "none"

    if enum is not None and (weights_spec in enum.__members__ or weights_spec == "DEFAULT"):
        weights = enum[weights_spec] if weights_spec != "DEFAULT" else enum.DEFAULT
        try:
            net = builder(weights=weights)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise ModelError(
                f"model.weights: could not fetch {arch} weights {weights_spec} from {weights.url} ({err}). "
                "Offline? Put the file in torch's hub cache (~/.cache/torch/hub/checkpoints), pass a local "
                "state_dict path, or run with --set model.weights=none (random init from the job seed)."
            ) from err
        return net, weights, f"{enum.__name__}.{weights.name}"

    if os.path.exists(weights_spec):
        state = _load_state_dict(weights_spec)
        probe = builder(weights=None)
        head = _last_linear_name(probe)
        kwargs = {}
        if head is not None and f"{head}.weight" in state:
            kwargs["num_classes"] = int(state[f"{head}.weight"].shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = builder(weights=None, **kwargs)
        _load_exactly(net, state, f"model.weights: {weights_spec} does not fit {arch}")
        return net, default_weights, os.path.abspath(weights_spec)

    names = ", ".join(["DEFAULT", *enum.__members__]) if enum is not None else "(none published)"
    raise ConfigError(
        "model.weights",
        f"'{weights_spec}' is neither a torchvision weights name for {arch} ({names}), 'none', nor an existing file",
    )


def layer_candidates(net: nn.Module, depth: int = 2) -> list[str]:
    return [name for name, _ in net.named_modules() if name and name.count(".") < depth]


def auto_target_layer(net: nn.Module) -> str:
    """Grad-CAM's layer: ResNet's ``layer4``; a VGG's last rectified conv output; else the last conv's block."""
    modules = dict(net.named_modules())
    if "layer4" in modules:
        return "layer4"
    names = list(modules)
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    if not convs:
        raise ModelError("methods.guided_gradcam.layer: the model has no Conv2d layer for 'auto'; name a layer")
    last_conv = convs[-1]
    # In VGG's `features` the last conv is followed by its ReLU (and a max-pool): Grad-CAM's "last convolutional
    # layer" means those rectified maps (Selvaraju et al. 2017), i.e. the ReLU right after the conv.
    after = names[names.index(last_conv) + 1:]
    parent = last_conv.rpartition(".")[0]
    for name in after:
        if name.rpartition(".")[0] == parent and isinstance(modules[name], (nn.ReLU, SwitchableReLU)):
            return name
    return last_conv


def describe_weights(arch: str, weights: str, resolution: int) -> tuple[Preprocessing, tuple[str, ...] | None]:
    """Preprocessing and class names of a model, without building it (for the driver, which holds no model)."""
    enum = _weights_enum(arch)
    if enum is None:
        return _preprocessing_for(None, resolution), None
    if weights in enum.__members__ or weights == "DEFAULT":
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        return _preprocessing_for(chosen, resolution), tuple(chosen.meta.get("categories") or ()) or None
    return _preprocessing_for(enum.DEFAULT, resolution), None


def read_categories(path: str | None) -> tuple[str, ...] | None:
    """Class names from a text file, one a line (``model.categories``)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return tuple(line.strip() for line in fh if line.strip())
    except OSError as err:
        raise ConfigError("model.categories", f"cannot read {path}: {err.strerror}") from None


def build_classifier(
    arch: str,
    weights: str,
    resolution: int,
    seed: int,
    device: torch.device | str = "cpu",
    categories: Sequence[str] | None = None,
) -> Classifier:
    check_arch(arch)
    device = torch.device(device)
    net, tv_weights, weights_desc = _build_net(arch, weights, seed)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)  # gradients are taken w.r.t. inputs only; skips weight-grad work in backward
    switch = GuidedBackpropSwitch()
    make_relus_switchable(net, switch)

    check_forward(net, arch, resolution)
    head = _last_linear_name(net)
    num_classes = int(dict(net.named_modules())[head].out_features) if head else -1
    if categories is None and tv_weights is not None and weights.lower() != "none" and not os.path.exists(weights):
        categories = tv_weights.meta.get("categories")
    if categories is not None and num_classes > 0 and len(categories) != num_classes:
        raise ConfigError("model.categories", f"{len(categories)} names for a model with {num_classes} classes")

    return Classifier(
        arch=arch,
        net=place_on_device(net, device),
        device=device,
        preprocessing=_preprocessing_for(tv_weights, resolution),
        num_classes=num_classes,
        categories=tuple(categories) if categories is not None else None,
        guided=switch,
        weights=weights_desc,
    )
