"""Occlusion (Zeiler & Fergus 2014) as Captum's ``Occlusion`` with a square window over all three channels.

Captum's equivalent call is ``Occlusion(net).attribute(x, sliding_window_shapes=(3, w, w), strides=(3, s, s),
baselines=b, target=t)``: windows start at 0, s, 2s, … up to the first start ≥ ``D - w`` (``ceil((D - w) / s) + 1``
starts per spatial dimension, the last window clipped at the border), and a pixel gets the mean of
``f(x) - f(occluded)`` over the windows that cover it. A window is a row interval times a column
interval, so the per-pixel sums are ``rows.T @ diffs @ cols``: no full-size mask per window is ever kept.

The target scores come from one of two exact paths: full forwards of every occluded copy, or incremental inference
(:mod:`.incremental`: the clean image once, then per copy only the activations its window can change). The setting
``incremental`` picks (auto: the path a short probe measures faster on the device, see :mod:`.occlusion_path`);
:attr:`Occlusion.last_path` says which ran, and each row's ``occlusion_path`` column records it.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .base import AttributionMethod, chunk_slices, target_outputs
from .incremental import Plan, copies_step, incremental_scores, lower, make_plan
from .occlusion_path import PathChoice, choose_path
from .settings import OcclusionSettings

log = logging.getLogger(__name__)

def window_cover(size: int, window: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_windows, size) bool: which positions each window covers, Captum's starts and edge clipping."""
    n_windows = -(-(size - window) // stride) + 1  # ceil((size - window) / stride) + 1, in integers
    starts = torch.arange(n_windows, device=device).unsqueeze(1) * stride
    positions = torch.arange(size, device=device).unsqueeze(0)
    return (positions >= starts) & (positions < starts + window)


class Occlusion(AttributionMethod):
    """Registered as ``occlusion`` in methods/settings.py."""

    def __init__(self, classifier, settings, forward_batch: int = 64):
        super().__init__(classifier, settings, forward_batch)
        #: "incremental" or "full": the path the last ``attribute`` call ran
        self.last_path: str | None = None
        #: the incremental plan's predicted FLOPs per copy ÷ a full forward's (None when the model is not lowered)
        self.last_flop_ratio: float | None = None
        self._plans: dict = {}
        #: the last call's :class:`~.occlusion_path.PathChoice` (path and why)
        self.last_choice: PathChoice | None = None
        #: the probe's clock (tests give an instrumented one)
        self.clock: Callable[[], float] = time.perf_counter

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        settings: OcclusionSettings = self.settings
        n_images, channels, height, width = inputs.shape
        targets = targets.to(inputs.device)
        if settings.window > min(height, width):
            raise ConfigError(
                "methods.occlusion.window",
                f"{settings.window} is larger than the {height}×{width} input; use a window ≤ {min(height, width)}",
            )
        rows = window_cover(height, settings.window, settings.stride, inputs.device)
        cols = window_cover(width, settings.window, settings.stride, inputs.device)
        plan = self._chosen_plan(tuple(inputs.shape[1:]), n_images)
        if plan is not None:
            with torch.inference_mode():
                scores = incremental_scores(plan, inputs, targets, settings.baseline, self.forward_batch,
                                            on_rows=self.report_rows)
            # Cloned outside inference_mode: callers get an ordinary tensor (inference tensors refuse in-place edits).
            scores = scores.clone()
            self.last_path = "incremental"
        else:
            scores = self._full_scores(inputs, targets, rows, cols)
            self.last_path = "full"
        drops = scores[:, -1:] - scores[:, :-1]

        n_cols = cols.shape[0]
        rows_f, cols_f = rows.to(drops.dtype), cols.to(drops.dtype)
        drops = drops.view(n_images, rows.shape[0], n_cols)
        summed = torch.einsum("brc,ri,cj->bij", drops, rows_f, cols_f)
        # stride ≤ window (checked in the settings), so every pixel is covered at least once.
        covering = rows_f.sum(0).unsqueeze(1) * cols_f.sum(0).unsqueeze(0)
        per_pixel = summed / covering
        return per_pixel.float().unsqueeze(1).expand(n_images, channels, height, width).contiguous()

    def row_probe(self, image: torch.Tensor, rows: int) -> tuple[str, Callable[[], None] | None]:
        """The path ``attribute`` will choose for images of this shape; for the incremental one, a step computing
        ``rows`` occluded copies of ``image`` (its clean pass done once beforehand)."""
        plan = self._chosen_plan(tuple(image.shape[1:]))
        if plan is None:
            return "full forwards", None
        return "incremental", copies_step(plan, image, self.settings.baseline, rows)

    def _full_scores(self, inputs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor:
        """(B, n_windows + 1) target scores from full forwards: every window (row-major), then unoccluded."""
        net = self.classifier.net
        n_images = inputs.shape[0]
        per_image = rows.shape[0] * cols.shape[0] + 1
        # Kept in the model's dtype until the end: the drops are small differences of logits.
        scores = torch.empty(n_images * per_image, dtype=inputs.dtype, device=inputs.device)
        # inference_mode only around the forwards: the tensors filled here were made outside it, so callers get
        # ordinary tensors back (inference tensors refuse later in-place edits).
        with torch.inference_mode():
            for chunk in chunk_slices(n_images * per_image, self.forward_batch):
                image = torch.arange(chunk.start, chunk.stop, device=inputs.device) // per_image
                scores[chunk] = target_outputs(net(self._occluded(inputs, rows, cols, chunk)), targets[image])
        return scores.view(n_images, per_image)

    def _occluded(self, inputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunk: slice) -> torch.Tensor:
        """The copies ``chunk`` of the image-major stream in which each image contributes its n_windows occluded
        copies (row-major) and, last, itself unoccluded: so the clean forward rides in full chunks instead of a
        small batch of its own."""
        n_cols = cols.shape[0]
        n_windows = rows.shape[0] * n_cols
        pair = torch.arange(chunk.start, chunk.stop, device=inputs.device)
        image, window = pair // (n_windows + 1), pair % (n_windows + 1)
        occluding = (window < n_windows).view(-1, 1, 1)
        window = window.clamp(max=n_windows - 1)
        mask = rows[window // n_cols].unsqueeze(2) & cols[window % n_cols].unsqueeze(1)  # (n, H, W)
        mask &= occluding
        return torch.where(mask.unsqueeze(1), self.settings.baseline, inputs[image])

    def _chosen_plan(self, image_shape: tuple[int, int, int], n_images: int = 1) -> Plan | None:
        """The incremental plan to run for calls on ``n_images`` images of ``image_shape``, or None for full
        forwards (off, not lowerable, or not faster: :func:`.occlusion_path.choose_path` decides, probing both
        paths once per process on the classifier's device where the FLOPs leave it open)."""
        settings = self.settings
        plan = None if settings.incremental is False else self.plan(image_shape)
        self.last_flop_ratio = None if plan is None else plan.flop_ratio
        device = torch.device(self.classifier.device)
        _, height, width = image_shape
        rows = window_cover(height, settings.window, settings.stride, device)
        cols = window_cover(width, settings.window, settings.stride, device)
        dtype = next(self.classifier.net.parameters()).dtype
        self.last_choice = choose_path(
            settings.incremental, plan, self.classifier.net, image_shape, settings.window, settings.stride,
            settings.baseline, n_images, self.forward_batch, device, dtype,
            lambda inputs, chunk: self._occluded(inputs, rows, cols, chunk), self.clock)
        return plan if self.last_choice.path == "incremental" else None

    def row_columns(self) -> dict[str, str | None]:
        """The row's ``occlusion_path``: the path the last ``attribute`` call ran."""
        return {"occlusion_path": self.last_path}

    def plan(self, image_shape: tuple[int, int, int]) -> Plan | None:
        """The incremental plan of this network for images of ``image_shape`` (cached), None if not lowerable."""
        # A torch.compile wrapper (compute.compile) is lowered as the module it wraps: the plan runs eager.
        net = getattr(self.classifier.net, "_orig_mod", self.classifier.net)
        if self._plans.get("net") is not net:  # a new network (the classifier was swapped): plans of the old go
            self._plans = {"net": net}
        key = (image_shape, self.settings.window, self.settings.stride)
        if key not in self._plans:
            graph = lower(net, image_shape)
            self._plans[key] = None if graph is None else make_plan(
                net, graph, image_shape[1], image_shape[2], self.settings.window, self.settings.stride)
        return self._plans[key]
