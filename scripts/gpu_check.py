"""The Python API and a job on a GPU: bring-your-own-model paths on CUDA, their parity with the CPU, and their speed.

    python scripts/gpu_check.py --out results/gpu-check        # writes gpu_check.json, prints one line per check

For each architecture (a torchvision ResNet-18, a timm ResNet-18 and a torchvision ConvNeXt-Tiny when timm and the
builders are there, and a small custom module), on random weights:
* parity: the same images explained on the GPU in fp32 and on the CPU, relative L2 error of every method's maps
  (64 px, few images: the CPU side stays short);
* speed: seconds per image of each method at 224 px on the GPU (fp32 and bf16), through ``Explainer.explain`` —
  the same ``explain_batch`` a run's workers call — after one warm-up batch;
* refusals: the methods a model cannot run (Guided Grad-CAM on GELU activations) and their one-line reasons;
* the classifying forward merged into Guided Grad-CAM's against a forward of its own (``merge_classify``), ResNet-18
  in fp32 and bf16: targets, probabilities and maps must be bitwise equal on the device too.
Then ``jobs/smoke.yaml`` runs on the GPU in-process and its rows are checked against a CPU run of the same job.
Every step is timed and guarded: a failure is recorded in the JSON and the next step runs. ``--smoke`` runs every
step at tiny settings (two models, 32 px, small budgets, one image of the job): a check of this script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import numpy as np
import torch

from xcv_batch import Explainer
from gpu_suite import SMOKE_METHODS  # --smoke: the suite's CPU-smoke budgets (seconds on a CPU)
from xcv_batch.errors import first_line

#: the seed report's settings at a small scale: enough passes to load the GPU, few enough to finish in minutes
METHODS = {
    "occlusion": {"window": 16, "stride": 8},
    "integrated_gradients": {"n_steps": 50},
    "ig_smoothgrad": {"nt_samples": 10, "n_steps": 10},
    "guided_gradcam": {},
    "lime": {"num_samples": 500},
}


PARITY = {"images": 4, "resolution": 64}


def tiny_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def models(smoke: bool = False) -> dict:
    """name → (zero-argument factory of the nn.Module, or a model name for Explainer)."""
    chosen = {"torchvision resnet18": "resnet18", "custom tiny_cnn": tiny_cnn}
    if smoke:
        return chosen
    try:
        import timm  # noqa: F401

        chosen["timm resnet18"] = "timm:resnet18"
    except ImportError:
        pass
    chosen["torchvision convnext_tiny"] = "convnext_tiny"
    return chosen


def explainer(model, device: str, precision: str = "fp32", resolution: int = 64, methods=METHODS, sensitivity=None):
    if isinstance(model, str):
        return Explainer(model, weights="none", resolution=resolution, methods=methods, sensitivity=sensitivity,
                         device=device, precision=precision, seed=0)
    torch.manual_seed(0)
    return Explainer(model(), methods=methods, sensitivity=sensitivity, device=device, precision=precision, seed=0,
                     resolution=resolution)


def relative_errors(a, b) -> dict:
    out = {}
    for method in a.maps:
        x, y = a.maps[method], b.maps[method]
        ok = ~(torch.isnan(x).flatten(1).any(1) | torch.isnan(y).flatten(1).any(1))
        if not ok.any():
            out[method] = None
            continue
        diff = (x[ok] - y[ok]).flatten(1).norm(dim=1) / y[ok].flatten(1).norm(dim=1).clamp_min(1e-12)
        out[method] = float(diff.max())
    return out


def refusals(explained) -> dict:
    rows = explained.rows
    bad = rows[rows.status == "error"]
    return {m: str(e) for m, e in bad.groupby("method").error.first().items()}


def check_parity(name, model, report, device: str) -> None:
    torch.manual_seed(1)
    size = PARITY["resolution"]
    images = torch.randn(PARITY["images"], 3, size, size)
    gpu = explainer(model, device, resolution=size, methods=METHODS).explain(images)
    cpu = explainer(model, "cpu", resolution=size, methods=METHODS).explain(images)
    report["parity"][name] = {"rel_l2_max": relative_errors(gpu, cpu), "refused": refusals(gpu),
                              "targets_equal": gpu.rows.target.tolist() == cpu.rows.target.tolist()}


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def check_speed(name, model, report, n_images: int, device: str, resolution: int) -> None:
    torch.manual_seed(2)
    images = torch.randn(n_images, 3, resolution, resolution)
    entry = report["speed"].setdefault(name, {})
    for precision in ("fp32", "bf16"):
        ex = explainer(model, device, precision, resolution=resolution, methods=METHODS)
        ex.explain(images[: min(2, n_images)])  # warm-up: cuDNN autotuning, allocator
        _synchronize(device)
        started = time.perf_counter()
        explained = ex.explain(images)
        _synchronize(device)
        wall = time.perf_counter() - started
        ok = explained.rows[explained.rows.status == "ok"]
        entry[precision] = {
            "seconds_per_image_all_methods": wall / n_images,
            "attr_seconds_per_image": ok.groupby("method").attr_seconds.median().to_dict(),
            "forward_batch": ex.engine.forward_batch,
        }


def check_classify_merge(report, device: str, resolution: int, n_images: int = 8) -> None:
    """explain_batch with the targets from Guided Grad-CAM's forward against one with a forward of its own."""
    from xcv_batch.config import ComputeConfig, MetricsConfig
    from xcv_batch.execution.explain import BatchExplainer
    from xcv_batch.methods.settings import GuidedGradCamSettings
    from xcv_batch.models.classifier import build_classifier

    classifier = build_classifier("resnet18", "none", resolution, seed=0, device=device)
    images = torch.randn(n_images, 3, resolution, resolution, generator=torch.Generator().manual_seed(3)).to(device)
    ids = [f"img{i}" for i in range(n_images)]
    entry = report["classify_merge"] = {}
    for precision in ("fp32", "bf16"):
        results = [
            BatchExplainer(classifier, {"guided_gradcam": GuidedGradCamSettings()}, None,
                           MetricsConfig({name: None for name in MetricsConfig()}), ComputeConfig(precision=precision),
                           merge_classify=merge).explain_batch(images, ids)
            for merge in (True, False)]
        merged, separate = results
        entry[precision] = {
            "targets_equal": [i.target for i in merged.images] == [i.target for i in separate.images],
            "target_probs_equal": [i.target_prob for i in merged.images] == [i.target_prob for i in separate.images],
            "maps_bitwise_equal": all(np.array_equal(a.attribution, b.attribution)
                                      for a, b in zip(merged.results, separate.results)),
        }


def check_job(report, out: str, device: str, limit: int | None = None) -> None:
    from xcv_batch import run

    overrides = {"compute.workers": 1, **({"data.limit": limit} if limit else {})}
    gpu = run("jobs/smoke.yaml", out=os.path.join(out, "smoke-gpu"), overrides={**overrides, "compute.device": device})
    cpu = run("jobs/smoke.yaml", out=os.path.join(out, "smoke-cpu"), overrides={**overrides, "compute.device": "cpu"})
    g = gpu.rows().sort_values(["image_id", "method"]).reset_index(drop=True)
    c = cpu.rows().sort_values(["image_id", "method"]).reset_index(drop=True)
    maps = {}
    for image_id in gpu.image_ids:
        for method in gpu.methods:
            x, y = torch.from_numpy(gpu.attribution(image_id, method)), torch.from_numpy(cpu.attribution(image_id, method))
            maps.setdefault(method, []).append(float((x - y).norm() / y.norm().clamp_min(1e-12)))
    report["smoke_job"] = {
        "status_gpu": g.status.value_counts().to_dict(), "targets_equal": g.target.tolist() == c.target.tolist(),
        "rel_l2_max_per_method": {m: max(v) for m, v in maps.items()},
        "sensitivity_max_rel_diff_max": float(((g.sensitivity_max - c.sensitivity_max).abs()
                                               / c.sensitivity_max.abs().clip(lower=1e-12)).max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--speed-images", type=int, default=16)
    parser.add_argument("--speed-res", type=int, default=224)
    parser.add_argument("--device", default="cuda", help="cpu: a quick check of this script itself")
    parser.add_argument("--smoke", action="store_true", help="every step at tiny settings (with --device cpu)")
    parser.add_argument("--job-out", default=None, help="folder for the smoke job's two runs (default: under --out)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    global METHODS
    if args.smoke:
        METHODS = SMOKE_METHODS
        PARITY.update(images=2, resolution=32)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "parity": {}, "speed": {}, "failures": {}}
    chosen = models(args.smoke)
    steps = [(f"parity {n}", lambda n=n, m=m: check_parity(n, m, report, args.device)) for n, m in chosen.items()]
    steps += [(f"speed {n}", lambda n=n, m=m: check_speed(n, m, report, args.speed_images, args.device, args.speed_res))
              for n, m in chosen.items() if n != "custom tiny_cnn"]
    steps.append(("classify merge", lambda: check_classify_merge(report, args.device, 32 if args.smoke else 224)))
    job_out = args.job_out or args.out
    steps.append(("smoke job", lambda: check_job(report, job_out, args.device, 1 if args.smoke else None)))
    for name, step in steps:
        started = time.perf_counter()
        try:
            step()
            print(f"ok    {name} ({time.perf_counter() - started:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - record it, go on with the next check
            report["failures"][name] = first_line(err)
            print(f"FAIL  {name}: {first_line(err)}\n{traceback.format_exc(limit=3)}", flush=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
