"""The dry run's estimate against the run it estimates: one small job at several resolutions, each dry-run then run.

For each size it prints the estimate and its range (``run --dry-run``'s probe, in this process), the run's compute
(the shards' own seconds, what the estimate covers: no model loading) and its wall time, and measured / estimated.

    python scripts/bench_dry_run.py --sizes 32 64 96 96i --images 2     # 96i: Occlusion forced incremental
    python scripts/bench_dry_run.py --sizes 96 --dry-runs 3              # the estimate of 3 back-to-back dry runs
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
import time

import torch

from xcv_batch.config import job_from_mapping
from xcv_batch.driver.dry_run import plan_run
from xcv_batch.driver.run import run_job


def job_for(size: int, images: int, out: str, incremental="auto"):
    return job_from_mapping({
        "name": f"estimate-{size}",
        "seed": 0,
        "data": {"source": "builtin:skimage", "limit": images},
        "model": {"arch": "resnet18", "weights": "none", "resolution": size},
        "methods": {"occlusion": {"window": 16, "stride": 8, "incremental": incremental},
                    "integrated_gradients": {"n_steps": 8}},
        "sensitivity": None,
        "compute": {"workers": 1, "device": "cpu", "batch_size": images, "forward_batch": 64, "shard_size": images},
        "output": {"path": out},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32", "64", "96"],
                        help="resolutions; a trailing i forces Occlusion's incremental path")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--dry-runs", type=int, default=0,
                        help="only the estimates of this many back-to-back dry runs per size (their spread), no run")
    args = parser.parse_args()
    if args.dry_runs:
        for spec in args.sizes:
            size = int(spec.rstrip("i"))
            with tempfile.TemporaryDirectory() as tmp:
                job = job_for(size, args.images, f"{tmp}/out", True if spec.endswith("i") else "auto")
                for _ in range(args.dry_runs):
                    plan = plan_run(job)
                    print(f"{spec} px: estimate {plan.estimate_seconds():.1f} s "
                          f"({plan.estimate_seconds('low'):.1f}–{plan.estimate_seconds('high'):.1f}), "
                          f"median of {plan.times.repeats} passes", flush=True)
        return
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| px | occlusion path | estimate (range) | run compute | run wall | compute / estimate |")
    print("|---:|---|---|---:|---:|---:|")
    for spec in args.sizes:
        size = int(spec.rstrip("i"))
        with tempfile.TemporaryDirectory() as tmp:
            job = job_for(size, args.images, f"{tmp}/out", True if spec.endswith("i") else "auto")
            plan = plan_run(job)
            estimate, low, high = (plan.estimate_seconds(which) for which in ("median", "low", "high"))
            report = run_job(job, stream=io.StringIO())
            compute = sum(shard.seconds for shard in report.shards)
            path = plan.times.own_paths.get("occlusion", "?")
            print(f"| {size} | {path} | {estimate:.1f} s ({low:.1f}–{high:.1f}) | {compute:.1f} s | "
                  f"{report.seconds:.1f} s | {compute / estimate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
