"""Integrated Gradients (Sundararajan et al. 2017) from a zero baseline, as Captum's ``IntegratedGradients``.

Captum batches the steps of each call along the batch dimension and its ``internal_batch_size`` never mixes images;
here every (image, step) pair is one row and rows go through the model ``forward_batch`` at a time, whichever
images they belong to. Step sizes and alphas come from Captum's own quadrature tables, so the sums are the same.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from .base import AttributionMethod, chunk_slices, target_outputs


@functools.lru_cache(maxsize=32)
def quadrature(method: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's step sizes (float32) and alphas (float64) for ``n_steps`` of ``method``, on the CPU; never mutate.

    Cached: the tables take milliseconds to build (Gauss–Legendre nodes), and IG-SG and Max-Sensitivity call IG
    dozens of times per batch with the same ones.
    """
    step_sizes_of, alphas_of = approximation_parameters(method)
    # As Captum: step sizes become float32 (``torch.tensor(step_sizes).float()``), and alpha · x is a Python float
    # times the input, i.e. alpha rounded to the input's dtype (done by the caller).
    return (torch.tensor(step_sizes_of(n_steps), dtype=torch.float32),
            torch.tensor(alphas_of(n_steps), dtype=torch.float64))


def integrated_gradients(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int,
    method: str = "gausslegendre",
    forward_batch: int = 64,
) -> torch.Tensor:
    """IG of each image's target logit from a zero baseline: ``x · Σ_k step_k · ∇f(alpha_k · x)``.

    ``inputs`` (N, C, H, W), ``targets`` (N,) → (N, C, H, W) in the inputs' dtype. Memory is bounded by
    ``forward_batch`` rows.
    """
    step_sizes, alphas = quadrature(method, n_steps)
    step_sizes = step_sizes.to(inputs.device)
    alphas = alphas.to(inputs.device).to(inputs.dtype)
    inputs, targets = inputs.detach(), targets.to(inputs.device)
    per_row = (-1,) + (1,) * (inputs.dim() - 1)

    path_integral = torch.zeros_like(inputs)
    for chunk in chunk_slices(inputs.shape[0] * n_steps, forward_batch):
        row = torch.arange(chunk.start, chunk.stop, device=inputs.device)
        image, step = row // n_steps, row % n_steps
        scaled = (alphas[step].view(per_row) * inputs[image]).requires_grad_(True)
        with torch.enable_grad():
            # Rows are independent (eval mode), so the gradient of the sum is each row's own gradient.
            score = target_outputs(net(scaled), targets[image]).sum()
            (grads,) = torch.autograd.grad(score, scaled)
        path_integral.index_add_(0, image, (grads * step_sizes[step].view(per_row)).to(inputs.dtype))
    return path_integral * inputs


def completeness_gap(
    net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor, forward_batch: int = 64
) -> torch.Tensor:
    """IG's completeness check per image, (B,) float64: ``|Σ attribution − (f(x) − f(0))| ÷ |f(x) − f(0)|``.

    IG's attributions sum to the change of the target logit from the zero baseline when the path integral is exact;
    the gap is the quadrature's error (Captum's ``return_convergence_delta``, here relative to the change so that
    images and models compare), so a large one says ``n_steps`` was too few. NaN where f(x) = f(0): there is no
    change to be complete about.
    """
    inputs, targets = inputs.detach(), targets.to(inputs.device)
    both = torch.cat([inputs, torch.zeros_like(inputs)])
    # In full precision even under a bf16/fp16 run: the check measures the attribution's error, not its own.
    with torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
        logits = torch.cat([net(both[part]).to(torch.float64) for part in chunk_slices(both.shape[0], forward_batch)])
    scores = target_outputs(logits, torch.cat([targets, targets]))
    change = scores[: len(inputs)] - scores[len(inputs):]
    total = attributions.detach().to(torch.float64).flatten(1).sum(dim=1)
    gap = (total - change).abs() / change.abs()
    return gap.masked_fill(change == 0, float("nan"))


class IntegratedGradients(AttributionMethod):
    """Registered as ``integrated_gradients`` in methods/settings.py."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        attributions = integrated_gradients(
            self.classifier.net, inputs, targets, self.settings.n_steps, self.settings.method, self.forward_batch
        )
        return attributions.float()

    def diagnostics(self, inputs, targets, attributions) -> dict[str, tuple[torch.Tensor, str]]:
        gap = completeness_gap(self.classifier.net, inputs, targets, attributions, self.forward_batch)
        return {"ig_completeness_gap": (gap, "undefined: f(x) equals f(baseline)")}
