"""How long the device sits idle while a method runs: the share of the call's wall time in which no work ran on it.

On a GPU the work is its kernels (and copies), from ``torch.profiler``'s CUDA activity; their intervals are merged
(streams overlap) and set against the wall interval of the call. On a CPU the "device" is the CPU itself: the work is
the top-level torch operators, so the idle share is the time spent outside them (Python, segmentation waiting,
bookkeeping) — the same question, what the engine does between the model's passes.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch


def busy_seconds(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``intervals`` (start, end) clipped to [start, end]."""
    total, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b <= reach:
            continue
        total += b - max(a, reach)
        reach = b
    return total


def _work_intervals(events, device_type: str) -> list[tuple[float, float]]:
    """(start, end) in µs of the device's work among the profiler's events."""
    intervals = []
    for event in events:
        kind = str(getattr(event, "device_type", "")).rsplit(".", 1)[-1]
        start, end = event.time_range.start, event.time_range.end
        if device_type == "cuda":
            if kind == "CUDA":
                intervals.append((start, end))
        elif kind == "CPU" and event.name.startswith("aten::") and not inside_operator(event):
            intervals.append((start, end))
    return intervals


def inside_operator(event) -> bool:
    """Whether a torch operator encloses ``event`` (its time is then counted with the outer one)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def idle_share(work: Callable[[], object], device: torch.device) -> dict:
    """Runs ``work`` once under the profiler: its wall seconds, the device's busy seconds and the idle share."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with record_function("xcv_step"):
            work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    events = prof.events()
    step = next(e for e in events if e.name == "xcv_step")
    start, end = step.time_range.start, step.time_range.end
    if device.type == "cuda":  # kernels queued inside the step may end after its CPU range closes
        end = max([end] + [b for _, b in _work_intervals(events, "cuda")])
    busy = busy_seconds(_work_intervals(events, device.type), start, end)
    wall = max(end - start, 1e-9)
    return {"wall_seconds": wall / 1e6, "busy_seconds": busy / 1e6, "idle_share": 1.0 - busy / wall,
            "work": "CUDA kernels and copies" if device.type == "cuda" else "top-level torch operators on the CPU"}


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started
