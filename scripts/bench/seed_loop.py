"""The baseline: what the seed did, image by image — Captum and the lime package with their library defaults.

This is deliberately not the engine: it is what the engine's speed-up is measured against, timed with the same
paired raw passes (raw.py) so that both can be put on the same machine speed.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import numpy as np
import torch

from xcv_batch.execution.device import CudaMemory, is_out_of_memory, synchronize
from xcv_batch.methods.lime import segmentation_images
from xcv_batch.models.classifier import auto_target_layer

from engine import N_PERTURB, SENSITIVITY, kind_of, rows_per_image
from raw import PairedRaw, RawThroughput

#: Methods whose Captum call stacks every perturbed copy's steps (× samples) into one batch: their seed-style
#: sensitivity is the one that may not fit in memory.
STACKED = {"integrated_gradients", "ig_smoothgrad"}


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
            explain or self.explain[name], x, perturb_radius=SENSITIVITY.perturb_radius, n_perturb_samples=copies,
            target=target,
        )


# ----------------------------------------------------------------------------------------- copies that fit memory


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

    LIME: ``lime_copies`` (the lime package explains one image at a time, so its cost is exactly linear in the
    copies). IG and IG-SG: ``requested`` (default n, the seed as it was) unless Captum's stacked batch of
    k × (steps × samples) rows would need more than ``memory_share`` of the free memory. The others (Occlusion's
    one window per pass, Grad-CAM's one row per copy): n.
    """
    if name == "lime":
        return max(1, min(lime_copies, N_PERTURB))
    if name not in STACKED:
        return N_PERTURB
    per_copy = rows_per_image(name, settings, height, width) * bytes_per_row
    fits = int(memory_share * available // max(per_copy, 1))
    return max(1, min(requested, N_PERTURB, fits))


# --------------------------------------------------------------------------------------------------- measuring


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
            # time), a lower bound for Captum's stacked batch (bigger batches cost more per row, see __main__.py)
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
        # Maps of a channels_last model come out channels_last; Captum's sensitivity_max views them flat.
        out = tuple(t.contiguous() for t in out) if isinstance(out, tuple) else out.contiguous()
        synchronize(x.device)
        calls.append(time.perf_counter() - started - (pairing.raw_seconds - raw_before))
        return out

    seconds, raw_rate = pairing.measure(
        seed_loop.net, functools.partial(seed_loop.run_sensitivity, name, x, target, copies, timed_explain)
    )
    return {"seconds": seconds, "clean_seconds": calls[0], "raw_rate": raw_rate}
