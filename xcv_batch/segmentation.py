"""Superpixels for LIME: skimage's quickshift or SLIC with the ``lime`` package's parameters.

Labels are always consecutive ``0..F-1``: lime counts features with ``np.unique(segments)`` and then switches
feature ``j`` off by masking ``segments == j``, so it silently assumes exactly that.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from skimage.segmentation import quickshift, slic

from .methods.settings import LimeSettings


def segment(image_hwc: np.ndarray, settings: LimeSettings, seed: int) -> np.ndarray:
    """(H, W, 3) float image in [0, 1] → (H, W) int64 superpixel labels ``0..F-1``."""
    if settings.segmentation == "quickshift":
        # lime's SegmentationAlgorithm passes ``random_seed=``, which skimage 0.21 renamed ``rng`` (0.23 removed
        # the old name); lime's parameter filter then drops it, so lime itself always gets skimage's default, 42.
        # We pass the image's seed, which is what lime meant; it only breaks ties between equal densities.
        labels = quickshift(
            image_hwc,
            kernel_size=settings.kernel_size,
            max_dist=settings.max_dist,
            ratio=settings.ratio,
            rng=seed,
        )
    elif settings.segmentation == "slic":
        labels = slic(image_hwc, n_segments=settings.n_segments, compactness=settings.compactness, start_label=0)
    else:
        raise ValueError(f"unknown segmentation {settings.segmentation!r}")
    return consecutive_labels(labels)


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """The same partition with labels ``0..F-1`` in the order of the original labels (identity if already so)."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def segment_batch(
    images_hwc: Sequence[np.ndarray], settings: LimeSettings, seeds: Sequence[int], max_workers: int | None = None
) -> list[np.ndarray]:
    """:func:`segment` for each image, on a few threads (skimage's Cython loops release the GIL in parts)."""
    if len(images_hwc) != len(seeds):
        raise ValueError(f"{len(images_hwc)} images but {len(seeds)} seeds")
    workers = max_workers or min(len(images_hwc), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [segment(image, settings, seed) for image, seed in zip(images_hwc, seeds)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: segment(pair[0], settings, pair[1]), zip(images_hwc, seeds)))
