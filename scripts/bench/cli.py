"""The benchmark's command line: the options, then one measurement after another into bench.json and bench.md."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time

import torch

from xcv_batch.config import apply_overrides, build_dataclass
from xcv_batch.errors import ConfigError
from xcv_batch.execution.device import autocast, describe_device, optimised_net, peak_host_bytes
from xcv_batch.methods import method_names, method_spec, segmentation
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.models.classifier import build_classifier, resolve_device

from engine import N_PERTURB, EngineUnderTest, explain, measure_engine, measure_sensitivity, parity
from idle import idle_share
from images import bench_images
from memory import measure_worker_memory
from raw import RawThroughput, execution_gain, plain_reference
from report import speedups, write_report
from seed_loop import SeedLoop, activation_bytes_per_row, available_bytes, measure_seed, seed_sensitivity_copies
from segmentation import measure_segmentation

DESCRIPTION = "Benchmark: how close the engine runs to the model's raw throughput, and how much faster it is than " \
              "the seed."


def free_cores() -> int:
    """Usable cores not already kept busy by other processes (one-minute load average), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/bench", description=DESCRIPTION)
    p.add_argument("--out", default="results/bench", help="folder for bench.json and bench.md")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--forward-batch", default="64", help="an int, or 'auto' (probe free device memory; CUDA)")
    p.add_argument("--methods", default=",".join(n for n in method_names() if not method_spec(n).control))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--pieces", type=int, default=4, help="timed pieces per method (each between raw brackets)")
    p.add_argument("--sens-images", type=int, default=1, help="images whose Max-Sensitivity the engine computes")
    p.add_argument("--seed-images", type=int, default=2, help="images the seed-style loop explains (0: no loop)")
    p.add_argument("--seed-sens-images", type=int, default=1)
    p.add_argument("--seed-sens-copies", type=int, default=N_PERTURB,
                   help="k for the seed's IG and IG-SG sensitivity (lowered to fit --seed-memory-share)")
    p.add_argument("--seed-lime-copies", type=int, default=1, help="k for the seed's LIME sensitivity (linear in k)")
    p.add_argument("--seed-memory-share", type=float, default=0.6,
                   help="share of the free memory the seed's stacked sensitivity batch may take")
    p.add_argument("--execution", default="fast", choices=["fast", "stock"],
                   help="fast: BatchNorm folded and channels_last (compute.fast_execution)")
    p.add_argument("--raw-share", type=float, default=0.05,
                   help="share of the time given to raw passes paired into each measurement")
    p.add_argument("--parity-images", type=int, default=None,
                   help="images whose maps are compared with an fp32 engine's (default: 2 when --precision is not "
                        "fp32, else 0; at fp32 the maps must be equal)")
    p.add_argument("--segmentation-res", type=int, default=224, help="0: skip the segmentation check")
    p.add_argument("--segmentation-images", type=int, default=3)
    p.add_argument("--worker-memory", action="store_true", help="only a CPU worker's peak memory at 224 px")
    p.add_argument("--worker-images", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="change a method setting (smoke runs; the targets use the seed's settings)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new sensitivity, seed-loop or segmentation measurement after this many seconds")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores the load average leaves free, at least 1). More threads "
                        "than free cores is ruinous: a descheduled OpenMP thread stalls every parallel region (on "
                        "the shared 2-core EPYC, 2 threads ran 3–5× slower than 1)")
    p.add_argument("--idle-images", type=int, default=0,
                   help="images of one profiled call per method: the device's idle share (0: not measured)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.parity_images is None:
        args.parity_images = 2 if args.precision != "fp32" else 0
    return args


def method_settings(names: list[str], overrides: list[str]) -> dict:
    """The seed report's settings (the dataclass defaults), with ``--set METHOD.KEY=VALUE`` overrides parsed and
    checked as a job file's ``methods`` section is."""
    raw = apply_overrides({name: {} for name in names}, overrides)
    unknown = set(raw) - set(names)
    if unknown:
        raise SystemExit(f"--set: {', '.join(sorted(unknown))} not among --methods ({', '.join(names)})")
    try:
        return {name: build_dataclass(METHOD_SETTINGS[name], raw[name], f"methods.{name}") for name in names}
    except ConfigError as err:
        raise SystemExit(f"--set: {err}") from err


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    os.makedirs(args.out, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    command = "python scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv)
    threads = args.threads or free_cores()
    if args.worker_memory:
        with tempfile.TemporaryDirectory(prefix="xcv-bench-") as folder:
            result = measure_worker_memory(args.worker_images, folder, threads, log)
        result.update(machine=describe_device("cpu"), date=dt.datetime.now().isoformat(timespec="seconds"))
        with open(os.path.join(args.out, "worker_memory.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        return 0 if result["returncode"] == 0 else 1

    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    classifier = build_classifier(args.arch, "none", args.res, seed=args.seed, device=device)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    settings = method_settings(names, args.set)
    image_shape = (3, args.res, args.res)
    engine = EngineUnderTest(classifier, settings, args.precision, args.execution, args.forward_batch, args.seed,
                             args.threads, image_shape)
    forward_batches = {name: engine.forward_batch(name) for name in names}
    if args.forward_batch == "auto":
        log("forward batches: " + ", ".join(f"{n} {b}" for n, b in forward_batches.items())
            + (" (probed: " + ", ".join(f"{'gradient' if gradient else 'forward'} {p.bytes_per_row / 2**20:.1f} "
                                       f"MiB/row" for gradient, p in engine.probed.items()) + ")"
               if engine.probed else " (no probe on CPU)"))
    reference = plain_reference(classifier)  # the seed-style loop's model, as the seed ran it
    # The yardstick: the stock model executed as the engine executes it (a separate copy: no hooks on it).
    raw_net = plain_reference(classifier)
    example = torch.randn((2, *image_shape), generator=torch.Generator().manual_seed(0)).to(device)
    if args.execution == "fast":
        raw_net = optimised_net(raw_net, example)
    raw = RawThroughput(raw_net, image_shape, device, args.precision)
    machine = describe_device(device)
    log(f"{machine}; {args.arch} {args.res} px {args.precision}; methods {', '.join(names)}")

    pixels = bench_images(args.images, classifier.preprocessing)
    inputs = classifier.preprocessing.normalize(pixels.to(device))
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        targets = classifier.net(inputs).argmax(1)
    ids = [f"bench{i:04d}" for i in range(args.images)]

    gain = None
    if args.execution == "fast":
        forward_batch = 64 if args.forward_batch == "auto" else int(args.forward_batch)
        gain = execution_gain(reference, raw_net, image_shape, device, args.precision, forward_batch)
        log("  fast execution over stock: " + ", ".join(f"{k} ×{v['gain']:.2f}" for k, v in gain.items()))
    deadline = started + args.budget_s if args.budget_s else math.inf
    sens_images = min(args.sens_images, args.images)
    engine_results, maps = measure_engine(engine, inputs, targets, ids, raw, args.pieces, args.raw_share, log)
    measure_sensitivity(engine, inputs, targets, ids, raw, sens_images, args.raw_share, deadline, engine_results,
                        log)
    if args.idle_images > 0:
        part = slice(0, min(args.idle_images, args.images))
        for name, explainer in engine.attribution.items():
            idle = idle_share(lambda: explain(explainer, inputs[part], targets[part], ids[part]), device)
            engine_results[name]["device_idle"] = idle
            log(f"  engine {name}: device idle {idle['idle_share']:.0%} of {idle['wall_seconds']:.2f} s")
    memory = {"engine_peak_rss": peak_host_bytes()}
    if device.type == "cuda":
        memory["engine_peak_cuda_allocated"] = torch.cuda.max_memory_allocated(device)

    report: dict = {
        "machine": machine,
        "host": platform.node(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_at_start,
        "arch": args.arch,
        "weights": "random-init",
        "resolution": args.res,
        "precision": args.precision,
        "images": args.images,
        "sens_images": sens_images,
        "seed_images": args.seed_images,
        "seed_sens_images": args.seed_sens_images,
        "forward_batches": forward_batches,
        "execution": args.execution,
        "execution_gain": gain,
        "oom_halved": engine.oom_halved(),
        "settings": {n: dataclasses.asdict(s) for n, s in settings.items()},
        "overrides": args.set,
        "engine": engine_results,
    }

    if args.parity_images > 0:
        part = slice(0, min(args.parity_images, args.images))
        report["parity"] = parity(engine, maps, inputs[part], targets[part], ids[part])

    if args.seed_images > 0:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.empty_cache()  # the engine's cached blocks: the seed's huge batches need them whole
        seed_loop = SeedLoop(reference, settings, classifier.preprocessing, device, args.seed)
        bytes_per_row = activation_bytes_per_row(reference, image_shape, device)
        free = available_bytes(device)
        copies = {name: seed_sensitivity_copies(name, settings[name], args.res, args.res, args.seed_sens_copies,
                                                args.seed_lime_copies, bytes_per_row, free, args.seed_memory_share)
                  for name in names}
        log(f"  seed sensitivity copies (then scaled to n={N_PERTURB}): {copies}")
        with autocast(device, args.precision):
            report["seed"] = measure_seed(
                seed_loop, inputs, targets, engine_results, raw, args.raw_share, min(args.seed_images, args.images),
                min(args.seed_sens_images, sens_images), copies.__getitem__, deadline, log,
            )
        report["speedup"] = speedups(engine_results, report["seed"])
        memory["peak_rss_with_seed_loop"] = peak_host_bytes()
        if device.type == "cuda":
            memory["seed_peak_cuda_allocated"] = torch.cuda.max_memory_allocated(device)
    report["memory"] = memory

    if args.segmentation_res > 0 and "lime" in settings and time.perf_counter() < deadline:
        report["segmentation"] = measure_segmentation(
            settings["lime"], args.arch, args.segmentation_res, reference, device, args.precision,
            engine.forward_batch("lime"), args.segmentation_images, segmentation.segmentation_workers(), log,
        )

    report["wall_seconds"] = time.perf_counter() - started
    write_report(report, args.out)
    log(f"wrote {args.out}/bench.json and bench.md")
    return 0
