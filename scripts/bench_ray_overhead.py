"""Ray's overhead per shard against the compute it schedules, for a job (default: the smoke job) on this machine.

    python scripts/bench_ray_overhead.py [JOB] [--workers 2] [--shard-size 1] [--limit 6]

The shards run twice on Ray actors (CPU, device forced to cpu): with ``max_in_flight=1`` every shard is a full round
trip — the actor idles from finishing one shard until the next arrives — and with the default 2, where the next
shard already waits in the actor's queue. Per shard it reports the actor's own compute time (``ShardReport.seconds``)
and the overhead: the driver's wall time from "actor free" to "report received", minus that compute (scheduling,
pickling and sending the shard, returning the report, the driver's polling). Also the one-off costs: starting Ray,
and starting the actors (import torch, build the model). Outputs go to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time

from xcv_batch.config import load_job
from xcv_batch.data.sources import list_images
from xcv_batch.driver import plan_shards
from xcv_batch.driver.actors import RayExecutor
from xcv_batch.driver.run import prepare_store
from xcv_batch.driver.session import RaySession
from xcv_batch.plan import method_passes
from xcv_batch.driver.progress import RunProgress
from xcv_batch.output.sink import open_sink


def one_pass(job_file: str, overrides: list[str], in_flight: int, out: str) -> dict:
    job = load_job(job_file, overrides=[*overrides, f"compute.max_in_flight={in_flight}"], output=out)
    records = list_images(job.data.source, job.data.limit)
    shards = plan_shards(records, job.compute.shard_size, images_per_object=job.output.images_per_object)
    store = open_sink(out)
    started = time.monotonic()
    with RayExecutor(job, max_workers=len(shards), stream=sys.stderr) as executor:
        startup = time.monotonic() - started
        prepare_store(job, store, records, resume=False)
        with RunProgress(len(records), method_passes(job), stream=sys.stderr, interval_s=3600) as progress:
            run_started = time.monotonic()
            reports = executor.run(shards, store, progress)
            wall = time.monotonic() - run_started
        workers = executor.plan.count
        timings = list(executor.timings)
    return {
        "in_flight": in_flight,
        "workers": workers,
        "shards": len(shards),
        "images": len(records),
        "actor_startup_s": startup,
        "wall_s": wall,
        "compute_s": [t.compute_s for t in timings],
        "overhead_s": [t.overhead_s for t in timings],
        "shard_bytes": statistics.mean(len(pickle.dumps(s)) for s in shards),
        "report_bytes": statistics.mean(len(pickle.dumps(r)) for r in reports),
    }


def describe(result: dict) -> str:
    compute, overhead = result["compute_s"], result["overhead_s"]
    ideal = sum(compute) / result["workers"]  # the wall time with zero overhead and perfect balance
    return "\n".join([
        f"max_in_flight={result['in_flight']}: {result['shards']} shards of {result['images']} images on "
        f"{result['workers']} workers; actors ready in {result['actor_startup_s']:.1f} s",
        f"  compute per shard   median {statistics.median(compute):.3f} s   mean {statistics.mean(compute):.3f} s",
        f"  overhead per shard  median {statistics.median(overhead) * 1e3:.1f} ms  mean "
        f"{statistics.mean(overhead) * 1e3:.1f} ms  max {max(overhead) * 1e3:.1f} ms  "
        f"({statistics.mean(overhead) / statistics.mean(compute):.2%} of compute)",
        f"  sent {result['shard_bytes']:.0f} B per shard, received {result['report_bytes']:.0f} B per report",
        f"  wall {result['wall_s']:.2f} s vs {ideal:.2f} s of compute per worker ({ideal / result['wall_s']:.0%} busy)",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", nargs="?", default="jobs/smoke.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=6)
    args = parser.parse_args()
    overrides = [f"compute.workers={args.workers}", "compute.device=cpu", f"compute.shard_size={args.shard_size}",
                 f"data.limit={args.limit}"]
    started = time.monotonic()
    with RaySession() as session:
        print(f"Ray started in {time.monotonic() - started:.1f} s ({session.where})")
        for in_flight in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                print(describe(one_pass(args.job, overrides, in_flight, f"{tmp}/out")), flush=True)


if __name__ == "__main__":
    main()
