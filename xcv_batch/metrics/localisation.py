"""Localisation metrics: does an attribution map point at the pixels that decide the class?

All three take ``attributions`` (B, C, H, W) — raw maps as the methods return them — and ``masks`` (B, H, W) bool
ground truth (the object's pixels), and return (B,) float64, one value per image, computed batched.

**Which relevance counts.** A pixel's relevance is the sum of its attribution over channels (as in CLEVR-XAI's
"sum" pooling), and all three metrics use only its **positive part** ``r⁺ = max(r, 0)``. Positive attribution is
evidence *for* the explained class; negative attribution is evidence against it, which a faithful map may well
place on clutter. Taking ``|r|`` would reward a map whose strongest value is counter-evidence on a distractor.
This follows the literature: the pointing game (Zhang et al. 2018, "Top-down neural attention by excitation
backprop") takes the maximum of a map of positive evidence, and relevance mass / rank accuracy (Arras et al. 2022,
"CLEVR-XAI", Inf. Fusion 81) measure how much *positive* relevance falls on the ground truth (Quantus documents its
implementation the same way: "the ratio of attributions inside the mask to the sum of overall positive
attributions"). The pointing game has no tolerance margin here (Zhang et al. allow 15 px at 224 px): masks are exact.

**Ties and degenerate maps.** Ties are broken uniformly at random, *in expectation*: a score is the expected
value over all tie-breaking orders, so it is deterministic and a constant map scores exactly the chance level.
A map with no positive relevance (all zero, all negative) is therefore a constant map of ``r⁺ = 0`` and scores the
chance level ``|mask| / (H·W)`` on all three metrics — it points nowhere in particular. An **empty mask** (the
object was cropped away, or the image has none) leaves nothing to find: every metric is NaN for that image.
"""

from __future__ import annotations

import torch

from .base import EMPTY_MASK, Evaluation, MapBatch, Metric


def positive_relevance(attributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) attributions → (B, H·W) float64: the channel sum's positive part, one row per image."""
    if attributions.dim() != 4:
        raise ValueError(f"attributions must be (B, C, H, W), got shape {tuple(attributions.shape)}")
    relevance = attributions.to(torch.float64).sum(dim=1).clamp_min(0)
    return relevance.flatten(1)


def _flat_masks(masks: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    expected = (attributions.shape[0], *attributions.shape[2:])
    if tuple(masks.shape) != expected:
        raise ValueError(f"masks must be (B, H, W) = {expected} to match the attributions, got {tuple(masks.shape)}")
    return masks.to(device=attributions.device, dtype=torch.bool).flatten(1)


def _nan_where_empty(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return values.masked_fill(mask.sum(dim=1) == 0, float("nan"))


def pointing_game(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 when the map's maximum lies in the mask, 0 when not; with tied maxima, the share of them in the mask."""
    relevance = positive_relevance(attributions)
    mask = _flat_masks(masks, attributions)
    at_max = relevance == relevance.max(dim=1, keepdim=True).values
    hits = (at_max & mask).sum(dim=1).to(torch.float64) / at_max.sum(dim=1).to(torch.float64)
    return _nan_where_empty(hits, mask)


def relevance_mass_accuracy(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance that lies inside the mask, R⁺_within / R⁺_total (Arras et al. 2022)."""
    relevance = positive_relevance(attributions)
    mask = _flat_masks(masks, attributions)
    total = relevance.sum(dim=1)
    within = (relevance * mask).sum(dim=1)
    chance = mask.sum(dim=1).to(torch.float64) / mask.shape[1]
    # No positive relevance at all: a constant map, which scores the chance level (see the module docstring).
    mass = torch.where(total > 0, within / total.clamp_min(torch.finfo(torch.float64).tiny), chance)
    return _nan_where_empty(mass, mask)


def relevance_rank_accuracy(attributions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the K most relevant pixels that lie inside the mask, K = the mask's size (Arras et al. 2022).

    Pixels tied with the K-th value fill the remaining places of the top K in expectation: each contributes the
    share of the tied pixels that lie in the mask.
    """
    relevance = positive_relevance(attributions)
    mask = _flat_masks(masks, attributions)
    k = mask.sum(dim=1)
    ordered = relevance.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp_min(0).view(-1, 1))  # the K-th largest value (any value when K = 0)
    above = relevance > kth
    tied = relevance == kth
    n_above = above.sum(dim=1).to(torch.float64)
    places_left = k.to(torch.float64) - n_above  # ≥ 1: the K-th value itself is tied with itself
    tied_in_mask = (tied & mask).sum(dim=1).to(torch.float64) / tied.sum(dim=1).to(torch.float64)
    hits = (above & mask).sum(dim=1).to(torch.float64) + places_left * tied_in_mask
    rank = hits / k.to(torch.float64).clamp_min(1)
    return _nan_where_empty(rank, mask)


def localisation_metrics(attributions: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """All three, keyed by their Parquet column names."""
    return {
        "pointing_game": pointing_game(attributions, masks),
        "relevance_mass": relevance_mass_accuracy(attributions, masks),
        "relevance_rank": relevance_rank_accuracy(attributions, masks),
    }


class Localisation(Metric):
    """Localisation of every image of a batch that has a mask.

    An image without one has no localisation (its columns and cost stay empty, as in a run without masks, whatever
    its batch holds), so it never costs the rest of its batch their values; an empty mask gives NaN and says why.
    A batch where no image has a mask is not evaluated at all.
    """

    def evaluate(self, batch: MapBatch) -> Evaluation | None:
        if batch.masks is None:
            return None
        attributions = batch.attributions
        height, width = attributions.shape[2:]
        no_mask = torch.zeros((height, width), dtype=torch.bool, device=attributions.device)
        stacked = torch.stack([no_mask if m is None else m.to(attributions.device) for m in batch.masks])
        values = localisation_metrics(attributions, stacked)
        why = [EMPTY_MASK if m is not None and not bool(m.any()) else None for m in batch.masks]
        return Evaluation(values, {column: why for column in values}, evaluated=[m is not None for m in batch.masks])
