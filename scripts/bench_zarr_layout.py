"""Objects, write time and random-read time of the Zarr layout: one image an object against K images an object.

    python scripts/bench_zarr_layout.py [--images 1000] [--resolution 224] [--per-object 1 32] [--reads 100]
                                        [--where local s3] [--json FILE]

Synthetic float32 maps (Gaussian noise, which compresses as little as real attribution maps) go through the run's
own writer: ``RunStore.prepare`` lays out the group, each run shard of ``--shard-size`` images writes its maps with a
``ShardWriter`` and flushes, ``RunStore.finish`` consolidates. One method array is measured (every method array,
and ``inputs``, has the same layout). Then ``open_results`` opens the OUT and reads ``--reads`` random single-image
maps, as a notebook would. ``s3`` is moto's standalone S3 server on 127.0.0.1 (as in tests/test_s3.py): real HTTP,
no network latency, so it counts requests' overhead rather than a real store's round trips.
One writer writes sequentially; a run's workers write their shards concurrently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timezone

import fsspec
import numpy as np

from xcv_batch.output.results import open_results
from xcv_batch.output.layout import ZARR_NAME
from xcv_batch.output.sink import open_sink

METHOD = "occlusion"


def start_s3() -> tuple[object, str]:
    """moto's S3 server on a free local port, with the standard AWS variables pointing at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    fsspec.filesystem("s3").clear_instance_cache()
    fsspec.filesystem("s3").mkdir("bench")
    return server, "s3://bench"


def synthetic_maps(count: int, resolution: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, resolution, resolution), dtype=np.float32) for _ in range(count)]


def write(out: str, n: int, resolution: int, per_object: int, shard_size: int, maps: list[np.ndarray]) -> float:
    ids = [f"img{i:06d}.png" for i in range(n)]
    store = open_sink(out)
    store.prepare("name: bench\n", "bench", ids, resolution, [METHOD], {}, resume=False,
                  image_paths=[f"/data/{i}" for i in ids], images_per_object=per_object)
    started = time.perf_counter()
    for first in range(0, n, shard_size):  # one writer per run shard, as a worker opens it
        writer = store.open_arrays()
        for index in range(first, min(first + shard_size, n)):
            writer.write(METHOD, index, maps[index % len(maps)])
        writer.flush()
    store.finish()
    return time.perf_counter() - started


def count_objects(out: str) -> tuple[int, int]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    sizes = fs.du(f"{root}/{ZARR_NAME}/{METHOD}/c", total=False)
    return len(sizes), sum(sizes.values())


def read(out: str, n_reads: int, seed: int = 1) -> tuple[float, float]:
    """(seconds to open and list the ids, seconds for ``n_reads`` random single-image maps)."""
    started = time.perf_counter()
    results = open_results(out)
    ids = results.image_ids
    opened = time.perf_counter() - started
    chosen = random.Random(seed).sample(ids, min(n_reads, len(ids)))
    started = time.perf_counter()
    for image_id in chosen:
        results.attribution(image_id, METHOD)
    return opened, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--per-object", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--where", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    maps = synthetic_maps(min(args.images, 64), args.resolution)
    server = None
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-zarr-") as folder:
        for where in args.where:
            if where == "s3":
                server, base = start_s3()
            else:
                base = folder
            for per_object in args.per_object:
                out = f"{base}/k{per_object}"
                write_s = write(out, args.images, args.resolution, per_object, args.shard_size, maps)
                n_objects, n_bytes = count_objects(out)
                open_s, read_s = read(out, args.reads)
                results.append({"where": where, "images_per_object": per_object, "objects": n_objects,
                                "mb": n_bytes / 1e6, "write_s": write_s, "open_s": open_s, "reads": args.reads,
                                "read_s": read_s})
                print(f"{where:5s} K={per_object:<3d} {n_objects:5d} objects {n_bytes / 1e6:7.1f} MB  "
                      f"write {write_s:6.2f} s  open {open_s:5.2f} s  {args.reads} reads {read_s:5.2f} s",
                      file=sys.stderr)
            if server is not None:
                server.stop()
                server = None
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "images": args.images, "resolution": args.resolution, "shard_size": args.shard_size, "runs": results}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


def machine() -> str:
    return f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · " \
           f"Python {platform.python_version()}"


def markdown(report: dict) -> str:
    lines = [f"{report['images']} images at {report['resolution']} px, shards of {report['shard_size']}, "
             f"{report['date']}, {report['machine']}", "",
             f"| store | images per object | objects per method | MB | write s | open s | "
             f"{report['runs'][0]['reads']} random reads s |",
             "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['where']} | {r['images_per_object']} | {r['objects']} | {r['mb']:.0f} | "
                     f"{r['write_s']:.2f} | {r['open_s']:.2f} | {r['read_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
