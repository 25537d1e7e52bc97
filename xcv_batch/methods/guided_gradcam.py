"""Guided Grad-CAM (Selvaraju et al. 2017) as Captum's ``GuidedGradCam(net, layer).attribute(x, target=t)``.

Captum runs two full passes (LayerGradCam, then GuidedBackprop with ReLU hooks). The classifier's ReLUs read the
guided-backprop switch at backward time, so here one forward pass per chunk serves both: a plain backward to the
layer's output for Grad-CAM (kept with ``retain_graph``), then a guided backward to the input.
Grad-CAM = relu(Σ_c mean_hw(∂y/∂A_c) · A_c), upsampled to the input size and multiplied into the guided gradient.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..models.classifier import auto_target_layer, check_forward, layer_candidates
from .base import AttributionMethod, chunk_slices, target_outputs
from .settings import GuidedGradCamSettings


@contextlib.contextmanager
def capture_output(layer: nn.Module) -> Iterator[dict]:
    """While open, ``captured["output"]`` is the layer's latest output (the last call wins, as in Captum)."""
    captured: dict = {}

    def keep(module: nn.Module, args, output) -> None:
        captured["output"] = output

    handle = layer.register_forward_hook(keep)  # a dict insert; cheap enough to do per call, and never leaks
    try:
        yield captured
    finally:
        handle.remove()


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) layer output and its gradient → (N, 1, h, w) Captum LayerGradCam, relu_attributions=True."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(dim=1, keepdim=True))


def resolve_layer(classifier, layer: str) -> tuple[str, tuple[int, ...]]:
    """``settings.layer`` (``auto`` included) as a module name of ``classifier.net``, and the shape of its output for
    one blank image at the classifier's resolution; ``ConfigError`` unless it is a layer giving (N, C, h, w) maps."""
    net = classifier.net
    name = auto_target_layer(net) if layer == "auto" else layer
    if name not in dict(net.named_modules()):
        candidates = ", ".join(layer_candidates(net))
        raise ConfigError("methods.guided_gradcam.layer",
                          f"'{layer}' is not a layer of {classifier.arch}; one of: {candidates}")
    shape = check_forward(net, classifier.arch, classifier.preprocessing.crop_size, name)
    if len(shape) != 4:
        raise ConfigError(
            "methods.guided_gradcam.layer",
            f"{name} gives {shape}, not the (batch, channels, height, width) maps Grad-CAM weighs; name a "
            "convolutional block",
        )
    return name, shape


class GuidedGradCam(AttributionMethod):
    """Registered as ``guided_gradcam`` in methods/settings.py.

    The layer is resolved and checked when the method is built (one blank forward through ``classifier.net``); the
    guided-backprop switch stays on the classifier, since every SwitchableReLU of its network reads it.
    """

    def __init__(self, classifier, settings: GuidedGradCamSettings, forward_batch: int = 64):
        super().__init__(classifier, settings, forward_batch)
        self.layer_name, self.layer_shape = resolve_layer(classifier, settings.layer)
        self.layer: nn.Module = dict(classifier.net.named_modules())[self.layer_name]

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        settings: GuidedGradCamSettings = self.settings
        classifier = self.classifier
        layer_name = self.layer_name
        targets = targets.to(inputs.device)
        result = torch.empty_like(inputs, dtype=torch.float32)
        with capture_output(self.layer) as captured:
            for chunk in chunk_slices(inputs.shape[0], self.forward_batch):
                images = inputs[chunk].detach().requires_grad_(True)
                captured.clear()
                with torch.enable_grad():
                    score = target_outputs(classifier.net(images), targets[chunk]).sum()
                    activations = captured.get("output")
                    if not isinstance(activations, torch.Tensor) or activations.dim() != 4:
                        raise ModelError(
                            f"methods.guided_gradcam.layer: '{layer_name}' must output one (N, C, h, w) tensor "
                            "during the forward pass; pick a convolutional block"
                        )
                    (layer_grads,) = torch.autograd.grad(score, activations, retain_graph=True)
                    with classifier.guided.enabled():
                        (guided_grads,) = torch.autograd.grad(score, images)
                with torch.no_grad():
                    # float32 even under bf16/fp16 autocast: the channel means and the weighted sum lose little
                    # there, but the map is the product of two small numbers.
                    cam = grad_cam(activations.detach().float(), layer_grads.float())
                    cam = F.interpolate(cam, size=tuple(inputs.shape[2:]), mode=settings.interpolate_mode)
                    result[chunk] = (guided_grads * cam).float()
        return result
