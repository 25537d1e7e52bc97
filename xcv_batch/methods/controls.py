"""Control maps: attributions that know nothing about the model, to test whether a metric can tell them apart.

A metric that ranks one of these above real attributions does not measure what it claims on this data: an edge
detector passes several saliency evaluations (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"), and a map
that does not change when the input is perturbed is the "most stable" one by Max-Sensitivity. None of them runs the
model; each map is a function of the image alone (its seed, its pixels), so a perturbed copy of an image keeps the
image's seed (see metrics/sensitivity.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import AttributionMethod

#: The Gaussian's σ as a fraction of each side: the map falls to e^-2 ≈ 14 % of its peak at the border.
CENTRE_SIGMA = 0.25


def uniform_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """U[0, 1) float32 of ``shape``, drawn on the CPU from ``seed`` (the same numbers on every device)."""
    return torch.rand(tuple(shape), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)


def sobel_magnitude(inputs: torch.Tensor) -> torch.Tensor:
    """Per channel, hypot(Sobel along the rows, Sobel along the columns) of (B, C, H, W) inputs: what
    ``scipy.ndimage.sobel`` gives along each axis of each channel (its default border, ``reflect``, repeats the edge
    pixel: with a 3 × 3 kernel that is ``replicate``)."""
    x = inputs.float()
    b, c, h, w = x.shape
    derivative = torch.tensor([-1.0, 0.0, 1.0], device=x.device)
    smoothing = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    kernels = torch.stack([torch.outer(derivative, smoothing), torch.outer(smoothing, derivative)]).unsqueeze(1)
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)  # (B·C, 2, H, W): along the rows, along the columns
    return torch.hypot(gradients[:, 0], gradients[:, 1]).reshape(b, c, h, w)


def centred_gaussian(height: int, width: int) -> torch.Tensor:
    """(H, W) float32: exp(−½ ((y − cy)² / σy² + (x − cx)² / σx²)), centred, σ = :data:`CENTRE_SIGMA` × the side."""
    y = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) / (CENTRE_SIGMA * height)
    x = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) / (CENTRE_SIGMA * width)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


class RandomControl(AttributionMethod):
    """Seeded uniform noise: each image's map is drawn from its own seed, the same for every copy of it."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        shape = inputs.shape[1:]
        return torch.stack([uniform_noise(seed, shape) for seed in seeds]).to(inputs.device)


class EdgesControl(AttributionMethod):
    """The Sobel gradient magnitude of the model input, per channel: an edge detector, blind to the model."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return sobel_magnitude(inputs)


class CentreControl(AttributionMethod):
    """A fixed centred Gaussian, in every channel of every image: blind to the image and to the model."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        b, c, h, w = inputs.shape
        return centred_gaussian(h, w).to(inputs.device).expand(b, c, h, w).contiguous()
