"""Occlusion (Zeiler & Fergus 2014) as Captum's ``Occlusion`` with a square window over all three channels.

Captum's equivalent call is ``Occlusion(net).attribute(x, sliding_window_shapes=(3, w, w), strides=(3, s, s),
baselines=b, target=t)``: windows start at 0, s, 2s, … up to the first start ≥ ``D - w`` (``ceil((D - w) / s) + 1``
starts per spatial dimension, the last window clipped at the border), and a pixel gets the mean of
``f(x) - f(occluded)`` over the windows that cover it. A window is a row interval times a column
interval, so the per-pixel sums are ``rows.T @ diffs @ cols``: no full-size mask per window is ever kept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from .base import AttributionMethod, chunk_slices, target_outputs
from .settings import OcclusionSettings


def window_cover(size: int, window: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_windows, size) bool: which positions each window covers, Captum's starts and edge clipping."""
    n_windows = -(-(size - window) // stride) + 1  # ceil((size - window) / stride) + 1, in integers
    starts = torch.arange(n_windows, device=device).unsqueeze(1) * stride
    positions = torch.arange(size, device=device).unsqueeze(0)
    return (positions >= starts) & (positions < starts + window)


class Occlusion(AttributionMethod):
    name = "occlusion"
    settings_type = OcclusionSettings

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        settings: OcclusionSettings = self.settings
        net = self.classifier.net
        n_images, channels, height, width = inputs.shape
        targets = targets.to(inputs.device)
        if settings.window > min(height, width):
            raise ConfigError(
                "methods.occlusion.window",
                f"{settings.window} is larger than the {height}×{width} input; use a window ≤ {min(height, width)}",
            )
        rows = window_cover(height, settings.window, settings.stride, inputs.device)
        cols = window_cover(width, settings.window, settings.stride, inputs.device)
        n_cols = cols.shape[0]
        n_windows = rows.shape[0] * n_cols

        # Each image contributes n_windows occluded rows and, last, itself unoccluded: one image-major stream, so the
        # clean forward rides in full chunks instead of a small batch of its own.
        per_image = n_windows + 1
        # Kept in the model's dtype until the end: the drops are small differences of logits.
        scores = torch.empty(n_images * per_image, dtype=inputs.dtype, device=inputs.device)
        # inference_mode only around the forwards: the tensors filled here were made outside it, so callers get
        # ordinary tensors back (inference tensors refuse later in-place edits).
        with torch.inference_mode():
            for chunk in chunk_slices(n_images * per_image, self.forward_batch):
                pair = torch.arange(chunk.start, chunk.stop, device=inputs.device)
                image, window = pair // per_image, pair % per_image
                occluding = (window < n_windows).view(-1, 1, 1)
                window = window.clamp(max=n_windows - 1)
                mask = rows[window // n_cols].unsqueeze(2) & cols[window % n_cols].unsqueeze(1)  # (n, H, W)
                mask &= occluding
                occluded = torch.where(mask.unsqueeze(1), settings.baseline, inputs[image])
                scores[chunk] = target_outputs(net(occluded), targets[image])
        scores = scores.view(n_images, per_image)
        drops = scores[:, -1:] - scores[:, :-1]

        rows_f, cols_f = rows.to(drops.dtype), cols.to(drops.dtype)
        drops = drops.view(n_images, rows.shape[0], n_cols)
        summed = torch.einsum("brc,ri,cj->bij", drops, rows_f, cols_f)
        # stride ≤ window (checked in the settings), so every pixel is covered at least once.
        covering = rows_f.sum(0).unsqueeze(1) * cols_f.sum(0).unsqueeze(0)
        per_pixel = summed / covering
        return per_pixel.float().unsqueeze(1).expand(n_images, channels, height, width).contiguous()
