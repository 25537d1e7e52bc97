"""IG + SmoothGrad: Captum's ``NoiseTunnel(IntegratedGradients(net))``, with noise seeded per image.

Each image gets ``nt_samples`` noisy copies ``x + stdevs · N(0, 1)`` (absolute stdev in model-input space, as
Captum), IG of each copy from a zero baseline, then smoothgrad = mean, smoothgrad_sq = mean of squares, vargrad =
mean of squares − square of mean (Captum's ``_compute_smoothing``). Captum draws its noise from the global RNG;
here each image draws from its own generator seeded with its seed, so its map does not depend on its batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import AttributionMethod, chunk_slices
from .integrated_gradients import integrated_gradients
from .settings import IGSmoothGradSettings


def seeded_noise(seed: int, nt_samples: int, shape: Sequence[int], stdevs: float, device: torch.device) -> torch.Tensor:
    """(nt_samples, *shape) float32 Gaussian noise of standard deviation ``stdevs``, a function of ``seed`` only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return torch.randn((nt_samples, *shape), generator=generator, device=device) * stdevs


class IGSmoothGrad(AttributionMethod):
    """Registered as ``ig_smoothgrad`` in methods/settings.py."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        settings: IGSmoothGradSettings = self.settings
        if len(seeds) != inputs.shape[0]:
            raise ValueError(f"{inputs.shape[0]} images but {len(seeds)} seeds")
        n_samples = settings.nt_samples
        result = torch.empty_like(inputs, dtype=torch.float32)
        # Noisy copies are made a group of images at a time so that they, too, stay within about forward_batch
        # images; IG's chunks still span the images of a group.
        images_per_group = max(1, self.forward_batch // n_samples)
        for group in chunk_slices(inputs.shape[0], images_per_group):
            group_inputs = inputs[group].detach()
            noisy = torch.cat(
                [
                    image + seeded_noise(seed, n_samples, image.shape, settings.stdevs, inputs.device).to(image.dtype)
                    for image, seed in zip(group_inputs, seeds[group])
                ]
            )  # image-major, as Captum's repeat_interleave
            attributions = integrated_gradients(
                self.classifier.net,
                noisy,
                targets[group].repeat_interleave(n_samples),
                settings.n_steps,
                settings.method,
                self.forward_batch,
            ).view(group_inputs.shape[0], n_samples, *inputs.shape[1:])
            result[group] = smooth(attributions, settings.nt_type).float()
        return result


def smooth(attributions: torch.Tensor, nt_type: str) -> torch.Tensor:
    """(B, nt_samples, …) per-sample attributions → (B, …), Captum's formulas in Captum's order of operations."""
    n_samples = attributions.shape[1]
    if nt_type == "smoothgrad":
        return attributions.sum(1) / n_samples
    mean_of_squares = attributions.pow(2).sum(1) / n_samples
    if nt_type == "smoothgrad_sq":
        return mean_of_squares
    if nt_type == "vargrad":
        mean = attributions.sum(1) / n_samples
        return mean_of_squares - mean * mean
    raise ValueError(f"unknown nt_type {nt_type!r}; one of smoothgrad, smoothgrad_sq, vargrad")
