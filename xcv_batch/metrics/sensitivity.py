"""Max-Sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"), batched.

Captum's ``sensitivity_max``: draw ``n`` inputs uniformly from the L∞ ball of radius ``r`` around x, explain each,
and report ``max_j ‖Φ(x) − Φ(x + δ_j)‖_F / ‖Φ(x)‖_F`` (a zero norm counts as 1; the explainer then reports NaN
with a note). The norms are taken of maps divided by ‖Φ(x)‖_∞, so tiny or huge maps neither underflow nor
overflow. It is a Monte-Carlo lower bound of the true maximum, so values are comparable only at the same ``n``.

Differences from calling Captum per image, none of which changes the definition:
- the perturbed copies of *many* images go through the method in one call (or ``batch_images`` at a time): every
  method streams its rows (copies × noise samples × IG steps, copies × LIME samples) through the model
  ``forward_batch`` at a time, so the nested product never becomes one batch, and more copies per call means
  fuller chunks and, for LIME, more segmentations queued ahead of the device;
- the noise is drawn on the compute device from a generator seeded per image and method, not from the global CPU
  RNG, so a value does not depend on batching or worker count;
- Φ(x) is the attribution the run already computed (same seed, so identical to recomputing it), saving one call;
- a stochastic method explains copy ``j`` of an image with its own seed, derived from the image's seed and ``j``
  (a control map keeps the image's own seed: it is a function of the image alone).

:class:`MaxSensitivity` is its metric for the runner (registered in settings.py under the job's top-level
``sensitivity:`` key); its passes are the method's, so out-of-memory halving shrinks the method's ``forward_batch``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..methods.base import AttributionMethod, chunk_slices
from ..seeding import derive_seed, perturbation_seed
from .base import Evaluation, MapBatch, Metric


def uniform_perturbations(
    inputs: torch.Tensor, seeds: Sequence[int], n_perturb_samples: int, radius: float
) -> torch.Tensor:
    """(B·n, C, H, W): n copies of each input (image-major, as Captum's repeat_interleave) plus U(−r, r) noise."""
    copies = []
    for x, seed in zip(inputs, seeds):
        g = torch.Generator(device=inputs.device)
        g.manual_seed(int(seed))
        noise = torch.rand((n_perturb_samples, *x.shape), generator=g, device=inputs.device, dtype=x.dtype)
        copies.append(x.unsqueeze(0) + (noise * 2 - 1) * radius)
    return torch.cat(copies, dim=0)


def sensitivity_max(
    method: AttributionMethod,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    attributions: torch.Tensor,
    noise_seeds: Sequence[int],
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    batch_images: int | None = None,
) -> torch.Tensor:
    """Max-Sensitivity of ``method`` for each of B inputs → (B,) float32.

    ``seeds`` are the method's seeds of the inputs (for stochastic methods), ``attributions`` the maps already
    computed with them, ``noise_seeds`` one seed per input for the perturbations. The B·n perturbed copies are
    explained in one call, or ``batch_images`` copies per call: that bounds what an explanation call holds (its maps
    and the method's own buffers); the B·n perturbed inputs themselves are drawn up front, B·n images of memory.
    """
    n = n_perturb_samples
    perturbed = uniform_perturbations(inputs, noise_seeds, n, perturb_radius)
    copy_targets = targets.repeat_interleave(n)
    # A control map is a function of the image alone: its perturbed copies keep the image's seed (a random map that
    # changed with the noise would be a map of the noise, not of the image).
    copy_seeds = [int(s) if getattr(method, "control", False) else perturbation_seed(int(s), j)
                  for s in seeds for j in range(n)]

    reference = attributions.to(device=inputs.device, dtype=torch.float32).reshape(inputs.shape[0], -1)
    # The ratio does not change when both maps are divided by one number, so each image's maps are divided by the
    # largest |value| of its reference first: the squares inside the norms can then neither underflow (maps of
    # 1e-21 would give ‖Φ‖ = 0 in float32 and a false "perfectly stable" 0.0) nor overflow.
    scale = reference.abs().amax(dim=1)
    scale = torch.where((scale == 0) | ~torch.isfinite(scale), torch.ones_like(scale), scale)
    reference = reference / scale[:, None]
    reference_norm = torch.linalg.vector_norm(reference, dim=1)
    reference_norm = torch.where(reference_norm == 0, torch.ones_like(reference_norm), reference_norm)

    ratios = torch.empty(perturbed.shape[0], dtype=torch.float32, device=inputs.device)
    for part in chunk_slices(perturbed.shape[0], batch_images or perturbed.shape[0] or 1):
        explained = method.attribute(perturbed[part], copy_targets[part], copy_seeds[part])
        owner = torch.arange(part.start, part.stop, device=inputs.device) // n  # the image each copy came from
        change = reference[owner] - explained.reshape(explained.shape[0], -1).to(torch.float32) / scale[owner, None]
        ratios[part] = torch.linalg.vector_norm(change, dim=1) / reference_norm[owner]
    return ratios.view(-1, n).max(dim=1).values


class MaxSensitivity(Metric):
    """``sensitivity_max`` of each map, with noise seeded per (image, method); NaN values stay as they are (the
    explainer notes an all-zero map's, which has none)."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        noise_seeds = [derive_seed(self.context.seed, image_id, batch.method_name, "sensitivity")
                       for image_id in batch.image_ids]
        values = sensitivity_max(
            batch.method, batch.inputs, batch.targets, batch.seeds, batch.attributions, noise_seeds=noise_seeds,
            n_perturb_samples=self.settings.n_perturb_samples,
            perturb_radius=self.settings.perturb_radius,  # all B·n copies in one call: the method fills passes
        )
        return Evaluation({"sensitivity_max": values.cpu().tolist()})

    def sized(self, batch: MapBatch):
        return batch.method
