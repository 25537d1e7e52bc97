"""One GPU session's measurements, ending within minutes: at most 8 minutes, every step with its own timeout, the
results as at most 8 JSON files in one folder.

    python scripts/gpu_suite.py OUT                 # on a GPU (scripts/bench_gpu.sh calls this)
    python scripts/gpu_suite.py OUT --cpu-smoke     # every step at tiny settings on the CPU: a check of this script

Steps, each a subprocess under ``timeout`` (its limit shrunk to what is left of the whole budget):

1. ``gpu_check.json`` — scripts/gpu_check.py: the bring-your-own-model paths on the device, their parity with the
   CPU, their speed in fp32 and bf16, and the smoke job on the device against the CPU;
2. ``bench_fp32.json`` — the benchmark (scripts/bench) at the seed's settings: per method and per method's
   Max-Sensitivity the engine's rate against the raw forward(+backward) rate of the same model, batch and
   precision (``efficiency``), and the device's idle share per method from one profiled call;
3. ``bench_bf16.json`` — the same in bf16 autocast, with each method's parity against fp32;
4. ``run_1_actor.json`` — ``python -m xcv_batch run`` end to end on 32 images, one worker;
5. ``run_2_actors.json`` — the same with two Ray workers sharing the GPU (``compute.workers: 2`` on one GPU: half a
   GPU each), so that one's decoding, staging and writing overlap the other's compute;
6. ``summary.json`` — each step's status and seconds, and the goals read off the others (efficiency ≥ 0.8, the
   suite's seconds per image, a run's seconds per image against the benchmark's).

A step that fails or times out is recorded with its log's tail, and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the whole suite on a GPU; each step gets the smaller of its own limit and what is left of this
BUDGET_S = 470
#: seconds kept back for the summary (and a step killed by ``timeout -k``)
RESERVE_S = 12
LOG_TAIL = 4000
#: the goals of the GPU work, read off the results
EFFICIENCY_GOAL = 0.8
RUN_WITHIN = 0.15

#: settings of the CPU smoke: the same steps, seconds each
SMOKE_METHODS = {
    "occlusion": {"window": 8, "stride": 8},
    "integrated_gradients": {"n_steps": 4},
    "ig_smoothgrad": {"nt_samples": 2, "n_steps": 2},
    "guided_gradcam": {},
    "lime": {"num_samples": 32},
}


@dataclass
class Step:
    name: str  # also the JSON file's name
    argv: list[str]
    timeout_s: float
    #: after the step: its JSON content from what it wrote (None: the step's own JSON as it is)
    collect: object = None
    env: dict = field(default_factory=dict)


def run_step(step: Step, out: str, deadline: float, clock=time.monotonic) -> dict:
    """Runs one step under ``timeout``; writes ``out/<name>.json`` with its status, seconds and results."""
    left = deadline - clock() - RESERVE_S
    limit = max(1, int(min(step.timeout_s, left)))
    record: dict = {"step": step.name, "command": " ".join(step.argv), "timeout_s": limit}
    if left < 1:
        record.update(status="skipped", why="the suite's time budget is spent")
        _write(out, step.name, record)
        return record
    started = clock()
    with tempfile.TemporaryFile("w+") as log:
        # The package from this checkout, for the scripts run by path too.
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        code = subprocess.call(["timeout", "-k", "5", str(limit), *step.argv], stdout=log, stderr=subprocess.STDOUT,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": path, **step.env})
        log.seek(0)
        text = log.read()
    record.update(seconds=round(clock() - started, 2), returncode=code,
                  status="ok" if code == 0 else ("timed out" if code in (124, 137) else "failed"),
                  log_tail=text[-LOG_TAIL:])
    if step.collect is not None:
        try:
            record["results"] = step.collect()
        except Exception as err:  # noqa: BLE001 - a step without results is recorded as such
            record["results"] = None
            record["collect_error"] = f"{type(err).__name__}: {err}"
            if record["status"] == "ok":
                record["status"] = "failed"
    _write(out, step.name, record)
    return record


def _write(out: str, name: str, record: dict) -> None:
    with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, default=str)


def _read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------------------------------- the steps


def write_images(folder: str, n: int, size: int) -> None:
    """``n`` photos (scikit-image's, flipped and rolled past six) as PNGs: what a run reads and decodes."""
    import numpy as np
    from PIL import Image

    from xcv_batch.data.sources import list_images

    photos = [np.asarray(Image.open(r.path).convert("RGB").resize((size, size))) for r in list_images("builtin:skimage")]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        image = photos[i % len(photos)]
        variant = i // len(photos)
        if variant % 2:
            image = image[:, ::-1]
        if variant >= 2:
            image = np.roll(image, (variant * 7, variant * 5), axis=(0, 1))
        Image.fromarray(np.ascontiguousarray(image)).save(os.path.join(folder, f"img{i:03d}.png"))


def run_job_file(folder: str, images: str, workers: int, smoke: bool) -> str:
    """A job over ``images`` with the benchmark's methods, metrics off (the benchmark times methods only)."""
    import yaml

    from xcv_batch.config import MetricsConfig

    job = {
        "name": f"gpu-suite-{workers}",
        "seed": 0,
        "data": {"source": images},
        "model": {"arch": "resnet18", "weights": "none", "resolution": 32 if smoke else 224},
        "methods": SMOKE_METHODS if smoke else {name: {} for name in SMOKE_METHODS},  # {}: the seed's settings
        "sensitivity": None,
        "metrics": {name: (False if name == "localisation" else None) for name in MetricsConfig()},
        "compute": {"workers": workers, "device": "cpu" if smoke else "cuda", "batch_size": 4 if smoke else 8,
                    "forward_batch": 16 if smoke else "auto", "shard_size": 2 if smoke else 8},
    }
    path = os.path.join(folder, f"job-{workers}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(job, fh)
    return path


def run_results(out: str, n_images: int) -> dict:
    """What a finished run wrote: rows per status and method, its own seconds per image per method."""
    from xcv_batch.output.results import open_results

    rows = open_results(out).rows()
    ok = rows[rows.status == "ok"]
    return {"rows": len(rows), "images": int(rows.image_id.nunique()), "expected_images": n_images,
            "status": rows.status.value_counts().to_dict(),
            "attr_seconds_per_image": ok.groupby("method").attr_seconds.mean().to_dict(),
            "occlusion_path": ok[ok.method == "occlusion"].occlusion_path.value_counts().to_dict()}


def steps(out: str, work: str, smoke: bool, n_images: int) -> list[Step]:
    python = sys.executable
    device = "cpu" if smoke else "cuda"
    bench = [python, "scripts/bench", "--device", device, "--seed-images", "0", "--segmentation-res", "0"]
    if smoke:
        bench += ["--res", "32", "--images", "2", "--pieces", "1", "--sens-images", "1", "--idle-images", "1",
                  "--forward-batch", "16"]
        bench += [arg for name, settings in SMOKE_METHODS.items() for key, value in settings.items()
                  for arg in ("--set", f"{name}.{key}={value}")]
    else:
        bench += ["--res", "224", "--images", "16", "--pieces", "2", "--sens-images", "2", "--idle-images", "2",
                  "--forward-batch", "auto"]
    check = [python, "scripts/gpu_check.py", "--out", os.path.join(work, "gpu_check"), "--device", device,
             "--job-out", os.path.join(work, "gpu_check_job")]
    check += ["--smoke", "--speed-images", "1", "--speed-res", "32"] if smoke else ["--speed-images", "8"]
    folders = {name: os.path.join(work, name) for name in ("bench_fp32", "bench_bf16", "run_1_actor", "run_2_actors")}
    images = os.path.join(work, "images")
    run = [python, "-m", "xcv_batch", "run"]
    limits = {"gpu_check": 90, "bench_fp32": 130, "bench_bf16": 80, "run_1_actor": 70, "run_2_actors": 90}
    if smoke:  # this 2-core CPU is slower than a GPU at anything, and Ray's start alone takes its seconds
        limits = {name: 600 for name in limits}
    return [
        Step("gpu_check", check, limits["gpu_check"],
             lambda: _read_json(os.path.join(work, "gpu_check", "gpu_check.json"))),
        Step("bench_fp32", bench + ["--budget-s", "60" if smoke else "100", "--out", folders["bench_fp32"]],
             limits["bench_fp32"], lambda: _read_json(os.path.join(folders["bench_fp32"], "bench.json"))),
        Step("bench_bf16", bench + ["--precision", "bf16", "--parity-images", "1" if smoke else "2",
                                    "--sens-images", "1", "--budget-s", "40" if smoke else "60",
                                    "--out", folders["bench_bf16"]],
             limits["bench_bf16"], lambda: _read_json(os.path.join(folders["bench_bf16"], "bench.json"))),
        Step("run_1_actor", run + [run_job_file(work, images, 1, smoke), "--out", folders["run_1_actor"]],
             limits["run_1_actor"], lambda: run_results(folders["run_1_actor"], n_images)),
        Step("run_2_actors", run + [run_job_file(work, images, 2, smoke), "--out", folders["run_2_actors"]],
             limits["run_2_actors"], lambda: run_results(folders["run_2_actors"], n_images)),
    ]


# --------------------------------------------------------------------------------------------------- the summary


def summarise(records: dict[str, dict], n_images: int, smoke: bool) -> dict:
    """The goals read off the steps' results (None where a step has none)."""
    summary: dict = {"steps": {name: {k: r.get(k) for k in ("status", "seconds", "timeout_s", "returncode")}
                               for name, r in records.items()}}
    for precision in ("fp32", "bf16"):
        bench = (records.get(f"bench_{precision}") or {}).get("results")
        if not bench:
            continue
        engine = bench.get("engine", {})
        per_method = {}
        for name, entry in engine.items():
            method, sens = entry.get("method", {}), entry.get("sensitivity", {})
            per_method[name] = {
                "efficiency": method.get("efficiency"),
                "sensitivity_efficiency": sens.get("efficiency"),
                "seconds_per_image": method.get("seconds_per_image"),
                "sensitivity_seconds_per_image": sens.get("seconds_per_image"),
                "device_idle_share": (entry.get("device_idle") or {}).get("idle_share"),
            }
        efficiencies = [v for m in per_method.values() for v in (m["efficiency"], m["sensitivity_efficiency"])
                        if v is not None]
        methods_s = sum(m["seconds_per_image"] or 0.0 for m in per_method.values())
        with_sens = methods_s + sum(m["sensitivity_seconds_per_image"] or 0.0 for m in per_method.values())
        summary[precision] = {
            "per_method": per_method,
            "lowest_efficiency": min(efficiencies) if efficiencies else None,
            "every_efficiency_at_least_goal": bool(efficiencies) and min(efficiencies) >= EFFICIENCY_GOAL,
            "suite_seconds_per_image": methods_s,
            "suite_with_sensitivity_seconds_per_image": with_sens,
            "parity": bench.get("parity"),
        }
    bench_s = (summary.get("fp32") or {}).get("suite_seconds_per_image")
    for name in ("run_1_actor", "run_2_actors"):
        record = records.get(name) or {}
        if record.get("status") != "ok" or not record.get("results"):
            continue
        per_image = record["seconds"] / n_images  # the whole command: start, model, decoding, writing
        entry = {"wall_seconds": record["seconds"], "seconds_per_image": per_image}
        if bench_s:
            entry["ratio_to_bench"] = per_image / bench_s
            entry["within_goal"] = per_image <= (1 + RUN_WITHIN) * bench_s
        summary[name] = entry
    summary["goals"] = {"efficiency_at_least": EFFICIENCY_GOAL, "run_within_bench": RUN_WITHIN,
                        "suite_with_sensitivity_fp32_s": 1.0, "suite_with_sensitivity_bf16_s": 0.6}
    summary["mode"] = "cpu smoke (tiny settings: the figures say nothing about a GPU)" if smoke else "gpu"
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT"), help="the results' folder (default: $OUT)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step at tiny settings on the CPU")
    parser.add_argument("--only", default=None, help="comma-separated steps to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=None, help=f"the whole suite's seconds (GPU: {BUDGET_S})")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("give the output folder (or set $OUT)")
    smoke = args.cpu_smoke
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --cpu-smoke to check the script on the CPU")
    os.makedirs(args.out, exist_ok=True)
    budget = args.budget_s or (BUDGET_S if not smoke else 3600)
    deadline = time.monotonic() + budget
    n_images = 4 if smoke else 32
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xcv-gpu-suite-") as work:
        write_images(os.path.join(work, "images"), n_images, 64 if smoke else 256)
        chosen = set(args.only.split(",")) if args.only else None
        records = {}
        for step in steps(args.out, work, smoke, n_images):
            if chosen is not None and step.name not in chosen:
                continue
            print(f"[{time.monotonic() - started:6.1f} s] {step.name} …", flush=True)
            records[step.name] = run_step(step, args.out, deadline)
            print(f"[{time.monotonic() - started:6.1f} s] {step.name}: {records[step.name]['status']}", flush=True)
        summary = summarise(records, n_images, smoke)
    summary.update(machine=platform.node(), wall_seconds=round(time.monotonic() - started, 1),
                   command="python scripts/gpu_suite.py " + " ".join(sys.argv[1:] if argv is None else argv))
    _write(args.out, "summary", summary)
    print(f"wrote {len(records) + 1} JSON files to {args.out}")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    raise SystemExit(main())
