"""Benchmark: Guided Grad-CAM alone through ``explain_batch``, this tree against a baseline commit, in one run.

    python scripts/bench_guided_gradcam.py                      # ResNet-18 at 32 and 224 px, baseline: main
    python scripts/bench_guided_gradcam.py --res 32 --baseline ed19203 --rounds 3

What is timed is what a run calls: ``BatchExplainer.explain_batch`` of a batch of ``--images`` images with Guided
Grad-CAM as the only method, every metric off, targets the predicted classes (so the engine classifies them), on
the fast copy (BatchNorm folded, channels_last), random-init weights, fp32, ``--threads`` torch threads. Three
variants, each in a process of its own:

* ``baseline`` — the package as of ``--baseline`` (exported with ``git archive`` into a temporary folder);
* ``separate`` — this tree with ``merge_classify=False``: a classifying forward of its own before the method;
* ``merged`` — this tree as a run uses it: the targets come from Guided Grad-CAM's own forward.

The machine is shared, so the variants take turns (``--rounds`` rounds, each variant ``--calls`` timed calls after
one untimed one, in an order that rotates every round) and the medians are reported, with the load average before
and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("baseline", "separate", "merged")


def worker(res: int, images: int, calls: int, merge: bool | None, threads: int) -> dict:
    """Times ``calls`` explain_batch calls (after one untimed) in this process; ``merge`` None: the baseline's
    explainer, which has no such argument."""
    import torch

    from xcv_batch.config import ComputeConfig, MetricsConfig
    from xcv_batch.execution.explain import BatchExplainer
    from xcv_batch.methods.settings import GuidedGradCamSettings
    from xcv_batch.models.classifier import build_classifier

    torch.set_num_threads(threads)
    classifier = build_classifier("resnet18", "none", res, seed=0)
    options = {} if merge is None else {"merge_classify": merge}
    explainer = BatchExplainer(classifier, {"guided_gradcam": GuidedGradCamSettings()}, None,
                               MetricsConfig({name: None for name in MetricsConfig()}), ComputeConfig(), seed=0,
                               **options)
    inputs = torch.randn(images, 3, res, res, generator=torch.Generator().manual_seed(0))
    ids = [f"img{i}.png" for i in range(images)]
    explainer.explain_batch(inputs, ids)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        result = explainer.explain_batch(inputs, ids)
        seconds.append((time.perf_counter() - started) / images)
    if any(r.error for r in result.results):
        raise RuntimeError(f"the engine failed: {result.results[0].error}")
    return {"seconds_per_image": seconds, "targets": [image.target for image in result.images]}


def run_worker(tree: str, res: int, args, variant: str) -> dict:
    merge = {"baseline": None, "separate": False, "merged": True}[variant]
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
        {"res": res, "images": args.images, "calls": args.calls, "merge": merge, "threads": args.threads})]
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"{variant} at {res} px failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--images", type=int, default=8, help="images per explain_batch call (a run's batch_size)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default="main", help="the commit the baseline variant runs")
    parser.add_argument("--timeout-s", type=int, default=900, help="limit of one variant's process")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0
    report = {"command": "python scripts/bench_guided_gradcam.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": platform.node(), "baseline": args.baseline, "images": args.images,
              "threads": args.threads, "load_average_before": load_average(), "results": {}}
    with tempfile.TemporaryDirectory(prefix="xcv-bench-ggc-") as baseline_tree:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", baseline_tree], input=archive.stdout, check=True)
        trees = {"baseline": baseline_tree, "separate": REPO, "merged": REPO}
        for res in args.res:
            seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            targets = {}
            for round_ in range(args.rounds):
                order = VARIANTS[round_ % 3:] + VARIANTS[:round_ % 3]
                for variant in order:
                    measured = run_worker(trees[variant], res, args, variant)
                    seconds[variant] += measured["seconds_per_image"]
                    targets[variant] = measured["targets"]
            if len({tuple(t) for t in targets.values()}) != 1:
                raise SystemExit(f"the variants picked different targets at {res} px: {targets}")
            medians = {variant: statistics.median(values) for variant, values in seconds.items()}
            report["results"][str(res)] = {
                "seconds_per_image": medians,
                "all_seconds_per_image": seconds,
                "speedup_vs_baseline": {v: medians["baseline"] / medians[v] for v in ("separate", "merged")},
                "merge_speedup": medians["separate"] / medians["merged"],
            }
            print(f"{res} px: " + ", ".join(f"{v} {medians[v] * 1e3:.2f} ms/image" for v in VARIANTS)
                  + f"; merged ×{medians['baseline'] / medians['merged']:.2f} vs baseline", flush=True)
    report["load_average_after"] = load_average()
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
