"""A short probe of the job's model on this machine: seconds per row of a forward and of a forward+backward pass.

``run --dry-run`` multiplies them by the passes every method needs (:mod:`xcv_batch.plan`) for its estimate. The
probe builds the architecture with random weights (the cost of a pass does not depend on the weights, and nothing is
downloaded), executed as a run executes it (fast copy, precision, channels_last on a GPU).

Each kind of pass is repeated for a fixed time budget after a warm-up, and the median counts: on a shared machine a
single pass can be several times slower than usual (a descheduled moment), and the fastest of a few passes is as
far off the other way. The quartiles of the repetitions give the estimate's range. A method whose copies do not run
as ordinary passes (incremental Occlusion) has its own step timed the same way, along the path the run will take.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import device as dev
from ..config import Job
from ..models.classifier import build_classifier, resolve_device
from ..methods import build_method
from ..methods.registry import Passes, method_spec

#: Rows of a probe pass on a CPU: per-row cost is flat from here to 64+ there, and 16 rows keep the probe short.
CPU_PROBE_ROWS = 16
#: A job's ``forward_batch: auto`` on a CPU (the worker's default; on a GPU the worker sizes it from free memory).
AUTO_FORWARD_BATCH = 64
#: Seconds each kind of pass is repeated for (after its warm-up), and the fewest and most repetitions: enough for a
#: median that one slow pass cannot move, short enough for a dry run.
PROBE_BUDGET_S = 2.0
MIN_REPEATS = 5
MAX_REPEATS = 200
#: The estimate's range: the quartiles of the repetitions, each widened by this many interquartile ranges (Tukey's
#: fences), since a run lasts far longer than the probe and meets more of the machine's moods.
RANGE_IQRS = 1.5


@dataclass(frozen=True)
class Timing:
    """Seconds per row over the repetitions of one kind of pass."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def bounds(self) -> tuple[float, float]:
        """(low, high): the quartiles widened by RANGE_IQRS interquartile ranges; never below the fastest pass."""
        q1, q3 = self.quartiles()
        spread = RANGE_IQRS * (q3 - q1)
        return max(min(self.samples), q1 - spread), q3 + spread


@dataclass(frozen=True)
class PassTimes:
    """Seconds per row of each kind of pass (the median of the repetitions), measured with ``rows`` rows a pass on
    ``device``; ``own_rows``: per method whose copies run a path of their own, its seconds per copy."""

    forward_s: float
    forward_backward_s: float
    rows: int
    device: str
    forward: Timing | None = None
    forward_backward: Timing | None = None
    own_rows: dict[str, Timing] = field(default_factory=dict)
    #: per method with its own path: which it will take (e.g. "incremental"), for the dry run's text
    own_paths: dict[str, str] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        return len(self.forward.samples) if self.forward is not None else 1

    def seconds(self, passes: Passes) -> float:
        return self._seconds(passes, self.forward_s, self.forward_backward_s)

    def _seconds(self, passes: Passes, forward_s: float, forward_backward_s: float) -> float:
        backward = max(0.0, forward_backward_s - forward_s)
        return passes.forward * forward_s + passes.forward_backward * forward_backward_s + passes.extra_backward * backward

    def method_seconds(self, method: str, passes: Passes, own_copies: int = 0, which: str = "median") -> float:
        """Seconds per image of ``method`` with ``passes``, of which ``own_copies`` forward rows run the method's
        own path where it has one; ``which``: "median", or "low"/"high" for the range's ends."""
        forward_s, forward_backward_s = self._per_row("forward", which), self._per_row("forward_backward", which)
        seconds = self._seconds(passes, forward_s, forward_backward_s)
        own = self.own_rows.get(method)
        if own is not None and own_copies:
            seconds += own_copies * (_pick(own, which) - forward_s)
        return seconds

    def _per_row(self, kind: str, which: str) -> float:
        timing = getattr(self, kind)
        return getattr(self, f"{kind}_s") if timing is None else _pick(timing, which)


def _pick(timing: Timing, which: str) -> float:
    if which == "median":
        return timing.median
    low, high = timing.bounds()
    return low if which == "low" else high


def probe_pass_times(job: Job, repeats: int = MIN_REPEATS, budget_s: float = PROBE_BUDGET_S) -> PassTimes:
    """Time forward and forward+backward passes (and each method's own path, where it has one) for ``budget_s``
    each after a warm-up, at least ``repeats`` times; the median of each counts."""
    device = resolve_device(job.compute.device)
    classifier = build_classifier(job.model.arch, "none", job.model.resolution, seed=job.seed, device=device)
    for name, settings in job.methods.items():  # each method's checks against the model (a layer), as its build
        check = method_spec(name).load_check_model()
        if check is not None:
            check(classifier, settings)
    if job.compute.fast_execution:
        classifier = dev.attribution_classifier(classifier)
    rows = AUTO_FORWARD_BATCH if job.compute.forward_batch == "auto" else job.compute.forward_batch
    if device.type != "cuda":
        rows = min(rows, CPU_PROBE_ROWS)
    size = job.model.resolution
    inputs = torch.randn((rows, 3, size, size), generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    net, precision = classifier.net, job.compute.precision

    def forward() -> None:
        with torch.no_grad(), dev.autocast(device, precision):
            net(inputs)

    def forward_backward() -> None:
        copy = inputs.detach().requires_grad_(True)
        with torch.enable_grad(), dev.autocast(device, precision):
            score = net(copy).float()[:, 0].sum()
        torch.autograd.grad(score, copy)

    forward_t = _timed(forward, device, rows, repeats, budget_s)
    forward_backward_t = _timed(forward_backward, device, rows, repeats, budget_s)
    own_rows, own_paths = {}, {}
    for name, settings in job.methods.items():
        if not method_spec(name).own_path:
            continue
        path, step = build_method(name, classifier, settings, rows).row_probe(inputs[:1], rows)
        own_paths[name] = path
        if step is not None:
            own_rows[name] = _timed(_under(step, device, precision), device, rows, repeats, budget_s)
    return PassTimes(forward_t.median, forward_backward_t.median, rows, str(device), forward_t, forward_backward_t,
                     own_rows, own_paths)


def _under(step: Callable[[], None], device: torch.device, precision: str) -> Callable[[], None]:
    def run() -> None:
        with dev.autocast(device, precision):
            step()
    return run


def _timed(step: Callable[[], None], device: torch.device, rows: int, repeats: int, budget_s: float) -> Timing:
    """Per-row seconds of ``step`` (``rows`` rows) over at least ``repeats`` runs and ``budget_s`` seconds, after a
    warm-up of two runs (kernels chosen, memory allocated, caches filled)."""
    for _ in range(2):
        step()
    times: list[float] = []
    ends = time.perf_counter() + budget_s
    while len(times) < MAX_REPEATS and (len(times) < repeats or time.perf_counter() < ends):
        dev.synchronize(device)
        started = time.perf_counter()
        step()
        dev.synchronize(device)
        times.append((time.perf_counter() - started) / rows)
    return Timing(tuple(times))
