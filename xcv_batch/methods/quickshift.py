"""scikit-image's ``quickshift`` in torch, batched over images, on whichever device holds them.

It reproduces ``skimage.segmentation.quickshift(image, ratio, kernel_size, max_dist, sigma=0, convert2lab=True,
rng=seed)`` of scikit-image 0.26 step by step (Vedaldi & Soatto 2008, "Quick shift and kernel methods for mode
seeking", as scikit-image implements it):

1. sRGB → CIE Lab with scikit-image's own ``rgb2lab`` on the host, then every channel × ``ratio``;
2. each pixel's density starts at scikit-image's tie-break noise, ``default_rng(seed).normal(scale=1e-5, (H, W))``
   drawn on the host with numpy (the same stream), then accumulates ``exp(-d² / (2·kernel_size²))`` over the square
   window of half-width ``ceil(3·kernel_size)`` clipped to the image, ``d²`` being the squared distance in
   (Lab·ratio, row, column) space;
3. each pixel's parent is the nearest pixel of strictly higher density in that window (the first one in row-major
   window order on equal distances), kept only when its distance is ≤ ``max_dist``;
4. every pixel follows its parents to a root; labels number the roots in flat-index order (``np.unique``'s inverse).

Everything runs in float64, like scikit-image on a float64 image, and every sum is taken in scikit-image's order
(channels, then rows, then columns; window offsets in row-major order), so the only difference left is the
last-bit difference between torch's ``exp`` and the C library's.
They can move a label only where two densities or two distances tie to ~1e-15 relative; the tests measure the share
of pixels that differ.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from skimage.color import rgb2lab

def tie_break_noise(height: int, width: int, seeds: Sequence[int]) -> np.ndarray:
    """(B, H, W) float64: scikit-image's ``default_rng(seed).normal(scale=1e-5, size=(H, W))`` for each seed."""
    return np.stack([np.random.default_rng(int(seed)).normal(scale=0.00001, size=(height, width)) for seed in seeds])


def quickshift(
    images_hwc: Sequence[np.ndarray],
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    kernel_size: float = 5.0,
    max_dist: float = 10.0,
    ratio: float = 1.0,
    sigma: float = 0.0,
    convert2lab: bool = True,
) -> torch.Tensor:
    """Same-sized (H, W, 3) host images in [0, 1] → (B, H, W) int64 labels ``0..F-1`` on ``device``.

    Each image's labels are ``skimage.segmentation.quickshift(image, ratio=ratio, kernel_size=kernel_size,
    max_dist=max_dist, sigma=0, convert2lab=convert2lab, rng=seeds[i])`` of its float64 copy. The Lab conversion
    runs on the host with scikit-image's own ``rgb2lab`` (a few milliseconds; numpy's BLAS sums the colour matrix
    product in an order torch does not reproduce bit for bit), the window work on ``device``. Only ``sigma=0`` (no
    pre-smoothing, scikit-image's default and the only value LIME uses) is implemented.
    """
    if len(images_hwc) != len(seeds):
        raise ValueError(f"{len(images_hwc)} images but {len(seeds)} seeds")
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be ≥ 1, got {kernel_size}")
    if sigma != 0:
        raise ValueError(f"sigma must be 0 (pre-smoothing is not implemented), got {sigma}")
    shapes = {np.shape(image) for image in images_hwc}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise ValueError(f"quickshift needs same-sized (H, W, 3) images, got shapes {sorted(shapes)}")
    height, width, _ = next(iter(shapes))
    pixels = [np.asarray(image, dtype=np.float64) for image in images_hwc]
    if convert2lab:
        pixels = [rgb2lab(image) for image in pixels]
    # (B, 3, H, W) after scaling by ratio on the host, where scikit-image scales too
    scaled = np.stack([np.ascontiguousarray(image * ratio) for image in pixels]).transpose(0, 3, 1, 2)
    device = torch.device(device)
    image = torch.from_numpy(np.ascontiguousarray(scaled)).to(device)
    batch = image.shape[0]
    noise = torch.from_numpy(tie_break_noise(height, width, seeds)).to(device)
    densities = _densities(image, noise, float(kernel_size))
    parents = _parents(image, densities, float(kernel_size), float(max_dist))
    return _label_roots(_roots(parents)).view(batch, height, width)


def _window(kernel_size: float) -> int:
    """Half-width of the square window, ``ceil(3 · kernel_size)``, as scikit-image's ``<int>ceil(3 * kernel_size)``."""
    return int(math.ceil(3 * kernel_size))


class _Offsets:
    """The window's offsets in scikit-image's order, each with the overlapping slices of a pixel and its neighbour.

    For offset (dy, dx), ``here`` selects the pixels whose neighbour (r + dy, c + dx) lies inside the image, and
    ``there`` those neighbours; pixels near the border simply get no term, as scikit-image clips its window.
    """

    def __init__(self, height: int, width: int, half: int):
        self.items = []
        for dy in range(-half, half + 1):
            if abs(dy) >= height:
                continue
            rows_here = slice(max(0, -dy), height - max(0, dy))
            rows_there = slice(max(0, dy), height - max(0, -dy))
            for dx in range(-half, half + 1):
                if abs(dx) >= width:
                    continue
                cols_here = slice(max(0, -dx), width - max(0, dx))
                cols_there = slice(max(0, dx), width - max(0, -dx))
                self.items.append((dy, dx, (..., rows_here, cols_here), (..., rows_there, cols_there)))


def _squared_distance(image: torch.Tensor, here, there, dy: int, dx: int) -> torch.Tensor:
    """d² between each pixel and its neighbour at (dy, dx), summed in scikit-image's order: channels, row, column."""
    diff = image[here] - image[there]  # (B, C, h, w)
    squared = diff * diff
    dist = squared[:, 0]
    for channel in range(1, squared.shape[1]):
        dist = dist + squared[:, channel]
    return dist + float(dy * dy) + float(dx * dx)


def _densities(image: torch.Tensor, noise: torch.Tensor, kernel_size: float) -> torch.Tensor:
    """(B, H, W): noise + Σ over the window of exp(d² · (−0.5 / kernel_size²)), in scikit-image's summation order."""
    _, _, height, width = image.shape
    inverse = -0.5 / (kernel_size * kernel_size)
    densities = noise.clone()
    for dy, dx, here, there in _Offsets(height, width, _window(kernel_size)).items:
        term = torch.exp(_squared_distance(image, here, there, dy, dx) * inverse)
        densities[here] += term
    return densities


def _parents(image: torch.Tensor, densities: torch.Tensor, kernel_size: float, max_dist: float) -> torch.Tensor:
    """(B, H·W) flat index of each pixel's parent: the nearest denser pixel of its window within ``max_dist``."""
    batch, _, height, width = image.shape
    device = image.device
    index = torch.arange(height * width, device=device).view(height, width)
    parents = index.expand(batch, height, width).clone()
    closest = torch.full((batch, height, width), float("inf"), dtype=torch.float64, device=device)
    for dy, dx, here, there in _Offsets(height, width, _window(kernel_size)).items:
        dist = _squared_distance(image, here, there, dy, dx)
        # strictly denser and strictly nearer: on equal distances the first offset in row-major order stays
        better = (densities[there] > densities[here]) & (dist < closest[here])
        closest[here] = torch.where(better, dist, closest[here])
        parents[here] = torch.where(better, index[there], parents[here])
    # scikit-image compares sqrt(d²) > max_dist; sqrt is correctly rounded, so compare the same way
    too_far = torch.sqrt(closest) > max_dist
    parents = torch.where(too_far, index, parents)
    return parents.view(batch, height * width)


def _roots(parents: torch.Tensor) -> torch.Tensor:
    """Follow parent links until every pixel points at its root (pointer jumping, as scikit-image flattens)."""
    while True:
        jumped = torch.gather(parents, 1, parents)
        if torch.equal(jumped, parents):
            return parents
        parents = jumped


def _label_roots(roots: torch.Tensor) -> torch.Tensor:
    """Roots → labels ``0..F-1`` numbered by the roots' flat index, as ``np.unique(roots, return_inverse=True)``."""
    flat_index = torch.arange(roots.shape[1], device=roots.device)
    is_root = roots == flat_index
    rank = torch.cumsum(is_root, dim=1) - 1  # at a root: how many roots come before it
    return torch.gather(rank, 1, roots)
