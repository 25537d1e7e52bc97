"""Faithfulness of a map to the model: infidelity (Yeh et al. 2019) and deletion / insertion AUC (Petsiuk et al. 2018).

Each metric takes the network, a batch of model inputs, their targets and the maps already computed for them, and
returns one value per image. Perturbed copies of *many* images go through the network together, ``forward_batch``
at a time, so a chunk is full whatever the batch looks like, and no value depends on ``forward_batch`` or on which
images share a batch (noise is seeded per image).

Conventions, both following the methods (see ``methods/base.py``):
- infidelity explains the target *logit*, the score every method attributes;
- deletion / insertion follow RISE and read the target *probability* (softmax), whose curve lies in [0, 1].

:class:`Infidelity`, :class:`Deletion` and :class:`Insertion` are these as metrics for the runner; each runs on the
model passes run on, its own ``forward_batch`` copies a pass.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torchvision.transforms.functional as TF
from torch import nn

from ..methods.base import chunk_slices, target_outputs
from ..seeding import derive_seed
from .base import Evaluation, MapBatch, Metric

#: Captum ships no default perturbation for infidelity; its docstring's example draws I ~ N(0, 0.003²) per input
#: element (in model-input space) and perturbs to x − I. We use that scheme and that σ.
DEFAULT_INFIDELITY_NOISE_STD = 0.003

SUBSTRATES: tuple[str, ...] = ("zero", "blur", "mean")


def _logits(net: nn.Module, inputs: torch.Tensor, forward_batch: int) -> torch.Tensor:
    """Forward passes in chunks of ``forward_batch`` rows, without gradients."""
    with torch.no_grad():
        return torch.cat([net(inputs[part]) for part in chunk_slices(inputs.shape[0], forward_batch)])


# ---------------------------------------------------------------------------------------------------- infidelity
def gaussian_perturbations(
    inputs: torch.Tensor, seeds: Sequence[int], n_perturb_samples: int, noise_std: float
) -> torch.Tensor:
    """(B·n, C, H, W) noise I ~ N(0, σ²), image-major (Captum's repeat_interleave order), one generator per image.

    Drawn on the inputs' device, so an image's noise depends on its seed only, not on its batch.
    """
    noise = []
    for x, seed in zip(inputs, seeds):
        g = torch.Generator(device=inputs.device)
        g.manual_seed(int(seed))
        noise.append(torch.randn((n_perturb_samples, *x.shape), generator=g, device=inputs.device, dtype=x.dtype))
    return torch.cat(noise, dim=0) * noise_std


def infidelity(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    attributions: torch.Tensor,
    seeds: Sequence[int],
    n_perturb_samples: int = 10,
    noise_std: float = DEFAULT_INFIDELITY_NOISE_STD,
    forward_batch: int = 64,
    normalize: bool = True,
) -> torch.Tensor:
    """Infidelity of each map → (B,) float32; Captum's ``infidelity`` with I ~ N(0, σ²) and perturbed input x − I.

    ``INFD = E_I[(β · Iᵀ Φ − (f(x) − f(x − I)))²]`` over ``n_perturb_samples`` draws, f the target logit. With
    ``normalize`` (the default, Captum's ``normalize=True``) β = E[Iᵀ Φ · Δf] / E[(Iᵀ Φ)²] is the best scaling of the
    map, so the value does not change when a map is multiplied by a constant (and β = 0 for an all-zero map, as
    Captum's ``safe_div``); without it β = 1. The value scales with σ²: compare only at the same ``noise_std``.
    ``seeds``: one noise seed per image.
    """
    if n_perturb_samples < 1:
        raise ValueError(f"n_perturb_samples must be ≥ 1, got {n_perturb_samples}")
    n = n_perturb_samples
    batch = inputs.shape[0]
    inputs = inputs.detach()
    noise = gaussian_perturbations(inputs, seeds, n, noise_std)

    clean = target_outputs(_logits(net, inputs, forward_batch), targets).double()
    copy_targets = targets.repeat_interleave(n)
    perturbed = torch.empty(batch * n, dtype=torch.float64, device=inputs.device)
    for part in chunk_slices(batch * n, forward_batch):
        owner = torch.arange(part.start, part.stop, device=inputs.device) // n
        with torch.no_grad():
            logits = net(inputs[owner] - noise[part])
        perturbed[part] = target_outputs(logits, copy_targets[part]).double()

    # Sums in float64: with a good map, the normalised value is a small difference of large terms.
    expanded = attributions.to(inputs.device).double().repeat_interleave(n, dim=0)
    predicted = (expanded * noise.double()).flatten(1).sum(1).view(batch, n)  # Iᵀ Φ per copy
    observed = clean.view(batch, 1) - perturbed.view(batch, n)
    if normalize:
        ab = (predicted * observed).sum(1)
        aa = predicted.pow(2).sum(1)
        beta = ab / torch.where(aa == 0, torch.ones_like(aa), aa)
        predicted = beta.view(batch, 1) * predicted
    return ((predicted - observed).pow(2).sum(1) / n).float()


# ---------------------------------------------------------------------------------------- deletion / insertion
def pixel_ranks(attributions: torch.Tensor) -> torch.Tensor:
    """(B, H·W) int64: each pixel's place in the order of removal (0 = first), most positive channel-sum first.

    The channel sum keeps its sign: deletion takes the evidence *for* the target first and counter-evidence last
    (RISE's own maps are non-negative, where sign and magnitude agree). Ties keep raster order (stable sort), so the
    order, and every curve, is deterministic.
    """
    saliency = attributions.detach().float().sum(dim=1).flatten(1)
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def make_substrate(
    inputs: torch.Tensor, substrate: str, blur_sigma: float = 5.0, blur_kernel_size: int = 11
) -> torch.Tensor:
    """What a removed (or not yet inserted) pixel shows, in model-input space.

    ``zero``: 0, the dataset mean colour after normalisation (RISE's deletion substrate); ``blur``: the image blurred by
    a Gaussian (RISE's insertion substrate was σ = 5 on an 11-px kernel; torchvision's blur, reflect-padded);
    ``mean``: each image's per-channel mean.
    """
    if substrate == "zero":
        return torch.zeros_like(inputs)
    if substrate == "blur":
        return TF.gaussian_blur(inputs, [blur_kernel_size, blur_kernel_size], [blur_sigma, blur_sigma])
    if substrate == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)
    raise ValueError(f"substrate must be one of {', '.join(SUBSTRATES)}, got {substrate!r}")


def causal_curves(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    attributions: torch.Tensor,
    mode: Literal["deletion", "insertion"],
    n_steps: int = 50,
    substrate: str = "zero",
    blur_sigma: float = 5.0,
    blur_kernel_size: int = 11,
    forward_batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE's deletion or insertion curve: (fractions (S+1,), target probabilities (B, S+1)), S = ``n_steps``.

    Step k has the first ``min(k · ⌈HW/S⌉, HW)`` pixels of the attribution order (all channels of a pixel together)
    taken from the substrate (deletion) or from the image on top of the substrate (insertion); ``fractions`` is the
    share of pixels so changed, 0 … 1. All B·(S+1) images are built chunk by chunk, ``forward_batch`` at a time.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}")
    inputs = inputs.detach()
    batch, _, height, width = inputs.shape
    pixels = height * width
    per_step = math.ceil(pixels / n_steps)  # RISE: a fixed number of pixels per step (224 at 224², i.e. S = 224)
    changed = (torch.arange(n_steps + 1, device=inputs.device) * per_step).clamp_max(pixels)

    ranks = pixel_ranks(attributions.to(inputs.device))
    background = make_substrate(inputs, substrate, blur_sigma, blur_kernel_size)
    start, finish = (inputs, background) if mode == "deletion" else (background, inputs)
    copies = n_steps + 1
    copy_targets = targets.repeat_interleave(copies)
    probabilities = torch.empty(batch * copies, dtype=torch.float32, device=inputs.device)
    for part in chunk_slices(batch * copies, forward_batch):
        row = torch.arange(part.start, part.stop, device=inputs.device)
        image, step = row // copies, row % copies
        taken = (ranks[image] < changed[step].view(-1, 1)).view(-1, 1, height, width)
        stepped = torch.where(taken, finish[image], start[image])
        with torch.no_grad():
            logits = net(stepped).float()
        probabilities[part] = target_outputs(torch.softmax(logits, dim=1), copy_targets[part])
    return changed.float() / pixels, probabilities.view(batch, copies)


def _curve_auc(mode: Literal["deletion", "insertion"], *args, **kwargs) -> torch.Tensor:
    fractions, probabilities = causal_curves(*args, mode=mode, **kwargs)
    # Trapezoids over the actual fractions: with H·W divisible by n_steps they are RISE's evenly spaced points.
    return torch.trapezoid(probabilities, fractions, dim=1)


def deletion_auc(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    attributions: torch.Tensor,
    n_steps: int = 50,
    substrate: str = "zero",
    blur_sigma: float = 5.0,
    blur_kernel_size: int = 11,
    forward_batch: int = 64,
) -> torch.Tensor:
    """RISE deletion → (B,): area under the target probability as the most-attributed pixels go first; lower is better.

    RISE's deletion substrate is ``zero``; the other arguments as :func:`causal_curves`.
    """
    return _curve_auc(
        "deletion", net, inputs, targets, attributions, n_steps=n_steps, substrate=substrate,
        blur_sigma=blur_sigma, blur_kernel_size=blur_kernel_size, forward_batch=forward_batch,
    )


def insertion_auc(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    attributions: torch.Tensor,
    n_steps: int = 50,
    substrate: str = "blur",
    blur_sigma: float = 5.0,
    blur_kernel_size: int = 11,
    forward_batch: int = 64,
) -> torch.Tensor:
    """RISE insertion → (B,): area under the target probability as the most-attributed pixels appear; higher is better.

    Starts from RISE's insertion substrate, ``blur``, by default; the other arguments as :func:`causal_curves`.
    """
    return _curve_auc(
        "insertion", net, inputs, targets, attributions, n_steps=n_steps, substrate=substrate,
        blur_sigma=blur_sigma, blur_kernel_size=blur_kernel_size, forward_batch=forward_batch,
    )


# ------------------------------------------------------------------------------------------------ the metrics
class Infidelity(Metric):
    """:func:`infidelity` of each map, its noise seeded per (image, method)."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        noise_seeds = [derive_seed(self.context.seed, image_id, batch.method_name, "infidelity")
                       for image_id in batch.image_ids]
        return Evaluation({"infidelity": infidelity(
            self.context.executed.net, batch.inputs, batch.targets, batch.attributions, noise_seeds,
            n_perturb_samples=self.settings.n_perturb_samples, noise_std=self.settings.noise_std,
            forward_batch=self.forward_batch)})


class Deletion(Metric):
    """:func:`deletion_auc` of each map."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        c = self.settings
        return Evaluation({"deletion_auc": deletion_auc(
            self.context.executed.net, batch.inputs, batch.targets, batch.attributions, n_steps=c.n_steps,
            substrate=c.substrate, blur_sigma=c.blur_sigma, forward_batch=self.forward_batch)})


class Insertion(Metric):
    """:func:`insertion_auc` of each map."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        c = self.settings
        return Evaluation({"insertion_auc": insertion_auc(
            self.context.executed.net, batch.inputs, batch.targets, batch.attributions, n_steps=c.n_steps,
            substrate=c.substrate, blur_sigma=c.blur_sigma, forward_batch=self.forward_batch)})
