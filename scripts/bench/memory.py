"""A CPU worker's peak memory at 224 px: ``python -m xcv_batch run`` in a subprocess, its peak RSS polled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np

from xcv_batch.output.layout import METRICS_DIR

from images import bench_images

#: the repository root: the subprocess runs where a user runs ``python -m xcv_batch``
REPOSITORY = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

WORKER_JOB = """name: memory
seed: 0
data: {{source: {data}}}
model: {{arch: resnet18, weights: none, resolution: 224}}
methods:
  occlusion: {{window: 112, stride: 112}}
  integrated_gradients: {{n_steps: 8}}
  ig_smoothgrad: {{nt_samples: 2, n_steps: 4}}
  guided_gradcam: {{}}
  lime: {{num_samples: 8}}
sensitivity: {{n_perturb_samples: 2}}
compute: {{workers: 1, device: cpu, shard_size: 8}}
output: {{path: {out}}}
"""


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_worker_memory(images: int, folder: str, threads: int, log) -> dict:
    """``python -m xcv_batch run`` at 224 px with the default compute settings (batch 8, forward batch 64, decode
    threads 2) on ``images`` images; its peak RSS when the first shard commits and at the end.

    Step and sample counts are cut so that it ends in minutes, but every method still fills forward batches of 64
    at 224 px, which is what sets the peak: all methods stream their rows through the model ``forward_batch`` at a
    time, so more steps or samples take longer, not more memory.
    """
    from PIL import Image

    from xcv_batch.models.classifier import Preprocessing

    data, out = os.path.join(folder, "images"), os.path.join(folder, "out")
    os.makedirs(data, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    pixels = bench_images(images, Preprocessing(256, 256, (0.5,) * 3, (0.5,) * 3))
    for i, image in enumerate(pixels):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(os.path.join(data, f"img{i:04d}.png"))
    job = os.path.join(folder, "memory.yaml")
    with open(job, "w", encoding="utf-8") as fh:
        fh.write(WORKER_JOB.format(data=data, out=out))
    command = [sys.executable, "-m", "xcv_batch", "run", job]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env)
    first_shard_peak, peak, samples = None, 0, []
    metrics = os.path.join(out, METRICS_DIR)
    while process.poll() is None:
        try:
            peak = max(peak, _vm_hwm(process.pid))
        except (OSError, ValueError):
            pass
        committed = sum(len(files) for _, _, files in os.walk(metrics) if files) if os.path.isdir(metrics) else 0
        if committed >= 1 and first_shard_peak is None:
            first_shard_peak = peak
        samples.append((round(time.perf_counter() - started, 1), peak))
        time.sleep(0.25)
    output = process.stdout.read() if process.stdout else ""
    result = {
        "command": " ".join(command),
        "torch_threads": threads,
        "job": WORKER_JOB.format(data="IMAGES", out="OUT"),
        "images": images,
        "shards": -(-images // 8),
        "returncode": process.returncode,
        "seconds": time.perf_counter() - started,
        "peak_rss_bytes": peak,
        "peak_rss_after_first_shard_bytes": first_shard_peak,
        "rss_samples": samples[:: max(1, len(samples) // 40)],
        "output_tail": output[-1500:],
    }
    log(f"  worker at 224 px on {images} images: peak {peak / 2**30:.2f} GiB "
        f"(after the first shard {((first_shard_peak or 0) / 2**30):.2f} GiB), exit {process.returncode}")
    return result
