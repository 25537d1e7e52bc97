"""How many workers a run gets and what each one asks Ray for. Pure functions: no Ray here, so it is unit-tested.

The rules (``compute.workers`` and ``compute.device``):

* GPU workers — one actor per GPU for ``workers: auto`` when the cluster has GPUs, or ``workers: N`` actors that
  share the GPUs (``num_gpus = G / N`` when N > G). ``device: cuda`` always asks for GPU workers, even before an
  autoscaling cluster has any GPU node (the pending actors are what makes it add nodes).
* CPU workers — when there is no GPU, or ``device: cpu`` with a number of workers: ``auto`` is one worker per two
  cores; the cores are split between the workers, and each sets torch's thread count to its share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ComputeConfig
from ..cores import usable_cores
from ..errors import ConfigError


@dataclass(frozen=True)
class Resources:
    cpus: float  # CPUs of the whole cluster (a head that takes no work advertises 0)
    gpus: float
    cpus_per_gpu: float = 0.0  # on GPU nodes, the fewest CPUs per GPU: an actor's share must fit on one node
    cpus_per_node: float = 0.0  # the most CPUs of any one node


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    num_cpus: float  # what each actor reserves from Ray
    num_gpus: float
    torch_threads: int

    def describe(self) -> str:
        kind = f"{self.num_gpus:g} GPU" if self.num_gpus else "CPU"
        return (f"{self.count} Ray worker{'s' if self.count > 1 else ''} ({kind}, {self.num_cpus:g} CPU, "
                f"{self.torch_threads} torch thread{'s' if self.torch_threads > 1 else ''} each)")


def _fraction(total: float, parts: int) -> float:
    """``total / parts`` rounded down to Ray's resource precision (1e-4), so ``parts`` of them fit in ``total``."""
    return math.floor(total / parts * 10_000) / 10_000


def wants_gpu_workers(compute: ComputeConfig, resources: Resources) -> bool:
    if compute.device.startswith("cuda"):
        return True
    if compute.device == "cpu" and compute.workers != "auto":
        return False
    return resources.gpus > 0


def plan_workers(compute: ComputeConfig, resources: Resources, max_workers: int | None = None) -> WorkerPlan:
    """The workers for ``compute`` on ``resources``; never more than ``max_workers`` (the number of shards)."""
    if wants_gpu_workers(compute, resources):
        return _gpu_plan(compute, resources, max_workers)
    return _cpu_plan(compute, resources, max_workers)


def _cap(count: int, max_workers: int | None) -> int:
    return max(1, min(count, max_workers)) if max_workers else count


def _gpu_plan(compute: ComputeConfig, resources: Resources, max_workers: int | None) -> WorkerPlan:
    gpus = int(resources.gpus)
    if compute.workers == "auto":
        if gpus < 1:
            raise ConfigError(
                "compute.workers",
                "'auto' found no GPU in the Ray cluster; give the number of GPU workers to start "
                "(an autoscaling cluster adds GPU nodes for them), or use device: cpu",
            )
        count = gpus
    else:
        count = compute.workers
    count = _cap(count, max_workers)
    num_gpus = 1.0 if count <= gpus or gpus == 0 else _fraction(gpus, count)
    num_cpus = max(1, math.floor(resources.cpus_per_gpu * num_gpus)) if resources.cpus_per_gpu else 1
    return WorkerPlan(count, float(num_cpus), num_gpus, int(num_cpus))


def _cpu_plan(compute: ComputeConfig, resources: Resources, max_workers: int | None) -> WorkerPlan:
    cpus = int(resources.cpus)
    if compute.workers == "auto":
        if cpus < 1:
            raise ConfigError("compute.workers", "'auto' found no CPU for workers in the Ray cluster; give a number")
        count = max(1, cpus // 2)  # two threads each: one worker per core spends more on overhead than it gains
    else:
        count = compute.workers
    count = _cap(count, max_workers)
    if cpus < 1:  # nothing there yet (autoscaling): ask for one core each
        return WorkerPlan(count, 1.0, 0.0, 1)
    if count > cpus:  # more workers than cores: each reserves a fraction, and runs one thread
        return WorkerPlan(count, _fraction(cpus, count), 0.0, 1)
    threads = cpus // count
    if resources.cpus_per_node:
        threads = max(1, min(threads, int(resources.cpus_per_node)))
    return WorkerPlan(count, float(threads), 0.0, threads)


def local_resources() -> Resources:
    """This machine, as a local Ray would see it (used to decide whether Ray is worth starting at all)."""
    import torch

    cpus = usable_cores()
    gpus = torch.cuda.device_count()
    return Resources(float(cpus), float(gpus), cpus / gpus if gpus else 0.0, float(cpus))


def resources_from_nodes(nodes: list[dict]) -> Resources:
    """``ray.nodes()`` → totals over the alive nodes, and the per-node limits an actor must fit in."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", node.get("alive", True))]
    cpus = sum(r.get("CPU", 0.0) for r in alive)
    gpus = sum(r.get("GPU", 0.0) for r in alive)
    per_gpu = [r.get("CPU", 0.0) / r["GPU"] for r in alive if r.get("GPU")]
    per_node = [r.get("CPU", 0.0) for r in alive]
    return Resources(cpus, gpus, min(per_gpu) if per_gpu else 0.0, max(per_node) if per_node else 0.0)
