"""Complexity of a map: how concentrated its relevance is, computed for a batch of maps on their device.

Both take ``attributions`` (B, C, H, W) — raw maps as the methods return them — and return (B,) float64. A pixel's
relevance is the magnitude of its channel sum, ``|Σ_c a_c|``: channels are pooled before the absolute value, as the
localisation metrics pool them and as Quantus reduces a map over its channels before its complexity metrics.

- **sparseness** (Chalasani et al. 2020; Quantus ``Sparseness``): the Gini index of the pixels' relevances,
  ``Σ_i (2i − n − 1)·r_(i) / (n·Σ r)`` with ``r`` sorted ascending, i = 1 … n. 0 when every pixel is equally relevant,
  (n − 1)/n when one pixel holds all of it; higher is better (a sparser map is easier to read). It does not change
  when a map is multiplied by a constant. Quantus adds 1e-7 to every value of a max-normalised map to avoid dividing
  by zero; here the sum is exact and an all-zero map is NaN instead.
- **effective complexity** (Nguyen & Martínez 2020; Quantus ``EffectiveComplexity``): the number of pixels whose
  relevance exceeds ``eps`` times the map's largest relevance (Quantus normalises a map by its maximum before it
  counts values above ``eps``; its default ``eps`` is 1e-5). Lower is better: fewer pixels carry the explanation.

An all-zero map has no relevance to spread: both values are NaN (a map that says nothing must not rank sparsest or
simplest), and the worker notes why.
"""

from __future__ import annotations

import torch

from .base import ALL_ZERO_MAP, Evaluation, MapBatch, Metric

#: Quantus' default threshold, relative to the map's largest relevance.
DEFAULT_EFFECTIVE_COMPLEXITY_EPS = 1e-5


def pixel_relevance(attributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W) float64: ``|Σ_c a_c|`` per pixel."""
    if attributions.dim() != 4:
        raise ValueError(f"attributions must be (B, C, H, W), got shape {tuple(attributions.shape)}")
    return attributions.to(torch.float64).sum(dim=1).abs().flatten(1)


def sparseness(attributions: torch.Tensor) -> torch.Tensor:
    """The Gini index of each map's pixel relevances, (B,) float64; NaN for an all-zero map."""
    relevance = pixel_relevance(attributions).sort(dim=1).values
    n = relevance.shape[1]
    weights = 2 * torch.arange(1, n + 1, dtype=torch.float64, device=relevance.device) - n - 1
    total = relevance.sum(dim=1)
    gini = (relevance * weights).sum(dim=1) / (n * total)
    return gini.masked_fill(total == 0, float("nan"))


def effective_complexity(attributions: torch.Tensor, eps: float = DEFAULT_EFFECTIVE_COMPLEXITY_EPS) -> torch.Tensor:
    """Pixels whose relevance exceeds ``eps`` × the map's largest, (B,) float64; NaN for an all-zero map."""
    relevance = pixel_relevance(attributions)
    largest = relevance.max(dim=1, keepdim=True).values
    count = (relevance > eps * largest).sum(dim=1).to(torch.float64)
    return count.masked_fill(largest.squeeze(1) == 0, float("nan"))


def complexity_metrics(attributions: torch.Tensor, eps: float = DEFAULT_EFFECTIVE_COMPLEXITY_EPS) -> dict[str, torch.Tensor]:
    """Both, keyed by their Parquet column names."""
    return {"sparseness": sparseness(attributions), "effective_complexity": effective_complexity(attributions, eps)}


class Complexity(Metric):
    """Both complexity columns of each map; an all-zero map's are missing, and say why."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        values = complexity_metrics(batch.attributions, self.settings.eps)
        reasons = {column: [ALL_ZERO_MAP if v != v else None for v in tensor.cpu().tolist()]
                   for column, tensor in values.items()}
        return Evaluation(values, reasons)
