"""The pipeline's own cost per image at scale: N generated images, a tiny CNN and one cheap method, so that what shows
is listing, decoding, staging, writing and committing rather than the model.

For each N (default 1,000 and 10,000; ``--sizes 1000 10000 100000`` for the full set) a child process runs the job
(``model.arch: custom_models:tiny_cnn`` from tests/, Guided Grad-CAM, Max-Sensitivity off) in-process, and with
``--ray`` also with 2 Ray workers, then runs ``--resume`` of the finished OUT. Reported per run:

* images/s over the whole run (wall, model loading and Ray's start included), and in the shards (images ÷ the
  shards' seconds summed ÷ the workers that had a shard: the steady rate), and the driver process's CPU per image;
* CPU ms per image by stage: listing (the driver's), then decode, staging, method, write and commit as the workers'
  shard reports count them (``ShardReport.stage_seconds``: each stage on the thread that ran it; "method" is the
  calling thread's, without the threads torch starts inside an operator), and the fixed cost (all but method);
* the driver's peak RSS (the child's ``ru_maxrss``: in-process, the worker's too);
* the files written in OUT, the images per stored object, and the seconds ``--resume`` of the finished OUT takes to say there is nothing left.

A warm-up run of ``--warm-up`` images (200) comes first and is not reported: a fresh install's first run compiles the
bytecode of the modules imported lazily inside the shards and reads the libraries from disk, which no later run pays.

    PYTHONPATH=. python scripts/bench_scale.py                           # N = 1,000 and 10,000, in-process
    PYTHONPATH=. python scripts/bench_scale.py --sizes 1000 10000 100000 --ray
    PYTHONPATH=. python scripts/bench_scale.py --sizes 1000 --images-per-object 100 --old /tmp/old   # against old code
    PYTHONPATH=. python scripts/bench_scale.py --writes 512      # the Zarr writer alone: zarr's array API vs direct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
STAGES = ("decode", "staging", "method", "write", "commit")


def make_images(folder: str, n: int, px: int, seed: int = 0) -> None:
    """``n`` random ``px``×``px`` PNGs in ``folder`` (kept between runs: made once per N)."""
    import numpy as np
    from PIL import Image

    if os.path.exists(os.path.join(folder, ".complete")):
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = os.path.join(folder, f"{i // 1000:04d}")  # a thousand files a folder, as datasets are laid out
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(os.path.join(sub, f"{i:07d}.png"))
    open(os.path.join(folder, ".complete"), "w").close()


def job_mapping(source: str, out: str, px: int, workers: int, batch_size: int, shard_size: int,
                images_per_object: int | None) -> dict:
    return {
        "name": "bench-scale", "seed": 0,
        "data": {"source": source},
        "model": {"arch": "custom_models:tiny_cnn", "weights": "none", "resolution": px},
        "target": "predicted",
        "methods": {"guided_gradcam": {"layer": "auto"}},
        "sensitivity": None,
        "compute": {"workers": workers, "device": "cpu", "batch_size": batch_size, "shard_size": shard_size},
        # None: the job's default (auto in this tree; older code's own default with --old)
        "output": {"path": out, **({} if images_per_object is None else {"images_per_object": images_per_object})},
    }


def child(args: argparse.Namespace) -> None:
    """One run and its resume, in this process; prints one JSON line."""
    import io

    from xcv_batch.config import job_from_raw
    from xcv_batch.data.sources import list_images
    from xcv_batch.driver.run import run_job

    raw = json.loads(args.child)
    job = job_from_raw(raw)
    cpu, wall = time.process_time(), time.perf_counter()
    n_listed = len(list_images(job.data.source, job.data.limit))
    listing_cpu, listing_wall = time.process_time() - cpu, time.perf_counter() - wall

    cpu, wall = time.process_time(), time.perf_counter()
    report = run_job(job, stream=io.StringIO())
    run_cpu, run_wall = time.process_time() - cpu, time.perf_counter() - wall
    stages = {stage: sum(getattr(s, "stage_seconds", {}).get(stage, 0.0) for s in report.shards) for stage in STAGES}

    log = io.StringIO()
    wall = time.perf_counter()
    resumed = run_job(job, resume=True, stream=log)
    resume_wall = time.perf_counter() - wall
    if resumed.n_processed or "nothing left to do" not in log.getvalue():
        raise SystemExit(f"--resume of a finished run did work: {log.getvalue()}")

    files = sum(len(names) for _, _, names in os.walk(job.output.path))
    import zarr

    shards = zarr.open_group(os.path.join(job.output.path, "attributions.zarr"), mode="r")["inputs"].shards
    print(json.dumps({"n": n_listed, "failed": report.n_failed, "listing_cpu": listing_cpu,
                      "shard_s": sum(s.seconds for s in report.shards), "shards": len(report.shards),
                      "listing_wall": listing_wall, "run_cpu": run_cpu, "run_wall": run_wall, "stages": stages,
                      "files": files, "per_object": shards[0] if shards else 1, "resume_wall": resume_wall}))


def run_one(work: str, n: int, px: int, workers: int, args: argparse.Namespace, code: str = ROOT) -> dict:
    """One child run of ``n`` images on the package in ``code`` (this tree, or ``--old``'s)."""
    images = os.path.join(work, f"images-{n}-{px}px")
    make_images(images, n, px)
    out = os.path.join(work, f"out-{n}-w{workers}")
    shutil.rmtree(out, ignore_errors=True)
    raw = job_mapping(images, out, px, workers, args.batch_size, args.shard_size, args.images_per_object)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([code, TESTS]))
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(raw)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the run of {n} images with {workers} worker(s) failed")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def bench_writes(n: int, px: int, work: str) -> None:
    """CPU ms per image of the Zarr shard writer alone (an inputs and a method array), through zarr's array API
    against the chunk files it writes itself, for one image an object and 32, in this process."""
    import numpy as np

    from xcv_batch.output.formats import MapLayout
    from xcv_batch.output.zarr_maps import ShardWriter, ZarrWriter

    maps = np.random.default_rng(0).normal(size=(n, 3, px, px)).astype(np.float32)
    print(f"{'per object':>10} {'way':>7} {'cpu ms/image':>12}")
    for per_object in (1, 32):
        for way in ("zarr", "direct"):
            out = os.path.join(work, f"writes-{per_object}-{way}")
            shutil.rmtree(out, ignore_errors=True)
            writer = ZarrWriter(out)
            writer.prepare(MapLayout("bench", [f"i{i}" for i in range(n)], None, px, ["m"], {}, per_object),
                           resume=False)
            shard = ShardWriter(writer._open_group("r+")) if way == "zarr" else writer.open_shard()
            cpu = time.process_time()
            for index in range(n):
                shard.write("inputs", index, maps[index])
                shard.write("m", index, maps[index])
            shard.flush()
            print(f"{per_object:>10} {way:>7} {1e3 * (time.process_time() - cpu) / n:>12.3f}", flush=True)
            if per_object == 1 and way == "direct":
                listing(writer, n)
            shutil.rmtree(out, ignore_errors=True)


def listing(writer, n: int) -> None:
    """Wall seconds of --resume's listing of one array's chunk files: fsspec's recursive walk, and the local one."""
    from xcv_batch.output.chunks import _listed_chunk_files, _local_chunk_files

    prefix = f"{writer.root}/attributions.zarr/m/c"
    walk, scan = ("fsspec walk", lambda: _listed_chunk_files(writer.fs, prefix, 4)), \
        ("local scan", lambda: _local_chunk_files(prefix, 4))
    for name, lister in (walk, scan, scan, walk):  # each once with the other's listing before it (cached folders)
        wall = time.perf_counter()
        found = lister()
        print(f"  listing {n} chunk files ({name}): {time.perf_counter() - wall:.2f} s, {len(found)} found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--px", type=int, default=32, help="image and model resolution (16–32 px)")
    parser.add_argument("--ray", action="store_true", help="also run each N with 2 Ray workers (--workers 1 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="workers per run (more than 1: Ray)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--images-per-object", type=int, default=None,
                        help="output.images_per_object (default: the job's default, auto)")
    parser.add_argument("--work", default=None, help="folder for images and OUTs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the OUTs")
    parser.add_argument("--old", help="a checkout of older code, run on the same images after this tree's (its "
                                      "stage times show as 0 when it does not count them)")
    parser.add_argument("--writes", type=int, metavar="N", help="only time the Zarr writer on N maps")
    parser.add_argument("--warm-up", type=int, default=200, metavar="N",
                        help="first run N images unreported (default 200; 0: none), so that what a machine pays once "
                             "(compiling the lazily imported modules' bytecode, reading the libraries from disk) is "
                             "not charged to the first timed size")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = args.work or tempfile.mkdtemp(prefix="bench-scale-")
    if args.writes:
        bench_writes(args.writes, args.px, work)
        return
    print(f"{os.cpu_count()} CPUs seen; {args.px} px, tiny CNN, guided_gradcam, batch {args.batch_size}, "
          f"shard {args.shard_size}, {args.images_per_object or 'default'} image(s) an object; work {work}")
    header = (f"{'code':>5} {'images':>7} {'workers':>7} {'img/s':>7} {'shard':>7} {'cpu ms':>7} | "
              + " ".join(f"{s:>8}" for s in ("listing", *STAGES, "fixed"))
              + f" | {'peak MiB':>8} {'files':>7} {'per obj':>7} {'resume s':>8}")
    print(header)
    versions = [("this", ROOT)] + ([("old", os.path.abspath(args.old))] if args.old else [])
    for version, code in versions if args.warm_up else ():
        warm = run_one(work, args.warm_up, args.px, 1, args, code)
        print(f"warm-up ({version}): {args.warm_up} images in {warm['run_wall']:.1f} s, not reported", flush=True)
    for workers in sorted({*args.workers, *((1, 2) if args.ray else ())}):
        for n in args.sizes:
            for version, code in versions:
                report(run_one(work, n, args.px, workers, args, code), workers, version)


def report(r: dict, workers: int, version: str) -> None:
    per = {stage: 1e3 * r["stages"].get(stage, 0.0) / r["n"] for stage in STAGES}
    fixed = sum(v for stage, v in per.items() if stage != "method")
    steady = r["n"] / (r["shard_s"] / min(workers, r["shards"]))  # the shards ran side by side on the workers
    print(f"{version:>5} {r['n']:>7} {workers:>7} {r['n'] / r['run_wall']:>7.1f} {steady:>7.1f} "
          f"{1e3 * r['run_cpu'] / r['n']:>7.2f} | "
          f"{1e3 * r['listing_cpu'] / r['n']:>8.3f} " + " ".join(f"{per[s]:>8.3f}" for s in STAGES)
          + f" {fixed:>8.3f} | {r['peak_rss_mib']:>8.0f} {r['files']:>7} {r['per_object']:>7} "
          f"{r['resume_wall']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
