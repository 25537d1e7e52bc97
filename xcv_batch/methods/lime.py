"""LIME, computing what the ``lime`` package computes, batched over images and samples on the model's device.

For one image, lime 0.2.0.1's ``LimeImageExplainer(kernel_width, random_state=seed).explain_instance(image,
classifier_fn, labels=(target,), top_labels=None, hide_color=None, num_samples, segmentation_fn=…,
random_seed=seed)`` computes:

1. superpixels of the image (:mod:`xcv_batch.methods.segmentation`);
2. ``data = RandomState(seed).randint(0, 2, num_samples * F).reshape(num_samples, F)``, first row all ones;
3. for each row, the image with the superpixels of its zeros replaced by the "fudged" image (each superpixel's mean
   colour, or a constant), scored as softmax(logits)[target];
4. weights ``sqrt(exp(-d² / kernel_width²))`` of the cosine distance ``d`` between each row and the all-ones row;
5. ``Ridge(alpha, fit_intercept=True)`` fitted with those sample weights; the coefficients are the explanation.
   (lime's feature selection 'auto' with its default num_features=100000 is 'highest_weights', which keeps every
   feature and only reorders them, so the fit is on all F columns.)

Here the samples of every image of a batch are flattened into one stream and pushed through the network in chunks
of ``forward_batch``, perturbed images are composed on the device, the ridge is solved in closed form in float64 on
the device, and superpixels come either from a CPU process pool while the device works on the images already
segmented, or (``segmenter``) from the torch port of quickshift on the model's device, all images of the batch at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..models.classifier import Preprocessing
from .quickshift import quickshift
from .segmentation import submit_segmentation
from .base import AttributionMethod, chunk_slices, target_outputs
from .settings import LimeSettings


class Lime(AttributionMethod):
    """Registered as ``lime`` in methods/settings.py."""

    def __init__(self, classifier, settings: LimeSettings, forward_batch: int = 64):
        super().__init__(classifier, settings, forward_batch)
        #: superpixels per image of the last ``attribute`` call, in batch order (the worker may log it)
        self.last_num_segments: list[int] = []

    @torch.no_grad()
    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if len(seeds) != inputs.shape[0] or targets.shape[0] != inputs.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs, {targets.shape[0]} targets, {len(seeds)} seeds")
        batch, _, height, width = inputs.shape
        # Every image's segmentation is queued on the CPU pool now; the forwards of image i start as soon as its
        # own segments are back, while the pool works on the next ones.
        pixels = segmentation_images(inputs, self.classifier.preprocessing)
        if resolve_segmenter(self.settings, inputs.device) == "device":
            pending = segment_on_device(pixels, self.settings, seeds, inputs.device)
        else:
            pending = submit_segmentation(pixels, self.settings, seeds)
        images = _PerturbationSources(inputs, pending, seeds, self.settings)
        scores = self._sample_scores(inputs, targets, images)

        self.last_num_segments = [images[i].num_features for i in range(batch)]
        maps = inputs.new_empty((batch, 3, height, width), dtype=torch.float32)
        for i in range(batch):
            source = images[i]
            rows = source.samples.to(torch.float64)
            coefficients, _ = fit_weighted_ridge(
                rows, scores[i], kernel_weights(rows, self.settings.kernel_width), self.settings.alpha
            )
            # Every pixel gets its superpixel's coefficient, the same in all three channels.
            maps[i] = coefficients[source.flat_segments].view(1, height, width).to(torch.float32)
        return maps

    def _sample_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, images: "_PerturbationSources"
    ) -> torch.Tensor:
        """(B, num_samples) float64: softmax(net(perturbed))[target] for every (image, sample row)."""
        batch, channels, height, width = inputs.shape
        num_samples = self.settings.num_samples
        flat_inputs = inputs.reshape(batch, channels, height * width)
        scores = torch.empty(batch * num_samples, dtype=torch.float64, device=inputs.device)
        for chunk in chunk_slices(batch * num_samples, self.forward_batch):
            # A chunk may span the tail of one image's samples and the head of the next one's.
            pieces, piece_targets = [], []
            for i in range(chunk.start // num_samples, (chunk.stop - 1) // num_samples + 1):
                first = max(chunk.start, i * num_samples) - i * num_samples
                stop = min(chunk.stop, (i + 1) * num_samples) - i * num_samples
                source = images[i]
                kept = source.samples[first:stop][:, source.flat_segments]  # (n, H*W): pixel's superpixel is on
                perturbed = torch.where(kept.unsqueeze(1), flat_inputs[i], source.fills)  # (n, 3, H*W)
                pieces.append(perturbed.view(-1, channels, height, width))
                piece_targets.append(targets[i].expand(stop - first))
            logits = self.classifier.net(torch.cat(pieces))
            # lime's classifier_fn returns probabilities; float64 keeps the softmax itself from adding rounding.
            probabilities = torch.softmax(logits.to(torch.float64), dim=1)
            scores[chunk] = target_outputs(probabilities, torch.cat(piece_targets).to(logits.device))
        return scores.view(batch, num_samples)


class _PerturbationSource:
    """What LIME needs of one image on the device: its superpixel of every pixel, off-colours and sample rows."""

    def __init__(self, image_chw: np.ndarray, segments: np.ndarray, seed: int, settings: LimeSettings, device, dtype):
        self.num_features = int(segments.max()) + 1
        self.flat_segments = torch.from_numpy(segments).to(device).view(-1)
        fills = torch.from_numpy(fill_colours(image_chw, segments, settings.hide_color))
        self.fills = fills.to(device, dtype)[:, self.flat_segments]  # (3, H*W): each pixel's "off" value
        rows = sample_rows(self.num_features, settings.num_samples, seed)
        self.samples = torch.from_numpy(rows).to(device, torch.bool)


class _PerturbationSources:
    """Image i's :class:`_PerturbationSource`, built the first time it is asked for (waiting for its segments)."""

    def __init__(self, inputs: torch.Tensor, pending: list, seeds: Sequence[int], settings: LimeSettings):
        self._inputs_cpu = inputs.detach().to("cpu", torch.float64).numpy()
        self._pending, self._seeds, self._settings = pending, seeds, settings
        self._device, self._dtype = inputs.device, inputs.dtype
        self._built: dict[int, _PerturbationSource] = {}

    def __getitem__(self, i: int) -> _PerturbationSource:
        if i not in self._built:
            segments = self._pending[i].result()
            self._built[i] = _PerturbationSource(
                self._inputs_cpu[i], segments, int(self._seeds[i]), self._settings, self._device, self._dtype
            )
        return self._built[i]


def segmentation_images(inputs: torch.Tensor, preprocessing: Preprocessing) -> list[np.ndarray]:
    """Model inputs → the (H, W, 3) float64 pixel images in [0, 1] that lime would be given and segments."""
    pixels = preprocessing.denormalize(inputs).clamp(0, 1)
    return list(pixels.permute(0, 2, 3, 1).to("cpu", torch.float64).numpy())


def resolve_segmenter(settings: LimeSettings, device: torch.device) -> str:
    """``cpu`` or ``device``: where this batch's superpixels are computed.

    auto picks the device when it is a GPU (quickshift's window work is thousands of small elementwise passes, which
    a GPU runs in parallel over the whole batch). On a CPU scikit-image's fused C loop is as fast as the torch port
    at best (scripts/bench_quickshift.py) and runs in the segmentation pool beside the model's forwards, where the
    port would take their threads, so auto keeps it there. SLIC always runs on the CPU.
    """
    if settings.segmentation != "quickshift":
        return "cpu"
    if settings.segmenter == "auto":
        return "cpu" if torch.device(device).type == "cpu" else "device"
    return settings.segmenter


#: images segmented together on the device: bounds the temporaries of one window offset (≈ 5 MB per 224 px image)
DEVICE_SEGMENTATION_CHUNK = 32


def segment_on_device(
    images_hwc: Sequence[np.ndarray], settings: LimeSettings, seeds: Sequence[int], device
) -> list["_Ready"]:
    """:func:`~xcv_batch.methods.segmentation.segment`'s labels for each image, from the torch quickshift on
    ``device``, as ready results (``.result()``) in the shape :func:`submit_segmentation` returns them."""
    labels: list[_Ready] = []
    for start in range(0, len(images_hwc), DEVICE_SEGMENTATION_CHUNK):
        chunk = slice(start, start + DEVICE_SEGMENTATION_CHUNK)
        computed = quickshift(
            images_hwc[chunk], [int(seed) for seed in seeds[chunk]], device,
            kernel_size=settings.kernel_size, max_dist=settings.max_dist, ratio=settings.ratio,
        )
        labels.extend(_Ready(image_labels) for image_labels in computed.cpu().numpy())
    return labels


class _Ready:
    """An already computed result behind a future's ``result()``."""

    def __init__(self, value: np.ndarray):
        self._value = value

    def result(self, timeout: float | None = None) -> np.ndarray:
        return self._value


def sample_rows(num_features: int, num_samples: int, seed: int) -> np.ndarray:
    """lime's ``data_labels`` draw: (num_samples, F) of 0/1, first row all ones (the image itself).

    Equal to lime's own draw when its explainer has ``random_state=seed`` and ``random_seed`` is given explicitly
    (without it, lime first draws a segmentation seed from the same stream, shifting every sample).
    """
    data = np.random.RandomState(seed).randint(0, 2, num_samples * num_features).reshape(num_samples, num_features)
    data[0, :] = 1
    return data


def fill_colours(image_chw: np.ndarray, segments: np.ndarray, hide_color: str | float) -> np.ndarray:
    """(3, F) float64: the colour a superpixel takes when it is switched off (lime's ``fudged_image``).

    ``"mean"`` is lime's ``hide_color=None``: the superpixel's mean colour. lime takes it in pixel space; taking it
    in model-input space is the same because normalisation is affine per channel. A number is a model-input value.
    Computed on the CPU with ``bincount`` because a GPU scatter-add sums in a varying order, and the same seed must
    give the same map bit for bit.
    """
    channels = image_chw.shape[0]
    labels = segments.reshape(-1)
    num_features = int(labels.max()) + 1
    if isinstance(hide_color, str):
        if hide_color != "mean":
            raise ValueError(f"hide_color must be 'mean' or a number, got {hide_color!r}")
        flat = image_chw.reshape(channels, -1).astype(np.float64)
        counts = np.bincount(labels, minlength=num_features)
        sums = [np.bincount(labels, weights=flat[c], minlength=num_features) for c in range(channels)]
        return np.stack(sums) / counts
    return np.full((channels, num_features), float(hide_color))


def kernel_weights(rows: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """lime's sample weights: ``sqrt(exp(-d²/width²))``, ``d`` the cosine distance of each row to the all-ones row.

    For a 0/1 row with k ones out of F, cos = k / (√k·√F) = √(k/F); a zero row has similarity 0, distance 1,
    as in sklearn's ``cosine_distances``.
    """
    ones_per_row = rows.sum(dim=1)
    distances = 1.0 - torch.sqrt(ones_per_row / rows.shape[1])
    return torch.sqrt(torch.exp(-(distances**2) / kernel_width**2))


def fit_weighted_ridge(
    features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's ``Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w)`` in closed form → (coef, intercept).

    Like sklearn: centre X and y on their weighted means (the intercept is not penalised), then solve
    (XcᵀWXc + αI) β = XcᵀW yc. With alpha = 0 the system may be singular; the pseudo-inverse gives the
    minimum-norm solution, as sklearn's least-squares fallback does.
    """
    features, targets, weights = (t.to(torch.float64) for t in (features, targets, weights))
    total = weights.sum()
    feature_mean = weights @ features / total
    target_mean = weights @ targets / total
    centred = features - feature_mean
    weighted = centred * weights.unsqueeze(1)
    gram = weighted.T @ centred
    rhs = weighted.T @ (targets - target_mean)
    if alpha > 0:
        gram = gram + alpha * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        coefficients = torch.linalg.solve(gram, rhs)
    else:
        coefficients = torch.linalg.pinv(gram, hermitian=True) @ rhs
    return coefficients, target_mean - feature_mean @ coefficients
