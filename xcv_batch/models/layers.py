"""Finding a network's layers by name: Grad-CAM's target layer (``layer: auto``) and the names to suggest."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError


def layer_candidates(net: nn.Module, depth: int = 2) -> list[str]:
    return [name for name, _ in net.named_modules() if name and name.count(".") < depth]


def auto_target_layer(net: nn.Module, resolution: int = 224) -> str:
    """Grad-CAM's layer for ``layer: auto``: the output of the last convolutional stage.

    - a ResNet (torchvision's or timm's): ``layer4``;
    - a timm model: the last stage its ``feature_info`` declares (``stages.3``, ``blocks.6``; for a VGG the ReLU
      before that stage's max-pool, as below);
    - otherwise the outermost module around the last ``Conv2d`` whose output is still the conv's maps (4-D, same
      height and width, seen in one blank forward at ``resolution``): EfficientNet's and ConvNeXt's ``features``,
      timm's ``stages``; what follows the conv inside that stage (norms, activations, residual additions) is part of
      the maps Grad-CAM weighs;
    - when that is the conv itself and a ReLU follows it in the same container (VGG's ``features``, a plain
      ``nn.Sequential``), that ReLU: Grad-CAM's "last convolutional layer" means the rectified maps (Selvaraju et
      al. 2017), not the pooled ones after.
    """
    modules = dict(net.named_modules())
    if "layer4" in modules:
        return "layer4"
    names = list(modules)
    declared = _declared_last_stage(net, modules)
    if declared is not None:
        return declared
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    if not convs:
        raise ModelError("methods.guided_gradcam.layer: the model has no Conv2d layer for 'auto'; name a layer")
    last_conv = convs[-1]
    shapes = output_shapes(net, resolution)
    maps = shapes.get(last_conv)
    chosen = last_conv
    parts = last_conv.split(".")
    for depth in range(len(parts) - 1, 0, -1):  # the ancestors, innermost first
        ancestor = ".".join(parts[:depth])
        shape = shapes.get(ancestor)
        if maps is None or shape is None or len(shape) != 4 or shape[2:] != maps[2:]:
            break
        chosen = ancestor
    if chosen != last_conv:
        return chosen
    after = names[names.index(last_conv) + 1:]
    parent = last_conv.rpartition(".")[0]
    for name in after:
        if name.rpartition(".")[0] == parent and isinstance(modules[name], nn.ReLU):
            return name
    return last_conv


def _declared_last_stage(net: nn.Module, modules: dict[str, nn.Module]) -> str | None:
    """The module timm's ``feature_info`` names as the last feature stage, if the network declares one."""
    info = getattr(net, "feature_info", None)
    last = info[-1] if isinstance(info, list) and info and isinstance(info[-1], dict) else {}
    name = last.get("module")
    if name not in modules or not name:
        return None
    if isinstance(modules[name], (nn.MaxPool2d, nn.AvgPool2d)):
        # timm's VGG declares the pooled maps; Grad-CAM takes the rectified ones before the pool.
        parent, _, child = name.rpartition(".")
        siblings = list(modules[parent].named_children()) if parent in modules else []
        index = [n for n, _ in siblings].index(child) if child in dict(siblings) else 0
        if index > 0 and isinstance(siblings[index - 1][1], nn.ReLU):
            return f"{parent}.{siblings[index - 1][0]}" if parent else siblings[index - 1][0]
    return name


def output_shapes(net: nn.Module, resolution: int) -> dict[str, tuple[int, ...]]:
    """Every module's output shape (tensor outputs only; a module called twice keeps its last) for one blank image."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in net.named_modules():
        def keep(module, args, output, name=name):
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)
        handles.append(module.register_forward_hook(keep))
    blank_forward(net, resolution, handles)
    return shapes


def blank_forward(net: nn.Module, resolution: int, handles: list) -> None:
    """One forward of a blank image on the net's device and dtype, without gradients; the hooks ``handles`` were
    registered for are removed afterwards, whatever happens."""
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    try:
        with torch.no_grad():
            net(torch.zeros((1, 3, resolution, resolution), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
