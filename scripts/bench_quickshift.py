"""Quickshift and LIME at the seed's settings: the engine against what it replaces, measured interleaved.

1. Seconds per image of scikit-image's ``quickshift`` (lime's 4 / 200 / 0.2, one core) and of the torch port on
   ``--device`` (one image at a time and the whole set as one batch), image by image in turn, with the share of
   pixels whose labels differ.
2. LIME at the seed's settings (ResNet-18, random-init weights, 224 px, 1,000 samples, quickshift, no sensitivity):
   the engine's ``explain_batch`` on one image, then the ``lime`` package's ``explain_instance`` on the same image
   as the seed called it (scripts/bench/seed_loop.py: top_labels=5, batch_size=10), alternating image by image so
   that both see the same machine load; the ratio is the package's seconds over the engine's.

    PYTHONPATH=. python scripts/bench_quickshift.py --images 6 --lime-images 4 --out quickshift.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))

from xcv_batch.config import ComputeConfig  # noqa: E402
from xcv_batch.execution.device import synchronize  # noqa: E402
from xcv_batch.execution.explain import BatchExplainer  # noqa: E402
from xcv_batch.methods.lime import segmentation_images  # noqa: E402
from xcv_batch.methods.quickshift import quickshift  # noqa: E402
from xcv_batch.methods.segmentation import segment  # noqa: E402
from xcv_batch.methods.settings import LimeSettings  # noqa: E402
from xcv_batch.models.classifier import build_classifier  # noqa: E402

from engine import NO_METRICS, explain  # noqa: E402
from images import bench_images  # noqa: E402
from seed_loop import SeedLoop  # noqa: E402


def timed(device: torch.device, call):
    synchronize(device)
    started = time.perf_counter()
    value = call()
    synchronize(device)
    return time.perf_counter() - started, value


def bench_segmentation(pixels_hwc: list[np.ndarray], settings: LimeSettings, device: torch.device, log) -> dict:
    """scikit-image and the torch port, image by image in turn; then the port on all images as one batch."""
    parameters = dict(kernel_size=settings.kernel_size, max_dist=settings.max_dist, ratio=settings.ratio)
    quickshift(pixels_hwc[:1], [0], device, **parameters)  # first-call costs (and CUDA's start) out of the timing
    skimage_s, torch_s, differing, total = [], [], 0, 0
    for seed, image in enumerate(pixels_hwc):
        seconds, reference = timed(device, lambda: segment(image, settings, seed))
        skimage_s.append(seconds)
        seconds, labels = timed(device, lambda: quickshift([image], [seed], device, **parameters))
        torch_s.append(seconds)
        differing += int((labels.cpu().numpy()[0] != reference).sum())
        total += reference.size
    batch_s, _ = timed(device, lambda: quickshift(pixels_hwc, list(range(len(pixels_hwc))), device, **parameters))
    result = {
        "images": len(pixels_hwc),
        "skimage_s_per_image": statistics.mean(skimage_s),
        "torch_s_per_image": statistics.mean(torch_s),
        "torch_batched_s_per_image": batch_s / len(pixels_hwc),
        "torch_over_skimage_speed": statistics.mean(skimage_s) / statistics.mean(torch_s),
        "torch_batched_over_skimage_speed": statistics.mean(skimage_s) / (batch_s / len(pixels_hwc)),
        "differing_pixel_share": differing / total,
    }
    log(f"quickshift {pixels_hwc[0].shape[0]} px: scikit-image {result['skimage_s_per_image']:.3f} s/image, torch on "
        f"{device} {result['torch_s_per_image']:.3f} (batched {result['torch_batched_s_per_image']:.3f}); "
        f"differing pixels {result['differing_pixel_share']:.2e}")
    return result


def bench_lime(classifier, inputs: torch.Tensor, settings: LimeSettings, forward_batch, seed: int, log,
               compile_model: bool = False) -> dict:
    """Engine and lime package on the same images, alternating image by image, both warmed up first."""
    explainer = BatchExplainer(classifier, {"lime": settings}, None, NO_METRICS,
                               ComputeConfig(forward_batch=forward_batch, compile=compile_model), seed=seed)
    forward_batch = explainer.methods["lime"].forward_batch  # what auto resolved to
    package = SeedLoop(classifier.net, {"lime": settings}, classifier.preprocessing, classifier.device, seed)
    with torch.no_grad():
        targets = classifier.net(inputs).argmax(1)
    # First-call costs out of the timing on both sides, at the timed size and batch: oneDNN builds its kernels per
    # shape and the allocator grows on the first full-size batches, so a small warm-up would leave them in image 0.
    # A compiled copy belongs to its explainer, so with compilation the timed explainer itself warms up (one image).
    warm = explainer if compile_model else BatchExplainer(
        classifier, {"lime": dataclasses.replace(settings, num_samples=2 * forward_batch)}, None, NO_METRICS,
        ComputeConfig(forward_batch=forward_batch), seed=seed)
    started = time.perf_counter()
    explain(warm, inputs[:1], targets[:1], ["warm"])
    warm_s = time.perf_counter() - started
    package._lime(inputs[:1], int(targets[0]), num_samples=20)
    engine_s, package_s = [], []
    for i in range(inputs.shape[0]):
        one, target = inputs[i: i + 1], targets[i: i + 1]
        seconds, _ = timed(inputs.device, lambda: explain(explainer, one, target, [f"image{i}"]))
        engine_s.append(seconds)
        seconds, _ = timed(inputs.device, lambda: package.run("lime", one, int(target)))
        package_s.append(seconds)
        log(f"  image {i}: engine {engine_s[-1]:.2f} s, lime package {package_s[-1]:.2f} s "
            f"({package_s[-1] / engine_s[-1]:.2f}×)")
    result = {
        "images": inputs.shape[0],
        "forward_batch": forward_batch,
        "segmenter": settings.segmenter,
        "compile": compile_model,
        "engine_warm_up_s": warm_s,
        "engine_s": engine_s,
        "package_s": package_s,
        "engine_s_per_image": statistics.mean(engine_s),
        "package_s_per_image": statistics.mean(package_s),
        "speedup": statistics.mean(package_s) / statistics.mean(engine_s),
        "speedup_per_image_median": statistics.median(p / e for p, e in zip(package_s, engine_s)),
    }
    log(f"LIME: engine {result['engine_s_per_image']:.2f} s/image, lime package {result['package_s_per_image']:.2f} "
        f"→ {result['speedup']:.2f}× (median per image {result['speedup_per_image_median']:.2f}×)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--images", type=int, default=6, help="images for the quickshift comparison")
    parser.add_argument("--lime-images", type=int, default=4, help="images for the LIME comparison (0: skip it)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--forward-batch", default="auto", help="the engine's compute.forward_batch (auto or rows)")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "cpu", "device"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="the engine with compute.compile (its compilation is timed in the warm-up, not per image)")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's own choice)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    forward_batch = args.forward_batch if args.forward_batch == "auto" else int(args.forward_batch)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = LimeSettings(num_samples=args.num_samples, segmenter=args.segmenter)
    classifier = build_classifier("resnet18", "none", args.resolution, seed=args.seed, device=device)
    pixels = bench_images(max(args.images, args.lime_images), classifier.preprocessing)
    inputs = classifier.preprocessing.normalize(pixels).to(device)
    hwc = segmentation_images(inputs, classifier.preprocessing)

    def log(line: str) -> None:
        print(line, flush=True)

    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "resolution": args.resolution,
        "quickshift": bench_segmentation(hwc[: args.images], settings, device, log),
    }
    if args.lime_images:
        results["lime"] = bench_lime(classifier, inputs[: args.lime_images], settings, forward_batch,
                                     args.seed, log,
                                     compile_model=args.compile)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
