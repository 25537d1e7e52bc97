"""Benchmark: how close the engine runs to the model's raw throughput, and how much faster it is than the seed.

    python scripts/bench.py --out results/bench                           # this CPU: 64 px, 8 images
    python scripts/bench.py --res 224 --device cuda --forward-batch auto --out results/gpu   # (scripts/bench_gpu.sh)
    python scripts/bench.py --worker-memory --out results/bench           # item 7: a CPU worker's peak at 224 px

*Efficiency*: the forward(+backward)-equivalents a method pushes through the model per second inside the engine,
divided by the raw throughput of the same model (stock torchvision with the same weights, executed as the engine
executes it: BatchNorm folded and channels_last under the default ``--execution fast``), input size, batch and
precision, in the same process: forward only for Occlusion and LIME, forward+backward to the input for the gradient
methods. The speed-up of that execution over the stock model is measured too (``execution_gain``).
On a machine shared with others the load changes by the second, so raw passes are *paired into* every measurement:
after a forward of the measured network, whenever raw passes have had less than ``--raw-share`` of the time, one
raw pass runs and is timed on its own. Engine and yardstick see the same machine at the same moments. Each method
is timed in ``--pieces`` pieces; reported is the median efficiency over pieces.

*Speed-up*: the seconds per image of a seed-style loop (per-image Captum with its library defaults, the ``lime``
package with its defaults, ``captum.metrics.sensitivity_max`` per image) divided by the engine's, on the same images
and settings, with the loop's seconds scaled to the machine speed measured during the engine's run (the ratio of the
two paired raw throughputs; the unscaled ratio is ``wall_speedup`` in the JSON). Captum's ``sensitivity_max`` makes
one explanation call on the clean image (timed on its own: it is also the loop's method time for that image) and one
on the n perturbed copies stacked into one batch. For IG and IG-SG that batch is n × steps (× samples) rows, 11.5 GB
at 64 px for IG-SG: it runs as is when it fits ``--seed-memory-share`` of the free memory, else with fewer copies k
and the stacked call scaled by n / k (a lower bound: bigger batches cost more per row). The lime package explains
one image at a time, so its k = ``--seed-lime-copies`` copies scale exactly. Occlusion and Guided Grad-CAM run at n.
The loop's plain method calls run on ``--seed-images`` images.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # the lime package's per-sample progress bar

import numpy as np
import torch
import torchvision


from xcv_batch.methods import segmentation
from xcv_batch.config import SensitivityConfig, apply_overrides, build_dataclass
from xcv_batch.data.images import list_images, load_image
from xcv_batch.execution.device import (
    CudaMemory,
    HalveOnOutOfMemory,
    attribution_classifier,
    is_out_of_memory,
    autocast,
    describe_device,
    optimised_net,
    peak_host_bytes,
    size_forward_batches,
    synchronize,
)
from xcv_batch.errors import ConfigError
from xcv_batch.output.layout import METRICS_DIR
from xcv_batch.methods import build_method, method_names, method_spec
from xcv_batch.methods.lime import segmentation_images
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.metrics.sensitivity import sensitivity_max
from xcv_batch.models.classifier import auto_target_layer, build_classifier, describe_weights, resolve_device
from xcv_batch.seeding import derive_seed

N_PERTURB = SensitivityConfig().n_perturb_samples  # the seed's Max-Sensitivity samples
RADIUS = SensitivityConfig().perturb_radius


# ------------------------------------------------------------------------------------------------------ set-up


def bench_images(n: int, preprocessing) -> torch.Tensor:
    """(n, 3, R, R) pixels in [0, 1]: scikit-image's photos (flipped and rolled for more than six), like real data
    for quickshift, which on noise makes hundreds of one-pixel superpixels."""
    photos = [load_image(record.path, preprocessing) for record in list_images("builtin:skimage")]
    images = []
    for i in range(n):
        image = photos[i % len(photos)]
        variant = i // len(photos)
        if variant % 2:
            image = image.flip(-1)
        if variant >= 2:
            image = image.roll(shifts=(variant * 7, variant * 5), dims=(-2, -1))
        images.append(image)
    return torch.stack(images)


def plain_reference(classifier) -> torch.nn.Module:
    """The same weights in a stock torchvision model (nn.ReLU, Captum's hooks work): the seed's model and the
    yardstick of raw throughput."""
    net = torchvision.models.get_model(classifier.arch, weights=None)
    net.load_state_dict(classifier.net.state_dict())
    net.eval().to(classifier.device)
    for p in net.parameters():
        p.requires_grad_(False)
    if classifier.device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    return net


def timed(device: torch.device, run: Callable[[], object]) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


# ------------------------------------------------------------------------------------------------- raw and pieces


class RawThroughput:
    """The model alone in a plain loop at a given batch: one pass, forward or forward+backward to the input."""

    def __init__(self, net: torch.nn.Module, image_shape, device: torch.device, precision: str):
        self.net, self.image_shape, self.device, self.precision = net, tuple(image_shape), device, precision
        self._warm: set = set()

    def run_pass(self, kind: str, batch: int) -> None:
        x = torch.randn((batch, *self.image_shape), device=self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        # Also inside a measured method's inference_mode / no_grad: the raw pass decides its own autograd state.
        with autocast(self.device, self.precision), torch.inference_mode(False):
            if kind == "forward":
                with torch.no_grad():
                    self.net(x)
            else:
                x.requires_grad_(True)
                with torch.enable_grad():
                    torch.autograd.grad(self.net(x)[:, 0].sum(), x)

    def warm(self, kind: str, batch: int) -> None:
        if (kind, batch) not in self._warm:  # allocator and oneDNN/cuDNN plans for this shape
            self.run_pass(kind, batch)
            self._warm.add((kind, batch))


class PairedRaw:
    """Raw passes interleaved into the measured code, so both see the same machine at the same moments.

    After a forward of the watched network, whenever raw passes have had less than ``share`` of the elapsed time,
    one raw pass (``kind``, ``batch``) runs and is timed on its own. The measured code's time is the wall time less
    the raw passes'. On a machine shared with others, brackets before and after a long call miss the load changes
    in between; this does not.
    """

    def __init__(self, raw: RawThroughput, kind: str, batch: int, share: float):
        self.raw, self.kind, self.batch, self.share = raw, kind, batch, share
        self.raw_seconds, self.raw_rows = 0.0, 0
        self._started = 0.0

    def _maybe_raw_pass(self, *_) -> None:
        if self.raw_seconds >= self.share * (time.perf_counter() - self._started):
            return
        synchronize(self.raw.device)  # queued work of the measured code belongs to it
        started = time.perf_counter()
        self.raw.run_pass(self.kind, self.batch)
        synchronize(self.raw.device)
        self.raw_seconds += time.perf_counter() - started
        self.raw_rows += self.batch

    def measure(self, watched: torch.nn.Module, run: Callable[[], object]) -> tuple[float, float]:
        """Runs ``run`` → (its own seconds, raw images per second meanwhile)."""
        self.raw.warm(self.kind, self.batch)
        self.raw_seconds, self.raw_rows = 0.0, 0
        handle = watched.register_forward_hook(self._maybe_raw_pass)
        try:
            synchronize(self.raw.device)
            self._started = time.perf_counter()
            run()
            synchronize(self.raw.device)
            wall = time.perf_counter() - self._started
        finally:
            handle.remove()
        if self.raw_rows == 0:  # a call without forwards of the watched net: measure right after it
            self._started = time.perf_counter() - 1.0
            self._maybe_raw_pass()
        return wall - self.raw_seconds, self.raw_rows / self.raw_seconds


@dataclass
class Piece:
    """One call to time: ``rows`` model passes of ``kind``, compared with raw passes at ``batch``."""

    run: Callable[[], object]
    rows: int
    batch: int


def measure_pieces(pieces: list[Piece], kind: str, raw: RawThroughput, watched: torch.nn.Module,
                   share: float) -> dict:
    """Each piece with raw passes paired into it; efficiency per piece, median over pieces."""
    seconds, raw_rates, efficiencies = [], [], []
    for piece in pieces:
        own, raw_rate = PairedRaw(raw, kind, piece.batch, share).measure(watched, piece.run)
        seconds.append(own)
        raw_rates.append(raw_rate)
        efficiencies.append(piece.rows / own / raw_rate)
    return {
        "kind": kind,
        "batch": pieces[0].batch,
        "rows": sum(p.rows for p in pieces),
        "seconds": sum(seconds),
        "piece_seconds": seconds,
        "efficiency": statistics.median(efficiencies),
        "piece_efficiencies": efficiencies,
        "raw_rate": statistics.median(raw_rates),
        "raw_rates": raw_rates,
    }


# ----------------------------------------------------------------------------------------------------- engine


def rows_per_image(name: str, settings, height: int, width: int) -> int:
    """Model passes one image costs a method (the unit of efficiency): the rows of its registered ``passes``."""
    return method_spec(name).passes(settings, height, width).rows


def kind_of(name: str) -> str:
    return "forward_backward" if method_spec(name).differentiates else "forward"


#: methods whose whole-batch call is short: timed as repeats of it rather than as slices of the images
CHEAP = {"occlusion", "guided_gradcam"}


class Engine:
    def __init__(self, classifier, methods: dict, precision: str, seed: int):
        self.classifier, self.methods, self.precision, self.seed = classifier, methods, precision, seed
        self.oom = HalveOnOutOfMemory()

    def seeds(self, name: str, ids: list[str]) -> list[int]:
        return [derive_seed(self.seed, image_id, name) for image_id in ids]

    def attribute(self, name: str, inputs, targets, ids) -> torch.Tensor:
        method = self.methods[name]
        with autocast(inputs.device, self.precision):
            return self.oom.run(method, lambda: method.attribute(inputs, targets, self.seeds(name, ids)).float())

    def sensitivity(self, name: str, inputs, targets, ids, attributions) -> torch.Tensor:
        method = self.methods[name]
        noise_seeds = [derive_seed(self.seed, image_id, name, "sensitivity") for image_id in ids]
        with autocast(inputs.device, self.precision):
            return self.oom.run(method, lambda: sensitivity_max(
                method, inputs, targets, self.seeds(name, ids), attributions, noise_seeds, N_PERTURB, RADIUS
            ))


def measure_engine(engine: Engine, inputs, targets, ids, raw: RawThroughput, pieces_per_method: int,
                   sens_images: int, share: float, deadline: float, log) -> tuple[dict, dict]:
    """Every method on all images, then its Max-Sensitivity on the first ``sens_images`` (each started only before
    ``deadline``, a ``time.perf_counter()`` value): timings and maps."""
    n_images = inputs.shape[0]
    height, width = inputs.shape[2:]
    results: dict = {}
    maps: dict = {}
    for name, method in engine.methods.items():
        per_image = rows_per_image(name, method.settings, height, width)
        kind = kind_of(name)
        if name in CHEAP:  # whole-batch calls, as the worker makes them; two are enough for a median of pairs
            groups = [list(range(n_images))] * max(2, pieces_per_method // 2)
        else:
            groups = [list(g) for g in np.array_split(np.arange(n_images), min(pieces_per_method, n_images))]
        outputs: dict[int, torch.Tensor] = {}

        def run_group(group):
            result = engine.attribute(name, inputs[group], targets[group], [ids[i] for i in group])
            for i, row in zip(group, result):
                outputs[i] = row

        def batch_of(images: int) -> int:
            return min(method.forward_batch, images) if name == "guided_gradcam" else method.forward_batch

        pieces = [Piece(functools.partial(run_group, g), per_image * len(g), batch_of(len(g))) for g in groups]
        measured = measure_pieces(pieces, kind, raw, engine.classifier.net, share)
        images_done = sum(len(g) for g in groups)
        measured["seconds_per_image"] = measured["seconds"] / images_done
        measured["forward_batch"] = method.forward_batch
        results[name] = {"method": measured}
        maps[name] = torch.stack([outputs[i] for i in range(n_images)])
        log(f"  engine {name}: {measured['seconds_per_image']:.3f} s/image, efficiency {measured['efficiency']:.2f}")

    for name, method in engine.methods.items():
        if sens_images <= 0:
            break
        if time.perf_counter() > deadline:
            log(f"  engine sensitivity {name}: skipped (--budget-s spent)")
            continue
        per_image = rows_per_image(name, method.settings, height, width) * N_PERTURB
        kind = kind_of(name)

        def run_sensitivity(i):
            part = slice(i, i + 1)
            return engine.sensitivity(name, inputs[part], targets[part], ids[part], maps[name][part])

        copies = N_PERTURB  # one image per piece: its n copies go through the method in one call
        batch = min(method.forward_batch, copies) if name == "guided_gradcam" else method.forward_batch
        pieces = [Piece(functools.partial(run_sensitivity, i), per_image, batch) for i in range(sens_images)]
        measured = measure_pieces(pieces, kind, raw, engine.classifier.net, share)
        measured["seconds_per_image"] = measured["seconds"] / sens_images
        results[name]["sensitivity"] = measured
        log(f"  engine sensitivity {name}: {measured['seconds_per_image']:.2f} s/image, "
            f"efficiency {measured['efficiency']:.2f}")
    return results, maps


def activation_bytes_per_row(net: torch.nn.Module, image_shape, device) -> int:
    """About what one image costs in a forward+backward pass: the sum of every leaf module's output (measured peaks
    on the 2-core EPYC: 2.3 MB at 64 px, 25.8 MB at 224 px for ResNet-18; this gives 2.4 and 29.9)."""
    sizes: list[int] = []
    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, a, out: sizes.append(out.numel() * out.element_size()))
               for m in leaves]
    try:
        with torch.no_grad():
            net(torch.zeros((1, *image_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return sum(sizes)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return CudaMemory(device).free_bytes()
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def seed_sensitivity_copies(name: str, settings, height: int, width: int, requested: int, lime_copies: int,
                            bytes_per_row: int, available: int, memory_share: float) -> int:
    """How many perturbed copies the seed-style sensitivity of ``name`` runs with (then scaled to n).

    Occlusion and Guided Grad-CAM: n (cheap). LIME: ``lime_copies`` (the lime package explains one image at a time,
    so its cost is exactly linear in the copies). IG and IG-SG: ``requested`` (default n, the seed as it was) unless
    Captum's stacked batch of k × (steps × samples) rows would need more than ``memory_share`` of the free memory.
    """
    if name in CHEAP:
        return N_PERTURB
    if name == "lime":
        return max(1, min(lime_copies, N_PERTURB))
    per_copy = rows_per_image(name, settings, height, width) * bytes_per_row
    fits = int(memory_share * available // max(per_copy, 1))
    return max(1, min(requested, N_PERTURB, fits))


def execution_gain(stock: torch.nn.Module, fast: torch.nn.Module, image_shape, device, precision: str,
                   batch: int, rounds: int = 3) -> dict:
    """Raw throughput of the engine's execution of the model over the stock one, alternating passes."""
    out = {}
    for kind in ("forward", "forward_backward"):
        runners = {"stock": RawThroughput(stock, image_shape, device, precision),
                   "fast": RawThroughput(fast, image_shape, device, precision)}
        rates: dict[str, list[float]] = {"stock": [], "fast": []}
        for runner in runners.values():
            runner.warm(kind, batch)
        for _ in range(rounds):
            for label, runner in runners.items():
                elapsed, _ = timed(device, lambda: runner.run_pass(kind, batch))
                rates[label].append(batch / elapsed)
        out[kind] = {"stock": statistics.median(rates["stock"]), "fast": statistics.median(rates["fast"]),
                     "gain": statistics.median(f / s for f, s in zip(rates["fast"], rates["stock"]))}
    return out


# ------------------------------------------------------------------------------------------------ seed-style loop


class SeedLoop:
    """What the seed did, image by image: Captum and the lime package with their library defaults."""

    def __init__(self, net: torch.nn.Module, settings: dict, preprocessing, device: torch.device, seed: int):
        from captum.attr import GuidedGradCam, IntegratedGradients, NoiseTunnel, Occlusion

        self.net, self.settings, self.preprocessing, self.device = net, settings, preprocessing, device
        self.seed = seed
        occlusion = settings.get("occlusion")
        ig, igsg, lime = settings.get("integrated_gradients"), settings.get("ig_smoothgrad"), settings.get("lime")
        self.explain: dict[str, Callable] = {}
        if occlusion is not None:
            w, s = occlusion.window, occlusion.stride
            self.explain["occlusion"] = functools.partial(
                Occlusion(net).attribute, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                baselines=occlusion.baseline,
            )
        if ig is not None:
            self.explain["integrated_gradients"] = functools.partial(
                IntegratedGradients(net).attribute, n_steps=ig.n_steps, method=ig.method
            )
        if igsg is not None:
            self.explain["ig_smoothgrad"] = functools.partial(
                NoiseTunnel(IntegratedGradients(net)).attribute, nt_type=igsg.nt_type, nt_samples=igsg.nt_samples,
                stdevs=igsg.stdevs, n_steps=igsg.n_steps, method=igsg.method,
            )
        if "guided_gradcam" in settings:
            layer = dict(net.named_modules())[auto_target_layer(net)]
            self.explain["guided_gradcam"] = GuidedGradCam(net, layer).attribute
        if lime is not None:
            self.explain["lime"] = functools.partial(self._lime, num_samples=lime.num_samples)
            self._warm_lime()

    def _warm_lime(self) -> None:
        """One-time costs (imports, quickshift's and sklearn's first calls) out of the first timed explanation."""
        from lime.lime_image import LimeImageExplainer

        image = np.random.default_rng(0).random((16, 16, 3))
        LimeImageExplainer(random_state=0).explain_instance(
            image, lambda batch: np.tile([[0.5, 0.5]], (len(batch), 1)), top_labels=1, num_samples=4
        )

    def _classifier_fn(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(self.device)
        with torch.no_grad():
            logits = self.net(self.preprocessing.normalize(batch))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _lime(self, inputs, target, num_samples: int):
        """lime_image on each image, its defaults (quickshift 4/200/0.2, top_labels=5, batch_size=10), painted."""
        from lime.lime_image import LimeImageExplainer

        tuple_in = isinstance(inputs, tuple)
        x = inputs[0] if tuple_in else inputs
        targets = target.tolist() if isinstance(target, torch.Tensor) else [target] * x.shape[0]
        images = segmentation_images(x, self.preprocessing)
        maps = []
        for image, t in zip(images, targets):
            explanation = LimeImageExplainer(random_state=self.seed).explain_instance(
                image, self._classifier_fn, num_samples=num_samples
            )
            weights = dict(explanation.local_exp.get(t, []))
            painted = np.vectorize(lambda f: weights.get(f, 0.0))(explanation.segments).astype(np.float32)
            maps.append(torch.from_numpy(painted).expand(3, *painted.shape))
        result = torch.stack(maps).to(x.device)
        return (result,) if tuple_in else result

    def run(self, name: str, x: torch.Tensor, target: int) -> object:
        return self.explain[name](x, target=target)

    def run_sensitivity(self, name: str, x: torch.Tensor, target: int, copies: int,
                        explain: Callable | None = None) -> object:
        from captum.metrics import sensitivity_max as captum_sensitivity_max

        return captum_sensitivity_max(
            explain or self.explain[name], x, perturb_radius=RADIUS, n_perturb_samples=copies, target=target
        )


def measure_seed(seed_loop: SeedLoop, inputs, targets, engine_results: dict, raw: RawThroughput, share: float,
                 images: int, sens_images: int, copies_of: Callable[[str], int], deadline: float, log) -> dict:
    """The seed-style loop image by image, with raw passes paired in as for the engine (same kind and batch as the
    engine's measurement of that method, so the two can be put on the same machine speed).

    Captum's ``sensitivity_max`` starts with the explanation of the clean image, which is the seed's method call on
    that image: it is timed on its own and counts as the method's time there, so the first ``sens_images`` images
    are not explained twice.
    """
    height, width = inputs.shape[2:]
    device = inputs.device
    results: dict = {}
    for name in seed_loop.explain:
        if time.perf_counter() > deadline:
            log(f"  seed {name}: skipped (--budget-s spent)")
            continue
        kind, per_image = kind_of(name), rows_per_image(name, seed_loop.settings[name], height, width)
        method_times: dict[int, tuple[float, float]] = {}  # image → (seconds, paired raw rate)
        entry: dict = {}
        if sens_images > 0 and "sensitivity" in engine_results[name]:
            copies = copies_of(name)
            while True:
                try:
                    measured = [_seed_sensitivity(seed_loop, name, inputs[i: i + 1], int(targets[i]), copies, raw,
                                                  kind, engine_results[name]["sensitivity"]["batch"], share)
                                for i in range(sens_images)]
                    break
                except RuntimeError as error:  # the stacked batch did not fit after all: fewer copies
                    if not is_out_of_memory(error) or copies == 1:
                        raise
                copies = max(1, copies // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                log(f"  seed sensitivity {name}: out of memory, retrying with {copies} copies")
            for i, m in enumerate(measured):
                method_times[i] = (m["clean_seconds"], m["raw_rate"])
            # clean call + the k copies' call, scaled to n copies: exact for the lime package (one image at a
            # time), a lower bound for Captum's stacked batch (bigger batches cost more per row, see the docstring)
            scaled = [m["clean_seconds"] + (m["seconds"] - m["clean_seconds"]) * N_PERTURB / copies for m in measured]
            entry["sensitivity"] = {
                "seconds_per_image": statistics.mean(scaled),
                "measured_seconds": [m["seconds"] for m in measured],
                "copies": copies,
                "images": sens_images,
                "raw_rate": statistics.median(m["raw_rate"] for m in measured),
                "batch": engine_results[name]["sensitivity"]["batch"],
                "efficiency": statistics.median(
                    per_image * (1 + copies) / m["seconds"] / m["raw_rate"] for m in measured),
            }
        batch = engine_results[name]["method"]["batch"]
        for i in range(images):
            if i not in method_times:
                run = functools.partial(seed_loop.run, name, inputs[i: i + 1], int(targets[i]))
                method_times[i] = PairedRaw(raw, kind, batch, share).measure(seed_loop.net, run)
        seconds = [method_times[i][0] for i in range(images)]
        raw_rate = statistics.median(method_times[i][1] for i in range(images))
        entry.update({
            "seconds_per_image": statistics.mean(seconds), "image_seconds": seconds, "images": images,
            "raw_rate": raw_rate, "batch": batch,
            "efficiency": per_image / statistics.mean(seconds) / raw_rate,
        })
        results[name] = entry
        sens = entry.get("sensitivity")
        sens_text = f", sensitivity {sens['seconds_per_image']:.2f} s/image (k={sens['copies']})" if sens else ""
        log(f"  seed {name}: {entry['seconds_per_image']:.3f} s/image, efficiency {entry['efficiency']:.2f}"
            f"{sens_text}")
    return results


def _seed_sensitivity(seed_loop: SeedLoop, name: str, x: torch.Tensor, target: int, copies: int,
                      raw: RawThroughput, kind: str, batch: int, share: float) -> dict:
    """Captum's ``sensitivity_max`` on one image with paired raw passes; its explanation calls timed one by one."""
    pairing = PairedRaw(raw, kind, batch, share)
    calls: list[float] = []
    explain = seed_loop.explain[name]

    def timed_explain(*args, **kwargs):
        synchronize(x.device)
        started, raw_before = time.perf_counter(), pairing.raw_seconds
        out = explain(*args, **kwargs)
        synchronize(x.device)
        calls.append(time.perf_counter() - started - (pairing.raw_seconds - raw_before))
        return out

    seconds, raw_rate = pairing.measure(
        seed_loop.net, functools.partial(seed_loop.run_sensitivity, name, x, target, copies, timed_explain)
    )
    return {"seconds": seconds, "clean_seconds": calls[0], "raw_rate": raw_rate}


# ------------------------------------------------------------------------------------------------------- parity


def parity(engine: Engine, inputs, targets, ids, precision: str) -> dict:
    """Maps at ``precision`` against fp32 on the same images: cosine and relative L2 error per method."""
    out = {}
    for name in engine.methods:
        engine.precision = "fp32"
        reference = engine.attribute(name, inputs, targets, ids)
        engine.precision = precision
        lowered = engine.attribute(name, inputs, targets, ids)
        a, b = reference.flatten(1).double(), lowered.flatten(1).double()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
        relative = torch.linalg.vector_norm(a - b, dim=1) / torch.linalg.vector_norm(a, dim=1).clamp_min(1e-30)
        out[name] = {"cosine_median": cosine.median().item(), "relative_l2_median": relative.median().item()}
    return out


# -------------------------------------------------------------------------------------------------- segmentation


def measure_segmentation(settings, arch: str, res: int, net, device, precision: str, forward_batch: int,
                         images: int, workers: int, log) -> dict:
    """Item 3: quickshift's time per image at ``res``, the pool's throughput, and whether it keeps up with LIME."""
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


# ------------------------------------------------------------------------------------------------- worker memory


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
    """Item 7: ``python -m xcv_batch run`` at 224 px with the default compute settings (batch 8, forward batch 64,
    decode threads 2) on ``images`` images; its peak RSS when the first shard commits and at the end.

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
    process = subprocess.Popen(command, cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
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


# ---------------------------------------------------------------------------------------------------- reporting


def speedups(engine_results: dict, seed_results: dict) -> dict:
    """Seed seconds ÷ engine seconds per image, per method, its sensitivity and the whole suite.

    ``speedup`` puts both on the same machine speed: the seed's seconds are scaled by (raw throughput during the
    seed's run) ÷ (raw throughput during the engine's run of the same method), both measured by paired raw passes of
    the same kind and batch. ``wall_speedup`` is the plain ratio, at whatever load each phase happened to get.
    """
    out: dict = {}
    seed_total = seed_wall_total = engine_total = 0.0
    complete = True

    def entry(seed_part: dict, engine_part: dict) -> tuple[float, float, float]:
        load = seed_part["raw_rate"] / engine_part["raw_rate"]
        return seed_part["seconds_per_image"] * load, seed_part["seconds_per_image"], engine_part["seconds_per_image"]

    for name, seed_entry in seed_results.items():
        engine_entry = engine_results[name]
        row = {}
        parts = [("method", seed_entry, engine_entry["method"])]
        if "sensitivity" in seed_entry:
            parts.append(("sensitivity", seed_entry["sensitivity"], engine_entry["sensitivity"]))
        else:
            complete = False
        for label, seed_part, engine_part in parts:
            seed_s, seed_wall, engine_s = entry(seed_part, engine_part)
            row[label] = {"speedup": seed_s / engine_s, "wall_speedup": seed_wall / engine_s,
                          "seed_seconds_at_engine_speed": seed_s}
            seed_total += seed_s
            seed_wall_total += seed_wall
            engine_total += engine_s
        out[name] = row
    out["suite_with_sensitivity" if complete else "suite"] = {
        "seed_seconds_per_image": seed_total, "seed_wall_seconds_per_image": seed_wall_total,
        "engine_seconds_per_image": engine_total,
        "speedup": seed_total / engine_total, "wall_speedup": seed_wall_total / engine_total,
    }
    return out


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "engine s/img", "efficiency", "sens. s/img", "sens. efficiency", "seed s/img",
              "seed efficiency", "seed sens. s/img", "speed-up", "sens. speed-up"]
    rows = []
    engine, seed, speed = report["engine"], report.get("seed", {}), report.get("speedup", {})
    for name, entry in engine.items():
        method, sens = entry["method"], entry.get("sensitivity")
        seed_entry = seed.get(name, {})
        speed_entry = speed.get(name, {})
        rows.append([
            name,
            _fmt(method["seconds_per_image"], ".3f"),
            _fmt(method["efficiency"]),
            _fmt(sens["seconds_per_image"] if sens else None),
            _fmt(sens["efficiency"] if sens else None),
            _fmt(seed_entry.get("seconds_per_image"), ".3f"),
            _fmt(seed_entry.get("efficiency")),
            _fmt(seed_entry.get("sensitivity", {}).get("seconds_per_image")),
            _fmt(speed_entry.get("method", {}).get("speedup"), ".1f", "×"),
            _fmt(speed_entry.get("sensitivity", {}).get("speedup"), ".1f", "×"),
        ])
    suite = speed.get("suite_with_sensitivity") or speed.get("suite")
    if suite:
        label = "suite + sensitivity" if "suite_with_sensitivity" in speed else "suite"
        rows.append([label, _fmt(suite["engine_seconds_per_image"]), "", "", "",
                     _fmt(suite["seed_seconds_per_image"]), "", "", _fmt(suite["speedup"], ".1f", "×"), ""])
    return header, rows


def markdown(report: dict) -> str:
    header, rows = table_rows(report)
    lines = [f"Machine: {report['machine']}; {report['date']}; `{report['command']}`", "",
             f"{report['arch']} ({report['weights']} weights), {report['resolution']} px, {report['precision']}, "
             f"torch {report['torch']} with {report['torch_threads']} thread(s), execution {report['execution']}, "
             f"{report['images']} images (sensitivity on {report['sens_images']}, seed-style loop on "
             f"{report['seed_images']}, its sensitivity on {report['seed_sens_images']}), forward batch "
             f"{report['forward_batches']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    gain = report.get("execution_gain")
    if gain:
        lines += ["", "Fast execution (BatchNorm folded into the convolutions, channels_last) over the stock model, "
                  "raw throughput at the forward batch: " + ", ".join(f"{k} ×{v['gain']:.2f}" for k, v in gain.items())
                  + ". Efficiency is against the fast execution of the stock model; speed-ups are against the "
                  "seed-style loop on the stock model, as the seed ran it."]
    speed = report.get("speedup", {})
    walls = [f"{name} {parts['method']['wall_speedup']:.1f}×"
             + (f" / {parts['sensitivity']['wall_speedup']:.1f}×" if "sensitivity" in parts else "")
             for name, parts in speed.items() if not name.startswith("suite")]
    suite = speed.get("suite_with_sensitivity") or speed.get("suite")
    if walls:
        lines += ["", "Speed-ups put the seed-style loop on the engine's machine speed (paired raw throughput); "
                  "unscaled wall-clock ratios (method / sensitivity): " + ", ".join(walls)
                  + (f", suite {suite['wall_speedup']:.1f}×" if suite else "") + "."]
    seed = report.get("seed", {})
    scaled = [f"{name} k={entry['sensitivity']['copies']}" for name, entry in seed.items()
              if "sensitivity" in entry and entry["sensitivity"]["copies"] != N_PERTURB]
    if scaled:
        lines += ["", f"The seed-style sensitivity ran with k copies, its stacked call scaled by {N_PERTURB} / k: "
                  + ", ".join(scaled) + "."]
    memory = report.get("memory", {})
    if memory:
        lines += ["", "Peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in memory.items())]
    if report.get("parity"):
        lines += ["", f"{report['precision']} against fp32 (median over images): " + ", ".join(
            f"{name} cosine {p['cosine_median']:.4f}, rel. L2 {p['relative_l2_median']:.3f}"
            for name, p in report["parity"].items())]
    seg = report.get("segmentation")
    if seg:
        lines += ["", f"Segmentation at {seg['resolution']} px: quickshift {seg['quickshift_s_per_image']:.3f} "
                  f"s/image, SLIC {seg['slic_s_per_image']:.3f} s/image; the device's LIME forwards "
                  f"{seg['device_lime_s_per_image']:.3f} s/image → {seg['workers_needed']} quickshift worker(s) "
                  f"needed, {seg['workers']} available, keeps up: {seg['keeps_up']}"]
    lines += ["", f"Wall time of the benchmark: {report['wall_seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(report))
        return
    header, rows = table_rows(report)
    table = Table(title=f"{report['machine']} — {report['resolution']} px, {report['precision']}")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# ---------------------------------------------------------------------------------------------------------- main


def free_cores() -> int:
    """Usable cores not already kept busy by other processes (one-minute load average), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/bench", help="folder for bench.json and bench.md")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--forward-batch", default="64", help="an int, or 'auto' (probe free device memory; CUDA)")
    p.add_argument("--methods", default=",".join(method_names()))
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
                   help="fast: BatchNorm folded and channels_last (xcv_batch.device.attribution_classifier)")
    p.add_argument("--raw-share", type=float, default=0.05,
                   help="share of the time given to raw passes paired into each measurement")
    p.add_argument("--parity-images", type=int, default=2, help="images for the precision-vs-fp32 comparison")
    p.add_argument("--segmentation-res", type=int, default=224, help="0: skip the segmentation check")
    p.add_argument("--segmentation-images", type=int, default=3)
    p.add_argument("--worker-memory", action="store_true", help="only item 7: a CPU worker's peak at 224 px")
    p.add_argument("--worker-images", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="change a method setting (smoke runs; the targets use the seed's settings)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new sensitivity, seed-loop or segmentation measurement after this many seconds")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores the load average leaves free, at least 1). More threads "
                        "than free cores is ruinous: a descheduled OpenMP thread stalls every parallel region (on "
                        "the shared 2-core EPYC, 2 threads ran 3–5× slower than 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


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

    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.worker_memory:
        with tempfile.TemporaryDirectory(prefix="xcv-bench-") as folder:
            result = measure_worker_memory(args.worker_images, folder, args.threads or free_cores(), log)
        result.update(machine=describe_device("cpu"), date=dt.datetime.now().isoformat(timespec="seconds"))
        with open(os.path.join(args.out, "worker_memory.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        return 0 if result["returncode"] == 0 else 1

    torch.set_num_threads(args.threads or free_cores())
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    classifier = build_classifier(args.arch, "none", args.res, seed=args.seed, device=device)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    settings = method_settings(names, args.set)
    forward_batch = 64 if args.forward_batch == "auto" else int(args.forward_batch)
    engine_classifier = attribution_classifier(classifier) if args.execution == "fast" else classifier
    methods = {name: build_method(name, engine_classifier, settings[name], forward_batch) for name in names}
    image_shape = (3, args.res, args.res)
    if args.forward_batch == "auto":
        # Half the usual headroom: the paired raw passes run while the engine's chunk is still alive.
        probes = size_forward_batches(methods, engine_classifier, image_shape, args.precision, cap=512, headroom=0.4)
        log("forward batches: " + ", ".join(f"{n} {m.forward_batch}" for n, m in methods.items())
            + (f" (probed: {', '.join(f'{n} {p.bytes_per_row / 2**20:.1f} MiB/row' for n, p in probes.items())})"
               if probes else " (no probe on CPU)"))
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
        gain = execution_gain(reference, raw_net, image_shape, device, args.precision, forward_batch)
        log("  fast execution over stock: " + ", ".join(f"{k} ×{v['gain']:.2f}" for k, v in gain.items()))
    engine = Engine(engine_classifier, methods, args.precision, args.seed)
    deadline = started + args.budget_s if args.budget_s else math.inf
    engine_results, _ = measure_engine(engine, inputs, targets, ids, raw, args.pieces,
                                       min(args.sens_images, args.images), args.raw_share, deadline, log)
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
        "sens_images": min(args.sens_images, args.images),
        "seed_images": args.seed_images,
        "seed_sens_images": args.seed_sens_images,

        "forward_batches": {n: m.forward_batch for n, m in methods.items()},
        "execution": args.execution,
        "execution_gain": gain,
        "oom_halved": engine.oom.remembered,
        "settings": {n: dataclasses.asdict(s) for n, s in settings.items()},
        "overrides": args.set,
        "engine": engine_results,
    }

    if args.precision != "fp32" and args.parity_images > 0:
        part = slice(0, min(args.parity_images, args.images))
        report["parity"] = parity(engine, inputs[part], targets[part], ids[part], args.precision)
        engine.precision = args.precision

    if args.seed_images > 0:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if device.type == "cuda":
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
                min(args.seed_sens_images, args.sens_images, args.images), copies.__getitem__, deadline, log,
            )
        report["speedup"] = speedups(engine_results, report["seed"])
        memory["peak_rss_with_seed_loop"] = peak_host_bytes()
        if device.type == "cuda":
            memory["seed_peak_cuda_allocated"] = torch.cuda.max_memory_allocated(device)
    report["memory"] = memory

    if args.segmentation_res > 0 and "lime" in settings and time.perf_counter() < deadline:
        report["segmentation"] = measure_segmentation(
            settings["lime"], args.arch, args.segmentation_res, reference, device, args.precision,
            methods["lime"].forward_batch, args.segmentation_images, segmentation.segmentation_workers(), log,
        )

    report["wall_seconds"] = time.perf_counter() - started
    with open(os.path.join(args.out, "bench.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(args.out, "bench.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(report))
    print_table(report)
    log(f"wrote {args.out}/bench.json and bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
