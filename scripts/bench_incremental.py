"""Benchmark: incremental Occlusion against the full-forward engine, seconds per image, measured in one run.

    python scripts/bench_incremental.py                       # ResNet-18, ResNet-50, VGG-19 at 224 px, 15 / 8
    python scripts/bench_incremental.py --archs resnet18 --grid 28 --reps 1   # every window of the grid

Both paths run the same model copy a run uses (random-init weights, BatchNorm folded, channels_last), on the same
images and the same windows, in fp32 with the same forward batch. At 224 px the seed's window 15 / stride 8 is a
28 × 28 grid (784 windows and the clean pass: 785 forwards per image on the full path); a full grid of VGG-19 takes
minutes on 2 cores, so by default each path explains an evenly spaced sub-grid of ``--grid`` × ``--grid`` windows
(the same sub-grid for both) and seconds per image are scaled to the whole grid: time × (784 + 1) / (sub-grid + 1).
Both timings include one clean pass per image, so the scaling slightly overstates the incremental path's time
(its clean pass costs a full forward, more than one incremental copy).

The machine is shared, so the two paths are interleaved (full, incremental, then incremental, full, …) and the
medians over ``--reps`` repetitions are reported, with the median of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time

import torch


from xcv_batch.cores import usable_cores
from xcv_batch.execution.device import attribution_classifier, describe_device
from xcv_batch.methods import build_method
from xcv_batch.methods.incremental import Extent, Plan, incremental_scores
from xcv_batch.methods.occlusion import window_cover
from xcv_batch.methods.settings import OcclusionSettings
from xcv_batch.models.classifier import build_classifier

DEFAULT_GRID = {"resnet18": 12, "resnet50": 10, "vgg19": 6}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50", "vgg19"])
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--window", type=int, default=15)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--grid", type=int, default=None,
                        help="windows per axis of the measured sub-grid (default per arch: "
                             + ", ".join(f"{a} {g}" for a, g in DEFAULT_GRID.items()) + ")")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--forward-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores the one-minute load average leaves free, at least 1;"
                             " a descheduled OpenMP thread stalls the incremental path's many small operators)")
    parser.add_argument("--profile", action="store_true", help="print the incremental path's top operators")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def spaced(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n), both ends included."""
    k = min(k, n)
    return torch.linspace(0, n - 1, k).round().long().unique()


def sub_plan(plan: Plan, rows: torch.Tensor, cols: torch.Tensor) -> Plan:
    """The plan restricted to a sub-grid of windows (every node's extents indexed by the chosen rows / columns)."""
    def pick(extents: dict[int, Extent], chosen: torch.Tensor) -> dict[int, Extent]:
        return {node: Extent(e.start[chosen], e.end[chosen], e.top[chosen], e.length, e.size)
                for node, e in extents.items()}

    return dataclasses.replace(plan, rows=pick(plan.rows, rows), cols=pick(plan.cols, cols))


def measure(arch: str, args: argparse.Namespace) -> dict:
    built = build_classifier(arch, "none", args.res, seed=0)
    model = attribution_classifier(built)  # the copy a run executes
    settings = OcclusionSettings(window=args.window, stride=args.stride, incremental=True)
    method = build_method("occlusion", model, settings, args.forward_batch)
    shape = (3, args.res, args.res)
    plan = method.plan(shape)
    if plan is None:
        raise SystemExit(f"{arch} cannot be lowered")

    inputs = torch.randn((args.images, *shape), generator=torch.Generator().manual_seed(0))
    targets = torch.arange(args.images) * 7 % model.num_classes
    all_rows = window_cover(args.res, args.window, args.stride)
    all_cols = window_cover(args.res, args.window, args.stride)
    grid = args.grid or DEFAULT_GRID.get(arch, 8)
    chosen_rows, chosen_cols = spaced(all_rows.shape[0], grid), spaced(all_cols.shape[0], grid)
    measured = sub_plan(plan, chosen_rows, chosen_cols)
    n_sub = len(chosen_rows) * len(chosen_cols)
    n_all = all_rows.shape[0] * all_cols.shape[0]

    def full() -> torch.Tensor:
        return method._full_scores(inputs, targets, all_rows[chosen_rows], all_cols[chosen_cols])

    def incremental() -> torch.Tensor:
        with torch.inference_mode():
            return incremental_scores(measured, inputs, targets, settings.baseline, args.forward_batch)

    # Warm-up (oneDNN primitive creation for each shape), and the two paths' scores compared on the way.
    expected, got = full(), incremental()
    drops_error = ((expected[:, -1:] - expected[:, :-1]) - (got[:, -1:] - got[:, :-1])).abs().max().item()
    drops_scale = (expected[:, -1:] - expected[:, :-1]).abs().max().item()

    times: dict[str, list[float]] = {"full": [], "incremental": []}
    paths = {"full": full, "incremental": incremental}
    for rep in range(args.reps):
        for name in (("full", "incremental") if rep % 2 == 0 else ("incremental", "full")):
            start = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - start)
    ratios = [f / i for f, i in zip(times["full"], times["incremental"])]
    scale = (n_all + 1) / (n_sub + 1) / args.images  # to seconds per image of the whole grid
    result = {
        "arch": arch,
        "windows_measured": n_sub,
        "windows_per_image": n_all,
        "predicted_flop_ratio": plan.flop_ratio,
        "predicted_speedup": 1 / plan.flop_ratio,
        "full_s_per_image": statistics.median(times["full"]) * scale,
        "incremental_s_per_image": statistics.median(times["incremental"]) * scale,
        "speedup": statistics.median(ratios),
        "speedups": ratios,
        "times": times,
        "lowered_stages": f"{plan.n_lowered} of {len(plan.graph.stages)}",
        "max_drop_difference_relative": drops_error / max(drops_scale, 1e-30),
    }
    result["share_of_predicted"] = result["speedup"] / result["predicted_speedup"]
    if args.profile:
        profile(incremental)
    return result


def profile(run) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def free_cores() -> int:
    """Usable cores not already kept busy by other processes (one-minute load average), at least one."""
    return max(1, min(usable_cores(), round(usable_cores() - os.getloadavg()[0])))


def main(argv=None) -> None:
    args = parse_args(argv)
    args.threads = args.threads or free_cores()
    torch.set_num_threads(args.threads)
    header = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{describe_device('cpu')}; {platform.platform()}",
        "load_average_at_start": os.getloadavg(),
        "command": " ".join(sys.argv),
        "settings": {"res": args.res, "window": args.window, "stride": args.stride, "images": args.images,
                     "reps": args.reps, "forward_batch": args.forward_batch, "threads": args.threads},
    }
    print(json.dumps(header))
    results = []
    for arch in args.archs:
        started = time.perf_counter()
        result = measure(arch, args)
        result["wall_s"] = time.perf_counter() - started
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("times",)}), flush=True)

    print("\n| model | windows timed | full s/img | incremental s/img | speed-up (median of reps) "
          "| predicted FLOP ratio | predicted speed-up | measured ÷ predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        reps = ", ".join(f"{x:.2f}" for x in r["speedups"])
        print(f"| {r['arch']} | {r['windows_measured']} of {r['windows_per_image']} | {r['full_s_per_image']:.2f} | "
              f"{r['incremental_s_per_image']:.2f} | {r['speedup']:.2f}× ({reps}) | {r['predicted_flop_ratio']:.3f} | "
              f"{r['predicted_speedup']:.2f}× | {r['share_of_predicted']:.2f} |")
    print(f"load average at the end: {os.getloadavg()}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({**header, "results": results, "load_average_at_end": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
