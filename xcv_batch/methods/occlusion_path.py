"""Which of Occlusion's two exact paths runs: full forwards of every occluded copy, or incremental inference.

Counting FLOPs alone mispredicts: the incremental path gathers crops, and what that costs against a convolution
depends on the device, the image size, the window grid and the batch (on the 2-core CPU at 96 px, window 8, stride
2, it needs 0.69 of the FLOPs and ran 10× slower). So where the FLOPs make incremental a candidate (below
:data:`AUTO_FLOP_RATIO` of a full forward per copy), ``incremental: auto`` *times* both paths once per process on the
device, size, window grid, batch, forward batch and precision of the call, and runs the faster one. Above that
ratio the full path runs unprobed: small images (the tests' and the smoke job's) then cost no probe and never flip
path between runs.

The probe is short: one small warm-up, then :data:`PROBE_REPEATS` timed chunks of one forward batch per path (the
fastest counts), on seeded random inputs of the call's shape (the values do not change the time). The full path's
seconds per image are ``(n_windows + 1) × chunk seconds ÷ copies``; the incremental path's are its clean pass per
image plus ``n_windows × chunk seconds ÷ copies``. Incremental must beat full by :data:`PROBE_MARGIN` to be
chosen: near a tie the full path runs, so that a noisy probe does not flip the path (and the maps' last bits)
between runs.

The timings are cached per process (:func:`forget_choices` clears them), so a run probes once per worker and setting,
and each choice is logged once with both timings. ``incremental: true`` is never overruled, but it is probed too
(below a FLOP ratio of 1), and when the probe (or the FLOPs) finds it slower, one warning line says so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

import torch

from .incremental import ChunkProbe, Plan

log = logging.getLogger(__name__)

#: ``incremental: auto`` probes where incremental needs less than this share of a full forward's FLOPs per copy;
#: above it the full path runs unprobed (on the 2-core CPU the measured saving fell below the predicted one there)
AUTO_FLOP_RATIO = 0.7
#: timed chunks per path after the warm-up; the fastest counts (a descheduled moment only slows a chunk)
PROBE_REPEATS = 2
#: incremental runs under ``auto`` only when its measured seconds per image are below this share of the full path's
PROBE_MARGIN = 0.9
#: copies in the warm-up chunk of each path (first calls allocate and pick kernels; that is not what is measured)
WARMUP_COPIES = 2


@dataclasses.dataclass(frozen=True)
class PathTimings:
    """Measured seconds per image of each path, at the probe's size, grid, batch and device."""

    full_s: float
    incremental_s: float

    def describe(self) -> str:
        return f"incremental {self.incremental_s:.3g} s/image, full {self.full_s:.3g} s/image"


@dataclasses.dataclass
class PathChoice:
    """The path a call runs and why."""

    path: str  # "incremental" or "full"
    reason: str
    timings: PathTimings | None = None
    #: whether incremental was asked for (``incremental: true``) though the probe or the FLOPs find it slower
    forced_slower: bool = False


#: process-wide: probe key → the measured timings (one probe per worker and setting, whatever builds the method)
_TIMINGS: dict[tuple, PathTimings] = {}
#: (probe key, mode) already logged: a choice is logged once per process, not once per batch
_LOGGED: set[tuple] = set()


def forget_choices() -> None:
    """Forget every measured timing and logged choice (the next call probes and logs again)."""
    _TIMINGS.clear()
    _LOGGED.clear()


def model_fingerprint(net: torch.nn.Module) -> tuple:
    """What a path's time depends on in a network: its class and its parameters' shapes and dtypes (not values)."""
    return (type(net).__qualname__,
            tuple((tuple(p.shape), str(p.dtype)) for p in net.parameters()))


def _precision(device: torch.device) -> str:
    """The autocast dtype active for ``device`` (the job's precision), or none."""
    if torch.is_autocast_enabled(device.type):
        return str(torch.get_autocast_dtype(device.type))
    return "no autocast"


def probed_images(n_images: int, n_windows: int, forward_batch: int) -> int:
    """The images a probe needs to time a batch of ``n_images``: those one forward batch of copies spans (both paths
    run in chunks of the forward batch; more images only repeat them), so batches larger than that share a probe."""
    return min(n_images, -(-forward_batch // n_windows))


def probe_key(net: torch.nn.Module, image_shape: tuple[int, int, int], window: int, stride: int, n_images: int,
              forward_batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """What the probe's result depends on: network, image size, window grid, the images a forward batch spans,
    forward batch, device, dtype and precision."""
    return (model_fingerprint(net), tuple(image_shape), window, stride, n_images, forward_batch, str(device),
            str(dtype), _precision(device))


def choose_path(mode, plan: Plan | None, net: torch.nn.Module, image_shape: tuple[int, int, int], window: int,
                stride: int, baseline: float, n_images: int, forward_batch: int, device: torch.device,
                dtype: torch.dtype, occluded_copies: Callable[[torch.Tensor, slice], torch.Tensor],
                clock: Callable[[], float] = time.perf_counter) -> PathChoice:
    """The path for ``incremental: mode`` (auto, True or False) given the network's plan (None: not lowerable).

    ``occluded_copies(inputs, copies)`` builds the full path's occluded inputs for a slice of the (image, window)
    stream, as the method does; ``clock`` reads seconds (tests give an instrumented one).
    """
    if mode is False:
        return PathChoice("full", "incremental: false")
    if plan is not None:
        n_windows = plan.rows[0].top.shape[0] * plan.cols[0].top.shape[0]
        n_images = probed_images(n_images, n_windows, forward_batch)
    key = probe_key(net, image_shape, window, stride, n_images, forward_batch, device, dtype)
    if plan is None:
        choice = PathChoice("full", f"{type(net).__name__} cannot be run incrementally")
    elif plan.flop_ratio >= 1.0:
        why = f"incremental needs {plan.flop_ratio:.2f}× a full forward's FLOPs per copy"
        choice = (PathChoice("incremental", f"incremental: true, though {why}", forced_slower=True) if mode is True
                  else PathChoice("full", why))
    elif mode == "auto" and plan.flop_ratio >= AUTO_FLOP_RATIO:
        choice = PathChoice("full", f"incremental needs {plan.flop_ratio:.2f} of a full forward's FLOPs per copy, "
                                    f"not below {AUTO_FLOP_RATIO}: too little to save")
    else:
        if key not in _TIMINGS:
            _TIMINGS[key] = probe_paths(net, plan, image_shape, baseline, n_images, forward_batch, device, dtype,
                                        occluded_copies, clock)
        timings = _TIMINGS[key]
        faster = timings.incremental_s < PROBE_MARGIN * timings.full_s
        measured = f"measured {timings.describe()}; FLOP ratio {plan.flop_ratio:.2f}"
        if mode is True:
            choice = PathChoice("incremental", f"incremental: true; {measured}", timings, forced_slower=not faster)
        else:
            choice = PathChoice("incremental" if faster else "full", measured, timings)
    if (key, mode) not in _LOGGED:
        _LOGGED.add((key, mode))
        _log(choice, mode)
    return choice


def _log(choice: PathChoice, mode) -> None:
    if choice.forced_slower:
        log.warning("occlusion: incremental path forced (incremental: true) but slower here: %s; "
                    "methods.occlusion.incremental: auto picks the faster path", choice.reason)
    elif mode is True and choice.path == "full":
        log.info("occlusion: %s; running full forwards", choice.reason)
    elif mode == "auto":
        log.info("occlusion: %s path (%s)", choice.path, choice.reason)


def probe_paths(net: torch.nn.Module, plan: Plan, image_shape: tuple[int, int, int], baseline: float, n_images: int,
                forward_batch: int, device: torch.device, dtype: torch.dtype,
                occluded_copies: Callable[[torch.Tensor, slice], torch.Tensor],
                clock: Callable[[], float] = time.perf_counter) -> PathTimings:
    """Seconds per image of each path on seeded random inputs of ``n_images`` × ``image_shape`` (see the module)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((n_images, *image_shape), generator=generator).to(device=device, dtype=dtype)
    n_windows = plan.rows[0].top.shape[0] * plan.cols[0].top.shape[0]
    with torch.inference_mode():
        copies = min(forward_batch, n_images * (n_windows + 1))
        net(occluded_copies(inputs, slice(0, min(WARMUP_COPIES, copies))))
        full_chunk = min(_seconds(lambda: net(occluded_copies(inputs, slice(0, copies))), device, clock)
                         for _ in range(PROBE_REPEATS))
        full_s = (n_windows + 1) * full_chunk / copies

        probe = ChunkProbe(plan, inputs, baseline, forward_batch)
        probe.clean()
        probe.chunk(WARMUP_COPIES)
        clean_s = min(_seconds(probe.clean, device, clock) for _ in range(PROBE_REPEATS)) / probe.group_images
        chunk_s = min(_seconds(lambda: probe.chunk(probe.copies), device, clock) for _ in range(PROBE_REPEATS))
        incremental_s = clean_s + n_windows * chunk_s / probe.copies
    return PathTimings(full_s=full_s, incremental_s=incremental_s)


def _seconds(work: Callable[[], object], device: torch.device, clock: Callable[[], float]) -> float:
    start = clock()
    work()
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)
    return clock() - start
