"""Superpixels for LIME: skimage's quickshift or SLIC with the ``lime`` package's parameters.

Labels are always consecutive ``0..F-1``: lime counts features with ``np.unique(segments)`` and then switches
feature ``j`` off by masking ``segments == j``, so it silently assumes exactly that.

Segmentation runs on CPU worker *processes*: skimage's quickshift holds the GIL (two threads on two cores run it
no faster than one), and at 224 px it costs ≈ 0.3 s of CPU per image, ×11 with Max-Sensitivity's re-segmentation,
while a GPU runs LIME's 1,000 forwards of an image in a fraction of that. :func:`submit_segmentation` returns
futures, so LIME starts the forwards of the first image while the pool still segments the others.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Sequence

import numpy as np
from skimage.segmentation import quickshift, slic

from ..cores import usable_cores
from .settings import LimeSettings


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


# ---------------------------------------------------------------------------------------------------- worker pool


def default_segmentation_workers() -> int:
    """One process per usable core but one (left to the main process, which feeds the device); 1 = inline."""
    return max(1, min(usable_cores() - 1, 32))


_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_workers: int | None = None  # None: default_segmentation_workers()


def set_segmentation_workers(workers: int | None) -> None:
    """How many processes segment for this process's LIME (None: the default; 1: inline, no pool).

    A worker sharing its node with others should pass its own share of the cores.
    """
    global _pool, _pool_workers
    if workers is not None and workers < 1:
        raise ValueError(f"segmentation workers must be ≥ 1, got {workers}")
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True, cancel_futures=True)
            _pool = None
        _pool_workers = workers


def segmentation_workers() -> int:
    return _pool_workers if _pool_workers is not None else default_segmentation_workers()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver, not fork: the parent runs torch's OpenMP threads, which a forked child would inherit locked.
    # Preloading this module (instead of __main__, the default) means every child starts with skimage imported
    # and never re-imports the parent's script (a Ray worker's, pytest's).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _shared_pool() -> ProcessPoolExecutor | None:
    global _pool
    workers = segmentation_workers()
    if workers <= 1:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = _new_pool(workers)
        return _pool


def submit_segmentation(
    images_hwc: Sequence[np.ndarray], settings: LimeSettings, seeds: Sequence[int]
) -> list[Future | "_LazyResult"]:
    """One future per image of :func:`segment`'s labels (``.result()``), computed on the shared pool.

    Without a pool (one core) an image is segmented when its result is first asked for, on the caller's thread, so a
    caller that consumes them in order interleaves segmentation with its own work either way.
    """
    if len(images_hwc) != len(seeds):
        raise ValueError(f"{len(images_hwc)} images but {len(seeds)} seeds")
    pool = _shared_pool()
    if pool is None:
        return [_LazyResult(image, settings, int(seed)) for image, seed in zip(images_hwc, seeds)]
    return [pool.submit(segment, image, settings, int(seed)) for image, seed in zip(images_hwc, seeds)]


class _LazyResult:
    """Segments on the caller's thread at the first ``result()``: the inline stand-in for a pool's future."""

    def __init__(self, image: np.ndarray, settings: LimeSettings, seed: int):
        self._args: tuple | None = (image, settings, seed)
        self._labels: np.ndarray | None = None

    def result(self, timeout: float | None = None) -> np.ndarray:
        if self._args is not None:
            self._labels = segment(*self._args)
            self._args = None
        return self._labels


def segment_batch(
    images_hwc: Sequence[np.ndarray], settings: LimeSettings, seeds: Sequence[int], max_workers: int | None = None
) -> list[np.ndarray]:
    """:func:`segment` for each image: on the shared pool (``max_workers=None``), inline (1), or a pool of that many."""
    if len(images_hwc) != len(seeds):
        raise ValueError(f"{len(images_hwc)} images but {len(seeds)} seeds")
    if max_workers is None:
        return [future.result() for future in submit_segmentation(images_hwc, settings, seeds)]
    if max_workers <= 1:
        return [segment(image, settings, int(seed)) for image, seed in zip(images_hwc, seeds)]
    with _new_pool(max_workers) as pool:
        return list(pool.map(segment, images_hwc, [settings] * len(seeds), [int(seed) for seed in seeds]))
