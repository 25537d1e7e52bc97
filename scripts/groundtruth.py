"""The known-answer loop, end to end: synthetic dataset → trained ResNet-18 → jobs/groundtruth.yaml → summary.

    python scripts/groundtruth.py                 # from the repository root; everything goes under results/groundtruth/
    python scripts/groundtruth.py --retrain       # train again even when the saved weights match the settings

Writes ``results/groundtruth/data/`` (images, masks, manifests), ``results/groundtruth/resnet18.pt`` (about 45 MB,
never committed) with ``train.json`` (its settings and held-out accuracy), and the run in ``results/groundtruth/run``.
The dataset is regenerated every time (seconds, byte-identical for a seed); training is skipped when ``train.json``
shows the same dataset and settings. The run directory is replaced unless ``--resume`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from xcv_batch.groundtruth.synth import generate
from xcv_batch.groundtruth.train import train

OUT = os.path.join("results", "groundtruth")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images to generate (80%% train, 20%% test)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (= the model resolution)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for training (1: on a shared machine more threads run slower)")
    parser.add_argument("--retrain", action="store_true", help="train even when the saved weights match")
    parser.add_argument("--job", default=os.path.join("jobs", "groundtruth.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed on to `xcv_batch run` (e.g. --set data.limit=20)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted run instead of replacing it")
    parser.add_argument("--skip-run", action="store_true", help="stop after training")
    args = parser.parse_args()
    os.chdir(ROOT)  # the job's relative paths are relative to the repository root

    data_dir = os.path.join(OUT, "data")
    manifest = generate(data_dir, n_images=args.images, size=args.size, n_classes=args.classes, seed=args.seed)
    print(f"dataset: {args.images} images of {args.size} px, {args.classes} classes → {manifest}", flush=True)

    weights = os.path.join(OUT, "resnet18.pt")
    record_path = os.path.join(OUT, "train.json")
    with open(os.path.join(data_dir, "dataset.json")) as handle:
        dataset = json.load(handle)
    settings = {"dataset": dataset, "epochs": args.epochs, "seed": args.seed, "resolution": args.size}
    previous = _read_json(record_path)
    if args.retrain or not os.path.exists(weights) or previous is None or previous.get("settings") != settings:
        result = train(manifest, weights, epochs=args.epochs, seed=args.seed, resolution=args.size,
                       threads=args.threads, log=lambda line: print(f"  {line}", flush=True))
        with open(record_path, "w") as handle:
            json.dump({"settings": settings, "result": result}, handle, indent=2)
    else:
        result = previous["result"]
        print("weights: reusing", weights, "(same dataset and settings; --retrain to train again)")
    print(f"trained: held-out accuracy {result['test_accuracy']:.3f} on {result['n_test']} images, "
          f"{result['seconds']:.0f} s → {weights}", flush=True)
    if args.skip_run:
        return 0

    run_dir = os.path.join(OUT, "run")
    if os.path.exists(run_dir) and not args.resume:
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "xcv_batch", "run", args.job, "--out", run_dir]
    command += [f"--set={override}" for override in args.overrides] + (["--resume"] if args.resume else [])
    subprocess.run(command, check=True)
    subprocess.run([sys.executable, "-m", "xcv_batch", "summarize", run_dir], check=True)
    return 0


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
