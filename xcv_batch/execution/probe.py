"""A short probe of the job's model on this machine: seconds per row of a forward and of a forward+backward pass.

``run --dry-run`` multiplies them by the passes every method needs (:mod:`xcv_batch.plan`) for its estimate. The
probe builds the architecture with random weights (the cost of a pass does not depend on the weights, and nothing is
downloaded), executed as a run executes it (fast copy, precision, channels_last on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import device as dev
from ..config import Job
from ..models.classifier import build_classifier, resolve_device
from ..methods.registry import Passes, method_spec

#: Rows of a probe pass on a CPU: per-row cost is flat from here to 64+ there, and 16 rows keep the probe short.
CPU_PROBE_ROWS = 16
#: A job's ``forward_batch: auto`` on a CPU (the worker's default; on a GPU the worker sizes it from free memory).
AUTO_FORWARD_BATCH = 64


@dataclass(frozen=True)
class PassTimes:
    """Seconds per row of each kind of pass, measured with ``rows`` rows a pass on ``device``."""

    forward_s: float
    forward_backward_s: float
    rows: int
    device: str

    def seconds(self, passes: Passes) -> float:
        backward = max(0.0, self.forward_backward_s - self.forward_s)
        return (passes.forward * self.forward_s + passes.forward_backward * self.forward_backward_s
                + passes.extra_backward * backward)


def probe_pass_times(job: Job, repeats: int = 2) -> PassTimes:
    """Time ``repeats`` forward and forward+backward passes (after one warm-up of each); the fastest of each counts,
    since a shared machine only ever makes a pass slower."""
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

    return PassTimes(_fastest(forward, device, repeats) / rows, _fastest(forward_backward, device, repeats) / rows,
                     rows, str(device))


def _fastest(step, device: torch.device, repeats: int) -> float:
    step()  # warm-up: kernels chosen, memory allocated
    times = []
    for _ in range(repeats):
        dev.synchronize(device)
        started = time.perf_counter()
        step()
        dev.synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)
