"""Per-image references of the deterministic methods: Captum called one image at a time with the method's settings,
as a notebook would call it. Named by each method's registration (``oracle``); the tests compare the batched methods
with them on stock networks, and a user can do the same on their own model."""

from __future__ import annotations

import torch
from captum.attr import GuidedGradCam, IntegratedGradients, Occlusion
from torch import nn

from ..models.layers import auto_target_layer


def captum_occlusion(net: nn.Module, x: torch.Tensor, target: int, settings) -> torch.Tensor:
    w, s = settings.window, settings.stride
    return Occlusion(net).attribute(x, sliding_window_shapes=(x.shape[1], w, w), strides=(x.shape[1], s, s),
                                    baselines=settings.baseline, target=target, perturbations_per_eval=64)


def captum_integrated_gradients(net: nn.Module, x: torch.Tensor, target: int, settings) -> torch.Tensor:
    return IntegratedGradients(net).attribute(x, target=target, n_steps=settings.n_steps, method=settings.method)


def captum_guided_gradcam(net: nn.Module, x: torch.Tensor, target: int, settings) -> torch.Tensor:
    name = auto_target_layer(net, x.shape[-1]) if settings.layer == "auto" else settings.layer
    layer = dict(net.named_modules())[name]
    return GuidedGradCam(net, layer).attribute(x, target=target, interpolate_mode=settings.interpolate_mode)
