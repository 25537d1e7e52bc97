"""Benchmark: Guided Grad-CAM alone through ``explain_batch``, this tree against a baseline commit, in one run.

    python scripts/bench_guided_gradcam.py                      # ResNet-18 at 32 and 224 px, baseline: main
    python scripts/bench_guided_gradcam.py --res 32 --baseline ed19203 --calls 20

What is timed is what a run calls: ``BatchExplainer.explain_batch`` of a batch of ``--images`` images with Guided
Grad-CAM as the only method, every metric off, targets the predicted classes (so the engine classifies them), on
the fast copy (BatchNorm folded, channels_last), random-init weights, fp32, ``--threads`` torch threads. Three
variants, each in a process of its own:

* ``baseline`` — the package as of ``--baseline`` (exported with ``git archive`` into a temporary folder);
* ``separate`` — this tree with ``merge_classify=False``: a classifying forward of its own before the method;
* ``merged`` — this tree as a run uses it: the targets come from Guided Grad-CAM's own forward.

Each variant also counts the torch operators one call dispatches (``torch.profiler``, top-level ``aten::`` operators),
against one forward+backward to the input of the same batch on the same copy: on a GPU at a small batch every
operator is a kernel launch the device waits for, so that count is what the fixed costs per call come to there.

The machine is shared, so the three processes stay resident and take turns call by call (``--calls`` timed calls
each after one untimed one, the order rotating), and the medians are reported, with the load average before and
after.
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
sys.path.insert(0, os.path.join(REPO, "scripts", "bench"))  # the benchmark's helpers (idle.py)
VARIANTS = ("baseline", "separate", "merged")


def top_level_operators(call) -> int:
    """The ``aten::`` operators ``call()`` dispatches that no other operator called."""
    from torch.profiler import ProfilerActivity, profile

    from idle import inside_operator

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        call()

    return sum(1 for event in profiler.events() if event.name.startswith("aten::") and not inside_operator(event))


def worker(res: int, images: int, merge: bool | None, threads: int) -> None:
    """One variant's explainer, resident: each line ``call`` on stdin times one explain_batch call (seconds per image
    on stdout), ``count`` answers the targets and operator counts; ``merge`` None: the baseline's explainer, which has
    no such argument. One untimed call first."""
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

    def explain():
        result = explainer.explain_batch(inputs, ids)
        if any(r.error for r in result.results):
            raise RuntimeError(f"the engine failed: {result.results[0].error}")
        return result

    def raw() -> None:
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(explainer.executed.net(x)[:, 0].sum(), x)

    explain()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "call":
            started = time.perf_counter()
            explain()
            print(json.dumps((time.perf_counter() - started) / images), flush=True)
        elif line.strip() == "count":
            print(json.dumps({"targets": [image.target for image in explain().images],
                              "operators": top_level_operators(explain),
                              "raw_operators": top_level_operators(raw)}), flush=True)


class Variant:
    """A variant's worker process, answering one line per request."""

    def __init__(self, tree: str, res: int, args, variant: str):
        merge = {"baseline": None, "separate": False, "merged": True}[variant]
        command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(
            {"res": res, "images": args.images, "merge": merge, "threads": args.threads})]
        self.name = variant
        self.process = subprocess.Popen(command, cwd=tree, env={**os.environ, "PYTHONPATH": tree}, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ask(None)  # its build and untimed call

    def ask(self, request: str | None):
        if request is not None:
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} variant's process ended (exit {self.process.wait()})")
        return None if line.strip() == "ready" else json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--images", type=int, default=8, help="images per explain_batch call (a run's batch_size)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default="main", help="the commit the baseline variant runs")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(**json.loads(args.worker))
        return 0
    report = {"command": "python scripts/bench_guided_gradcam.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": platform.node(), "baseline": args.baseline, "images": args.images,
              "threads": args.threads, "load_average_before": load_average(), "results": {}}
    with tempfile.TemporaryDirectory(prefix="xcv-bench-ggc-") as baseline_tree:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", baseline_tree], input=archive.stdout, check=True)
        trees = {"baseline": baseline_tree, "separate": REPO, "merged": REPO}
        for res in args.res:
            variants = [Variant(trees[name], res, args, name) for name in VARIANTS]
            seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            for call in range(args.calls):
                # one call each, the order rotating, so that every variant sees the machine's load of the moment
                for variant in variants[call % 3:] + variants[:call % 3]:
                    seconds[variant.name].append(variant.ask("call"))
            counts = {variant.name: variant.ask("count") for variant in variants}
            for variant in variants:
                variant.close()
            if len({tuple(c["targets"]) for c in counts.values()}) != 1:
                raise SystemExit(f"the variants picked different targets at {res} px: {counts}")
            operators = {name: {"call": c["operators"], "raw_forward_backward": c["raw_operators"]}
                         for name, c in counts.items()}
            medians = {variant: statistics.median(values) for variant, values in seconds.items()}
            report["results"][str(res)] = {
                "seconds_per_image": medians,
                "all_seconds_per_image": seconds,
                "speedup_vs_baseline": {v: medians["baseline"] / medians[v] for v in ("separate", "merged")},
                "merge_speedup": medians["separate"] / medians["merged"],
                # per call, against the other variants' calls of the same turn: less exposed to the load's swings
                "paired_speedup_median": {v: statistics.median(b / x for b, x in zip(seconds["baseline"], seconds[v]))
                                          for v in ("separate", "merged")},
                "operators": operators,
            }
            paired = report["results"][str(res)]["paired_speedup_median"]["merged"]
            print(f"{res} px: " + ", ".join(f"{v} {medians[v] * 1e3:.2f} ms/image" for v in VARIANTS)
                  + f"; merged ×{medians['baseline'] / medians['merged']:.2f} vs baseline (paired ×{paired:.2f});"
                  + " operators per call "
                  + ", ".join(f"{v} {operators[v]['call']}" for v in VARIANTS)
                  + f" (raw forward+backward {operators['merged']['raw_forward_backward']})", flush=True)
    report["load_average_after"] = load_average()
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
