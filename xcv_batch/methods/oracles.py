"""Per-image references of the deterministic methods: Captum called one image at a time with the method's settings,
as a notebook would call it (for the control maps: scipy's Sobel filter, numpy's Gaussian). Named by each method's
registration (``oracle``); the tests compare the batched methods with them on stock networks, and a user can do the
same on their own model."""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import GuidedGradCam, IntegratedGradients, Occlusion
from scipy import ndimage
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


def scipy_sobel_magnitude(net: nn.Module, x: torch.Tensor, target: int, settings) -> torch.Tensor:
    """Per channel, hypot of ``scipy.ndimage.sobel`` along the rows and along the columns (its default border)."""
    channels = x[0].detach().cpu().numpy()
    edges = [np.hypot(ndimage.sobel(c, axis=0), ndimage.sobel(c, axis=1)) for c in channels]
    return torch.from_numpy(np.stack(edges))[None]


def numpy_centred_gaussian(net: nn.Module, x: torch.Tensor, target: int, settings) -> torch.Tensor:
    """exp(−½ (dy² + dx²)), dy and dx each pixel's offset from the centre in quarters of the side, in every channel."""
    height, width = x.shape[-2:]
    dy = (np.arange(height) - (height - 1) / 2) / (height / 4)
    dx = (np.arange(width) - (width - 1) / 2) / (width / 4)
    gaussian = np.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2))
    return torch.from_numpy(np.broadcast_to(gaussian, x.shape[1:]).copy())[None]
