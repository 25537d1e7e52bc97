"""Whether LIME's superpixels keep up: quickshift's time per image against the device's LIME forwards."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from xcv_batch.methods import segmentation
from xcv_batch.models.classifier import describe_weights

from images import bench_images
from raw import RawThroughput, timed


def measure_segmentation(settings, arch: str, res: int, net, device, precision: str, forward_batch: int,
                         images: int, workers: int, log) -> dict:
    """Quickshift's time per image at ``res``, the pool's throughput, and whether it keeps up with LIME."""
    preprocessing = describe_weights(arch, "none", res)[0]  # the model's own preset at the segmentation size
    pixels = bench_images(images, preprocessing)
    hwc = list(pixels.permute(0, 2, 3, 1).double().numpy())
    seeds = list(range(images))
    segmentation.segment(hwc[0], settings, 0)  # imports and first-call costs out of the timing
    started = time.perf_counter()
    labels = [segmentation.segment(image, settings, s) for image, s in zip(hwc, seeds)]
    quickshift_s = (time.perf_counter() - started) / images
    slic_settings = dataclasses.replace(settings, segmentation="slic")
    started = time.perf_counter()
    for image, s in zip(hwc, seeds):
        segmentation.segment(image, slic_settings, s)
    slic_s = (time.perf_counter() - started) / images
    pool_s = None
    if workers > 1:
        segmentation.segment_batch(hwc[:workers], settings, seeds[:workers], max_workers=workers)  # start-up
        started = time.perf_counter()
        segmentation.segment_batch(hwc, settings, seeds, max_workers=workers)
        pool_s = (time.perf_counter() - started) / images
    raw = RawThroughput(net, (3, res, res), device, precision)
    batch = min(forward_batch, 16) if device.type == "cpu" else forward_batch  # 224 px on 2 cores: keep it short
    raw.warm("forward", batch)
    elapsed, _ = timed(device, lambda: [raw.run_pass("forward", batch) for _ in range(2)])
    forward_rate = 2 * batch / elapsed
    device_s = settings.num_samples / forward_rate  # the device's LIME time per image (and per perturbed copy)
    per_image_with_workers = pool_s if pool_s is not None else quickshift_s / max(workers, 1)
    result = {
        "resolution": res,
        "quickshift_s_per_image": quickshift_s,
        "superpixels_median": float(np.median([int(label.max()) + 1 for label in labels])),
        "slic_s_per_image": slic_s,
        "workers": workers,
        "pool_s_per_image": pool_s,
        "device_forward_rate": forward_rate,
        "device_lime_s_per_image": device_s,
        "keeps_up": per_image_with_workers <= device_s,
        "workers_needed": math.ceil(quickshift_s / device_s),
    }
    log(f"  quickshift at {res} px: {quickshift_s:.3f} s/image (SLIC {slic_s:.3f}); device LIME {device_s:.3f} "
        f"s/image → needs {result['workers_needed']} segmentation worker(s), has {workers}")
    return result
