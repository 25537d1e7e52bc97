"""The benchmark's images: scikit-image's photos, as many as asked for."""

from __future__ import annotations

import torch

from xcv_batch.data.sources import list_images
from xcv_batch.data.images import load_image


def bench_images(n: int, preprocessing) -> torch.Tensor:
    """(n, 3, R, R) pixels in [0, 1]: scikit-image's photos (flipped and rolled for more than six), like real data
    for quickshift, which on noise makes hundreds of one-pixel superpixels."""
    photos = [load_image(record.path, preprocessing) for record in list_images("builtin:skimage")]
    images = []
    for i in range(n):
        image = photos[i % len(photos)]
        variant = i // len(photos)
        if variant % 2:
            image = image.flip(-1)
        if variant >= 2:
            image = image.roll(shifts=(variant * 7, variant * 5), dims=(-2, -1))
        images.append(image)
    return torch.stack(images)
