"""The model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains the *model* must change when the model's learned weights are replaced by random ones. Cascading
randomisation re-initialises the top ``depth`` blocks (from the output down); the check compares each image's map
from the trained model with the map the same method gives on the randomised copy, by the Spearman rank correlation
and the SSIM of the absolute-value maps (the paper's "absolute value" variant). Low similarity passes.

The randomised copy is built once per job (``randomised_copy``) and then used like any classifier, e.g.
``build_method(name, randomised_classifier, settings, forward_batch)``: :class:`Randomisation`, the metric the runner
evaluates, builds every method of the job on it once per worker.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..methods import build_method
from ..models.classifier import Classifier, place_on_device
from ..seeding import derive_seed
from .base import Evaluation, MapBatch, Metric, MetricContext

#: A method passes when its median Spearman correlation (absolute maps, trained vs randomised) is below this. The
#: paper sets no number and judges by eye; 0.5 is our convention: a map that keeps most of its pixel ranking after
#: the top of the network is replaced by noise is explaining the input (edges, colour), not the model. The paper's
#: headline failures, Guided Backprop and Guided Grad-CAM, barely change under the cascade; plain gradients do.
RANDOMISATION_SPEARMAN_THRESHOLD = 0.5

#: SSIM as Wang et al. 2004 and skimage's ``structural_similarity(gaussian_weights=True, data_range=1,
#: use_sample_covariance=False)``: Gaussian window σ = 1.5 truncated at 3.5σ (11 taps), K1 = 0.01, K2 = 0.03.
SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


# ------------------------------------------------------------------------------------------- the randomised copy
def parameterised_blocks(net: nn.Module) -> list[str]:
    """Names of the top-level children that hold parameters, input to output (ResNet: conv1, bn1, layer1 … fc)."""
    return [name for name, child in net.named_children() if next(child.parameters(), None) is not None]


def randomised_copy(classifier: Classifier, depth: int, seed: int) -> Classifier:
    """A copy of ``classifier`` whose last ``depth`` parameterised blocks are re-initialised; the original is untouched.

    Every module in those blocks with a ``reset_parameters`` (conv, linear, batch norm: weights and running
    statistics) is reset under a forked RNG seeded from (``seed``, block name), on the CPU, so the weights are the
    same on every worker and device, and a block gets the same weights at every depth (the cascade only adds blocks).
    Parameters held directly by a module without ``reset_parameters`` keep their values. A method built on the copy
    (Guided Grad-CAM's ReLU switch included) acts on the copy alone.
    """
    blocks = parameterised_blocks(classifier.net)
    if not 1 <= depth <= len(blocks):
        raise ConfigError(
            "metrics.randomisation.depth",
            f"must be between 1 and {len(blocks)} (the parameterised blocks of {classifier.arch}: "
            f"{', '.join(reversed(blocks))}), got {depth}",
        )
    # The copy keeps eval mode and frozen parameters (reset_parameters changes values in place, not those flags);
    # switchable ReLUs a Guided Grad-CAM put in the original are copied with a switch of their own.
    net = copy.deepcopy(classifier.net).to("cpu")
    children = dict(net.named_children())
    for name in blocks[-depth:]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, name, "randomisation"))
            for module in children[name].modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()

    return dataclasses.replace(
        classifier,
        net=place_on_device(net, classifier.device),
        weights=f"{classifier.weights}, top {depth} blocks re-initialised (seed {seed})",
    )


# ------------------------------------------------------------------------------------------------ map similarity
def absolute_saliency(attributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H, W) float64: Σ_c |a_c| per pixel (the paper's absolute-value maps)."""
    return attributions.detach().double().abs().sum(dim=1)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, N) → (B, N) float64 ranks 1 … N per row, ties given their mean rank (as ``scipy.stats.rankdata``).

    Ties matter here: Guided Grad-CAM maps are mostly zeros and LIME maps are constant per superpixel.
    """
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    n = values.shape[1]
    position = torch.arange(n, device=values.device).expand_as(order)
    starts = torch.ones_like(order, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, n).flip(1).cummin(dim=1).values.flip(1)
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    ranks.scatter_(1, order, (first + last).double() / 2 + 1)
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row pair of (B, N) tensors → (B,) float64; NaN where a row is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(dim=1, keepdim=True)
    ry = ry - ry.mean(dim=1, keepdim=True)
    return (rx * ry).sum(1) / (rx.pow(2).sum(1).sqrt() * ry.pow(2).sum(1).sqrt())


def _normalise01(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) min-max scaled to [0, 1] per image; a constant map becomes zeros."""
    low = maps.flatten(1).min(dim=1).values.view(-1, 1, 1)
    span = maps.flatten(1).max(dim=1).values.view(-1, 1, 1) - low
    return (maps - low) / torch.where(span == 0, torch.ones_like(span), span)


def ssim(x: torch.Tensor, y: torch.Tensor, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM of each pair of (B, H, W) images with values in [0, 1] → (B,) float64.

    skimage's Gaussian-window SSIM: local statistics from a separable Gaussian filter, the SSIM map averaged over
    the pixels at least one window radius from the border (so border padding never enters the result).
    """
    radius = int(_SSIM_TRUNCATE * sigma + 0.5)  # scipy.ndimage's radius
    if min(x.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs maps of at least {2 * radius + 1} px a side, got {tuple(x.shape[-2:])}")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    window = window / window.sum()

    x, y = x.double(), y.double()
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (B, 5, H, W)
    channels = stack.shape[1]
    filtered = F.conv2d(stack, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    filtered = F.conv2d(filtered, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    ux, uy, uxx, uyy, uxy = filtered.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data range 1
    index = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return index.flatten(1).mean(dim=1)


def map_similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Similarity of each pair of (B, C, H, W) maps, trained ``a`` vs randomised ``b`` → columns of (B,) float32.

    ``randomisation_spearman``: rank correlation of the per-pixel Σ_c |attribution| (NaN if either map is constant);
    ``randomisation_ssim``: SSIM of those maps, each min-max normalised to [0, 1] per image.
    """
    sa, sb = absolute_saliency(a), absolute_saliency(b.to(a.device))
    return {
        "randomisation_spearman": spearman(sa.flatten(1), sb.flatten(1)).float(),
        "randomisation_ssim": ssim(_normalise01(sa), _normalise01(sb)).float(),
    }


def passes_randomisation(spearman_median: float, threshold: float = RANDOMISATION_SPEARMAN_THRESHOLD) -> bool:
    """Whether a method passes: its median ``randomisation_spearman`` is below ``threshold`` (NaN fails)."""
    return bool(spearman_median < threshold)


class Randomisation(Metric):
    """Each map against the same method's map of the same image on the randomised model (same seeds)."""

    def __init__(self, settings, context: MetricContext):
        super().__init__(settings, context)
        # Built once per worker; seeded by the job, so every worker holds the same randomised weights.
        randomised = context.execution(randomised_copy(context.classifier, settings.depth, seed=context.seed))
        self.randomised_methods = {
            name: build_method(name, randomised, context.method_settings[name], method.forward_batch)
            for name, method in context.methods.items()
        }
        for name, method in self.randomised_methods.items():
            method.name = f"{name} on the randomised model"  # what out-of-memory halving logs and remembers

    def evaluate(self, batch: MapBatch) -> Evaluation:
        randomised = self.randomised_methods[batch.method_name]
        return Evaluation(map_similarity(
            batch.attributions, randomised.attribute(batch.inputs, batch.targets, batch.seeds).float()))

    def sized(self, batch: MapBatch):
        return self.randomised_methods[batch.method_name]
