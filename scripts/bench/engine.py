"""The engine under the benchmark: ``BatchExplainer.explain_batch``, timed per method, as a run calls it.

Per method one explainer with every metric off (the method's time) and, for Max-Sensitivity, one with only it on:
its time is the difference between the two on the same image, each with raw passes paired in. What a method costs
per image comes from the method registry (its ``passes``), whether it differentiates too; nothing here names a
method.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import torch

from xcv_batch.config import ComputeConfig, MetricsConfig, SensitivityConfig
from xcv_batch.plan import Passes, classify_passes
from xcv_batch.execution import device as dev
from xcv_batch.execution.explain import BatchExplainer, BatchResult
from xcv_batch.methods import method_spec, segmentation
from xcv_batch.methods.settings import LimeSettings

from raw import PairedRaw, Piece, RawThroughput, measure_pieces, summarise

SENSITIVITY = SensitivityConfig()  # the seed's Max-Sensitivity: n = 10 copies, radius 0.02
N_PERTURB = SENSITIVITY.n_perturb_samples

#: Every quality metric off: the engine's time is then the method's (and the forward that picks the target).
NO_METRICS = MetricsConfig({name: None for name in MetricsConfig()})

#: A method whose whole-batch call is at most this many forward batches is short: it is timed as repeats of that
#: call, with chunks as full as in a run; a longer one as slices of the images (the same work once, split).
REPEAT_BELOW_BATCHES = 16

#: One row of each kind of pass in forward-equivalents (the registry's cost model: a backward costs two forwards).
ROW_WORK = {"forward": Passes(forward=1).work, "forward_backward": Passes(forward_backward=1).work}


def rows_per_image(name: str, settings, height: int, width: int) -> int:
    """Model passes one image costs a method (the unit of efficiency): the rows of its registered ``passes``."""
    return method_spec(name).passes(settings, height, width).rows


def kind_of(name: str) -> str:
    return "forward_backward" if method_spec(name).differentiates else "forward"


def classify_rows(name: str, kind: str, images: int, forward_batch: int) -> float:
    """The forward that picks an image's target and probability when ``name`` runs alone on ``images`` images, in
    rows of ``kind``: none when the method's own first pass picks it (its images fit one of its forward batches)."""
    own = method_spec(name).classifies and images <= forward_batch
    return 0.0 if own else classify_passes([]).work / ROW_WORK[kind]


class EngineUnderTest:
    """Builds the benchmark's explainers: one method each, at the benchmark's precision and execution.

    With ``forward_batch`` "auto", each kind of pass is probed once from free device memory (on a CPU: 64), with half
    a run's headroom, since the paired raw passes run while the engine's chunk is still alive.
    """

    def __init__(self, classifier, settings: dict, precision: str, execution: str, forward_batch: str, seed: int,
                 torch_threads: int | None, image_shape):
        self.classifier, self.settings, self.seed, self.torch_threads = classifier, settings, seed, torch_threads
        self.image_shape = tuple(image_shape)
        self.auto = forward_batch == "auto"
        self.compute = ComputeConfig(
            forward_batch=64 if self.auto else int(forward_batch), precision=precision,
            fast_execution=execution == "fast",
        )
        self.probed: dict[bool, dev.BatchProbe] = {}  # differentiates → the probe of that kind of pass
        self.built: list[BatchExplainer] = []
        #: per method, the explainer that times it (every metric off)
        self.attribution = {name: self.explainer(name) for name in settings}

    def explainer(self, name: str, sensitivity: SensitivityConfig | None = None,
                  precision: str | None = None) -> BatchExplainer:
        compute = dataclasses.replace(self.compute, precision=precision or self.compute.precision)
        explainer = BatchExplainer(self.classifier, {name: self.settings[name]}, sensitivity, NO_METRICS, compute,
                                   seed=self.seed, torch_threads=self.torch_threads)
        if name in explainer.unavailable:
            raise SystemExit(f"{name} cannot run on {self.classifier.arch}: {explainer.unavailable[name]}")
        if self.auto:
            method = explainer.methods[name]
            if method.differentiates not in self.probed:
                probes = dev.size_forward_batches({name: method}, explainer.executed, self.image_shape,
                                                  compute.precision, cap=512, headroom=0.4)
                if probes:
                    self.probed[method.differentiates] = probes[name]
            if method.differentiates in self.probed:  # nothing is probed on a CPU
                method.forward_batch = self.probed[method.differentiates].forward_batch
        self.built.append(explainer)
        return explainer

    def forward_batch(self, name: str) -> int:
        return self.attribution[name].methods[name].forward_batch

    def oom_halved(self) -> dict:
        return {name: size for explainer in self.built for name, size in explainer.oom.remembered.items()}


def start_segmentation_pool() -> None:
    """Building an explainer resets the shared pool that segments for LIME; its processes start on first use.
    Started here, before a measurement, their start-up is not counted as a method's work."""
    workers = segmentation.segmentation_workers()
    if workers > 1:
        segmentation.segment_batch([np.zeros((8, 8, 3))] * workers, LimeSettings(), list(range(workers)))


def explain(explainer: BatchExplainer, inputs, targets, ids) -> BatchResult:
    """explain_batch on explicit targets; a failure is the benchmark's failure, not an error row to time."""
    result = explainer.explain_batch(inputs, ids, targets=targets)
    failed = [f"{r.method} on {ids[r.image]}: {r.error}" for r in result.results if r.error]
    if failed:
        raise RuntimeError(f"the engine failed: {failed[0]}")
    return result


def maps_of(result: BatchResult, name: str, n_images: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(result.result(i, name).attribution) for i in range(n_images)])


def measure_engine(engine: EngineUnderTest, inputs, targets, ids, raw: RawThroughput, pieces_per_method: int,
                   share: float, log) -> tuple[dict, dict]:
    """Every method on all images → (timings, maps)."""
    n_images = inputs.shape[0]
    height, width = inputs.shape[2:]
    results: dict = {}
    maps: dict = {}
    for name, explainer in engine.attribution.items():
        per_image = rows_per_image(name, engine.settings[name], height, width)
        kind = kind_of(name)
        forward_batch = engine.forward_batch(name)
        short = per_image * n_images <= REPEAT_BELOW_BATCHES * forward_batch
        if short:
            groups = [list(range(n_images))] * max(2, pieces_per_method // 2)  # two are enough for a median of pairs
        else:
            groups = [list(g) for g in np.array_split(np.arange(n_images), min(pieces_per_method, n_images))]
        outputs: dict[int, torch.Tensor] = {}
        start_segmentation_pool()

        def run_group(group):
            result = explain(explainer, inputs[group], targets[group], [ids[i] for i in group])
            for position, i in enumerate(group):
                outputs[i] = torch.from_numpy(result.result(position, name).attribution)

        if short:  # one untimed call first: the kernels' plans for its shapes, as a run has them after a batch
            run_group(groups[0])
        classify = classify_rows(name, kind, max(len(g) for g in groups), forward_batch)
        per_image_rows = per_image + classify
        pieces = [Piece(functools.partial(run_group, g), per_image_rows * len(g),
                        min(forward_batch, per_image * len(g))) for g in groups]
        measured = measure_pieces(pieces, kind, raw, explainer.executed.net, share)
        measured["seconds_per_image"] = measured["seconds"] / sum(len(g) for g in groups)
        measured["forward_batch"] = forward_batch
        measured["rows_per_image"] = per_image_rows
        measured["classify_rows_per_image"] = classify
        results[name] = {"method": measured}
        maps[name] = torch.stack([outputs[i] for i in range(n_images)])
        log(f"  engine {name}: {measured['seconds_per_image']:.3f} s/image, efficiency {measured['efficiency']:.2f}")
    return results, maps


def measure_sensitivity(engine: EngineUnderTest, inputs, targets, ids, raw: RawThroughput, sens_images: int,
                        share: float, deadline: float, results: dict, log) -> None:
    """Each method's Max-Sensitivity on the first ``sens_images`` images (each method started only before
    ``deadline``, a ``time.perf_counter()`` value), into ``results[name]["sensitivity"]``.

    Per image, explain_batch runs with Max-Sensitivity on and then off; the difference of their own seconds is the
    sensitivity's (classification, the clean map and copying it out cancel), its rows the n copies' explanations.
    """
    height, width = inputs.shape[2:]
    for name, without in engine.attribution.items():
        if sens_images <= 0:
            break
        if time.perf_counter() > deadline:
            log(f"  engine sensitivity {name}: skipped (--budget-s spent)")
            continue
        with_sensitivity = engine.explainer(name, SENSITIVITY)
        start_segmentation_pool()
        kind = kind_of(name)
        rows = rows_per_image(name, engine.settings[name], height, width) * N_PERTURB
        batch = min(engine.forward_batch(name), rows)  # one image per piece: its n copies go in one call
        if rows <= REPEAT_BELOW_BATCHES * engine.forward_batch(name):  # short: warm it up, as the method's calls
            explain(with_sensitivity, inputs[:1], targets[:1], ids[:1])
        seconds, raw_rates, subtracted = [], [], []
        for i in range(sens_images):
            part = slice(i, i + 1)
            on, raw_rate = PairedRaw(raw, kind, batch, share).measure(
                with_sensitivity.executed.net,
                functools.partial(explain, with_sensitivity, inputs[part], targets[part], ids[part]))
            off, _ = PairedRaw(raw, kind, batch, share).measure(
                without.executed.net, functools.partial(explain, without, inputs[part], targets[part], ids[part]))
            seconds.append(on - off)
            raw_rates.append(raw_rate)
            subtracted.append(off)
        measured = summarise(kind, batch, [rows] * sens_images, seconds, raw_rates)
        measured["seconds_per_image"] = measured["seconds"] / sens_images
        measured["subtracted_seconds"] = subtracted  # explain_batch with sensitivity off, on the same image
        results[name]["sensitivity"] = measured
        log(f"  engine sensitivity {name}: {measured['seconds_per_image']:.2f} s/image, "
            f"efficiency {measured['efficiency']:.2f}")


def parity(engine: EngineUnderTest, maps: dict, inputs, targets, ids) -> dict:
    """The engine's maps at its precision (``maps``, first rows) against an fp32 explainer's on the same images:
    cosine, relative L2 error and largest difference per method (at fp32: equal up to float rounding, since the
    timed calls may batch the images differently)."""
    out = {}
    n = inputs.shape[0]
    for name in engine.attribution:
        reference = maps_of(explain(engine.explainer(name, precision="fp32"), inputs, targets, ids), name, n)
        a, b = reference.flatten(1).double(), maps[name][:n].flatten(1).double()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
        relative = torch.linalg.vector_norm(a - b, dim=1) / torch.linalg.vector_norm(a, dim=1).clamp_min(1e-30)
        out[name] = {"cosine_median": cosine.median().item(), "relative_l2_median": relative.median().item(),
                     "max_abs_difference": (a - b).abs().max().item()}
    return out
