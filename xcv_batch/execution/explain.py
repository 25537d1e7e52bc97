"""explain_batch: every method and metric of a job on one batch of images on the device, apart from any I/O.

A :class:`BatchExplainer` holds a built classifier, the copy passes run on, the built methods and the metric runner;
:meth:`BatchExplainer.explain_batch` turns a batch of normalised inputs into a :class:`BatchResult`: per image its
target, per (image, method) a map and its row columns, or why there is none. The worker writes that result to an
output directory, the Python API returns it, the benchmark times it: one code path, one set of numbers.

Each image's target comes from one forward of the batch. Where a method's first pass is that very forward (its spec
sets ``classifies``: Guided Grad-CAM's), the engine takes the targets from it and runs no forward of its own: the
same computation on the same copy, so the same targets, probabilities and maps (``merge_classify=False`` keeps
the separate forward, for comparison).

A failure never costs more than its own images: a forward or a method that raises on a batch is retried per image,
so one image that breaks it fails alone (an error row), and a method that cannot run on the model at all
(:class:`~xcv_batch.errors.MethodUnavailable`) gives every image an error row while the others run.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from . import device as dev
from ..cores import usable_cores
from ..config import ComputeConfig, Job, MetricsConfig, SensitivityConfig
from ..data.sources import ImageRecord
from ..errors import MethodUnavailable, first_line
from ..methods import build_method, method_spec
from ..methods.base import target_outputs
from ..methods.segmentation import set_segmentation_workers
from ..metrics.base import MapBatch, MetricContext
from .metric_runner import MetricRunner
from ..models.classifier import Classifier, build_classifier, read_categories, resolve_device
from ..models.pinned import PinnedWeights
from ..seeding import derive_seed
from ..work import MethodDone, ProgressEvent
from .tally import ShardTally

log = logging.getLogger(__name__)

#: ``forward_batch: auto`` on a CPU at up to 64 px: throughput there is within ±6 % from 64 to 256 copies (ResNet-18
#: at 64 px on the 2-core EPYC, forward and forward+backward, 1 and 2 threads) and drops below 64.
CPU_FORWARD_BATCH = 64
#: At larger inputs a chunk of 64 spills the caches: ResNet-18's forward at 224 px, one thread, interleaved medians
#: on the same EPYC: 161 / 167 / 189 ms per copy at 16 / 32 / 64 copies (173 at 8). Fewer copies keep about the same
#: pixels per chunk, down to this floor.
CPU_FORWARD_BATCH_MIN = 16


def cpu_forward_batch(resolution: int) -> int:
    """``forward_batch: auto`` on a CPU: 64 copies up to 64 px, then the same pixels per chunk, at least 16."""
    return max(CPU_FORWARD_BATCH_MIN, min(CPU_FORWARD_BATCH, CPU_FORWARD_BATCH * 64 * 64 // max(resolution, 1) ** 2))


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class ImageResult:
    """One image of a batch: its target (None when its forward failed, and ``error`` says why)."""

    image_id: str
    target: int | None = None
    target_name: str | None = None
    target_prob: float | None = None
    error: str | None = None


@dataclass
class MethodResult:
    """One method on one image: its map (float32 (C, H, W)) and row columns, or the error message."""

    image: int  # position of the image in the batch
    method: str
    attribution: np.ndarray | None = None
    columns: dict = field(default_factory=dict)  # attr_seconds, sensitivity_max, metric and diagnostic columns, note
    error: str | None = None


@dataclass
class BatchResult:
    """What :meth:`BatchExplainer.explain_batch` computed for a batch, in the order it was computed."""

    images: list[ImageResult]
    results: list[MethodResult]

    def result(self, image: int, method: str) -> MethodResult:
        """The result of ``method`` on the image at position ``image``."""
        return next(r for r in self.results if r.image == image and r.method == method)

    def rows(self, shared: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Parquet rows, given per image the columns its rows share beyond the target (image_id, image_path,
        index, label)."""
        rows = []
        for result in self.results:
            image = self.images[result.image]
            base = {
                "image_id": shared[result.image]["image_id"],
                "image_path": shared[result.image]["image_path"],
                "index": shared[result.image]["index"],
                "target": image.target,
                "target_name": image.target_name,
                "target_prob": image.target_prob,
                "label": shared[result.image]["label"],
            }
            rows.append(method_row(base, result.method, error=result.error, **result.columns))
        return rows


def method_row(image: dict, method: str, error: str | None = None, **columns) -> dict:
    """One row of the Parquet table: an image's columns, the method, its result columns (or its error)."""
    return {
        **image,
        "method": method,
        "sensitivity_max": None,
        "attr_seconds": None,
        "sensitivity_seconds": None,
        **columns,
        "status": "error" if error else "ok",
        "error": error,
        "note": columns.get("note"),
    }


def image_columns(index: int, record: ImageRecord, target: int | None = None, target_name: str | None = None,
                  target_prob: float | None = None) -> dict:
    """The columns every row of an image shares (the target ones null when the image failed before a forward)."""
    return {
        "image_id": record.image_id,
        "image_path": record.path,
        "index": index,
        "target": target,
        "target_name": target_name,
        "target_prob": target_prob,
        "label": record.label,
    }


def error_rows(index: int, record: ImageRecord, methods: Iterable[str], message: str) -> list[dict]:
    """An image's rows when it could not be explained at all: one error row per method."""
    image = image_columns(index, record)
    return [method_row(image, method, error=message) for method in methods]


def _failure(what: str) -> str:
    """``<what> failed: <the exception's last line>``, for the exception being handled."""
    return f"{what} failed: {traceback.format_exc(limit=1).strip().splitlines()[-1]}"


# ---------------------------------------------------------------------------------------------------- explainer


class BatchExplainer:
    """A job's methods and metrics on one model and device, ready to explain batches.

    ``classifier`` is the model as built (its weights are what the randomisation check copies); with
    ``compute.fast_execution`` every pass runs on its fast copy, :attr:`executed`. ``methods`` maps each method's
    name to its settings dataclass, in job order; ``sensitivity`` is Max-Sensitivity's settings (None: off) and
    ``metrics`` the job's ``metrics:`` section. ``torch_threads`` is this explainer's share of the node's cores (None:
    all of them); it decides how many processes may segment for LIME next to it. ``merge_classify``: take the
    targets from the first pass of a method that classifies (False: always a forward of their own).
    """

    def __init__(
        self,
        classifier: Classifier,
        methods: Mapping[str, Any],
        sensitivity: SensitivityConfig | None = None,
        metrics: MetricsConfig | None = None,
        compute: ComputeConfig | None = None,
        seed: int = 0,
        target: Literal["predicted", "label"] = "predicted",
        torch_threads: int | None = None,
        merge_classify: bool = True,
    ):
        self.classifier = classifier
        self.merge_classify = merge_classify
        self.compute = compute = compute or ComputeConfig()
        self.metrics_config = metrics if metrics is not None else MetricsConfig()
        self.sensitivity = sensitivity
        self.seed = seed
        self.target = target
        #: the model every pass runs on: the fast copy unless ``compute.fast_execution`` is off
        self.executed = self._execution(classifier)
        self.forward_batch = (
            cpu_forward_batch(classifier.preprocessing.crop_size) if compute.forward_batch == "auto"
            else compute.forward_batch
        )
        self.method_settings = dict(methods)
        #: why a method of the job cannot run on this model (it stays in the job: every image gets an error row)
        self.unavailable: dict[str, str] = {}
        # Built here, before any image: a method checks its settings against the model (Guided Grad-CAM's layer).
        self.methods = {}
        #: the compiled copy the compilable methods run on (``compute.compile``), else :attr:`executed`
        self.compiled = dev.compiled_classifier(self.executed) if compute.compile else self.executed
        for name, settings in methods.items():
            model = self.compiled if method_spec(name).compilable else self.executed
            if compute.compile and model is self.executed:
                log.info("compute.compile: %s runs eager (its passes cannot be compiled)", name)
            try:
                self.methods[name] = build_method(name, model, settings, self.forward_batch)
            except MethodUnavailable as err:
                self.unavailable[name] = first_line(err)
                log.warning("unavailable for this model, its rows are errors: %s", self.unavailable[name])
        if compute.forward_batch == "auto":
            self._size_forward_batches()
        self.oom = dev.HalveOnOutOfMemory()
        set_segmentation_workers(segmentation_workers(compute.segmentation_workers, classifier.device, torch_threads))
        self.metrics = MetricRunner(
            MetricContext(classifier=classifier, executed=self.executed, methods=self.methods,
                          method_settings=self.method_settings, forward_batch=self.forward_batch, seed=seed,
                          execution=self._execution),
            sensitivity, self.metrics_config, self.oom,
        )

    @classmethod
    def from_job(cls, job: Job, device: str | None = None, torch_threads: int | None = None,
                 weights: PinnedWeights | None = None) -> "BatchExplainer":
        """The job's model built on ``device`` (default: ``compute.device``), with the job's methods and metrics;
        ``weights``: the bytes of its weights file as the run pinned them (else the file is read)."""
        if torch_threads:
            torch.set_num_threads(torch_threads)
        classifier = build_classifier(
            job.model.arch,
            job.model.weights,
            job.model.resolution,
            seed=job.seed,
            device=resolve_device(device or job.compute.device),
            categories=read_categories(job.model.categories),
            preprocessing=job.model.preprocessing,
            pinned=weights,
        )
        return cls(classifier, job.methods, job.sensitivity, job.metrics, job.compute, job.seed, job.target,
                   torch_threads=torch_threads)

    @property
    def method_names(self) -> tuple[str, ...]:
        """Every method of the job, in job order (unavailable ones included: they get error rows)."""
        return tuple(self.method_settings)

    @property
    def wants_masks(self) -> bool:
        """Whether ground-truth masks are used (localisation is not off)."""
        return self.metrics.wants_masks

    def _execution(self, classifier: Classifier) -> Classifier:
        return dev.attribution_classifier(classifier) if self.compute.fast_execution else classifier

    def _size_forward_batches(self) -> None:
        """On a GPU, each kind of pass gets the forward batch that fits its free memory (CPU: left at the default)."""
        size = self.classifier.preprocessing.crop_size
        probes = dev.size_forward_batches(self.methods, self.executed, (3, size, size), self.compute.precision)
        if probes:
            # Quality metrics run plain forwards of maps' perturbed inputs: the smallest probe is safe for them.
            self.forward_batch = min(probe.forward_batch for probe in probes.values())
            log.info("forward batches from free device memory: %s",
                     {name: probe.forward_batch for name, probe in probes.items()})

    # -------------------------------------------------------------------------------------------- one batch
    def explain_batch(
        self,
        inputs: torch.Tensor,
        image_ids: Sequence[str],
        labels: Sequence[int | None] | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
        targets: Sequence[int] | torch.Tensor | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> BatchResult:
        """Every method and metric on a batch.

        ``inputs``: (N, 3, H, W) normalised model inputs on the model's device. ``targets``: the class to explain
        per image; without them, the ``target`` mode decides (the predicted class, or ``labels``). ``masks``: one
        (H, W) bool ground-truth mask or None per image (None: no image has one), for localisation. ``progress``
        receives :mod:`xcv_batch.work` events (a :class:`ShardTally` also counts forwards).
        """
        if len(image_ids) != inputs.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {len(image_ids)} image ids")
        if targets is None and self.target == "label":
            if labels is None or any(label is None for label in labels):
                raise ValueError("target is 'label': give every image's label (or explicit targets)")
            targets = list(labels)
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.long).to(inputs.device)
        if masks is not None and not any(m is not None for m in masks):
            masks = None
        tally = progress if isinstance(progress, ShardTally) else ShardTally(self.method_names, progress)
        images = [ImageResult(image_id) for image_id in image_ids]
        results: list[MethodResult] = []
        # A NaN or inf pixel makes every map and score of its image NaN (and its "prediction" class 0): such an image
        # is refused before the model runs, saying why, and the others of the batch go on.
        bad = (~torch.isfinite(inputs)).flatten(1).sum(dim=1).tolist()
        usable = [i for i, count in enumerate(bad) if count == 0]
        if len(usable) == len(image_ids):
            self._explain_images(usable, inputs, targets, masks, images, results, tally)
        elif usable:
            self._explain_images(usable, inputs[usable], None if targets is None else targets[usable],
                                 None if masks is None else [masks[i] for i in usable], images, results, tally)
        for i, count in enumerate(bad):
            if count:
                images[i].error = f"input has {count} non-finite pixel values (NaN or ±inf)"
                results.extend(MethodResult(i, name, error=images[i].error) for name in self.method_names)
        return BatchResult(images, results)

    def _explain_images(self, positions: list[int], inputs, targets, masks, images: list[ImageResult],
                        results: list[MethodResult], tally: ShardTally) -> None:
        """The batch's forward, then every method. If the forward itself fails, each image is tried alone, so one
        image that breaks it fails only itself. A method whose first pass is that forward runs first and gives the
        targets; its results still take its place in job order."""
        image_ids = [images[p].image_id for p in positions]
        done: dict[str, list] = {}  # a method that already ran (the one that classified) → its outcome
        provider = self._classifying_method(len(positions))
        if provider is not None:
            classified = self._explain_classifying(provider, positions, inputs, targets, image_ids,
                                                   self._on_device(masks, inputs.device), images, tally)
            if classified is not None:
                targets, done[provider] = classified
        if not done:
            try:
                targets = self._classify(positions, inputs, targets, images)
            except Exception:  # noqa: BLE001 - isolate the culprit below, then report it per image
                if len(positions) == 1:
                    message = _failure("forward pass")
                    images[positions[0]].error = message
                    results.extend(MethodResult(positions[0], name, error=message) for name in self.method_names)
                    return
                for i, position in enumerate(positions):
                    self._explain_images([position], inputs[i: i + 1], None if targets is None else targets[i: i + 1],
                                         None if masks is None else masks[i: i + 1], images, results, tally)
                return
        masks = self._on_device(masks, inputs.device)
        for name in self.method_names:
            if name in self.unavailable:
                results.extend(MethodResult(p, name, error=self.unavailable[name]) for p in positions)
                continue
            outcome = done.get(name)
            if outcome is None:
                method = self.methods[name]
                started = time.perf_counter()
                # Counted on the model the method calls (a compiled copy's wrapper: hooks there stay outside the
                # graph).
                with tally.counting_forwards(method.classifier.net, name, len(positions), runner=method):
                    outcome = self._run_method(name, method, inputs, targets, image_ids, masks)
                tally(MethodDone(name, len(positions), time.perf_counter() - started))
            for position, result in zip(positions, outcome):
                if isinstance(result, str):
                    results.append(MethodResult(position, name, error=result))
                else:
                    attribution, columns = result
                    results.append(MethodResult(position, name, attribution=attribution, columns=columns))

    @staticmethod
    def _on_device(masks, device: torch.device):
        """One mask or None per image, on ``device``; None when no image has one (an image without a mask gets no
        localisation, the others of its batch do)."""
        if masks is None:
            return None
        masks = [m.to(device) if m is not None else None for m in masks]
        return masks if any(m is not None for m in masks) else None

    def _classifying_method(self, images: int) -> str | None:
        """The method whose first pass on ``images`` images is the classifying forward itself, if any: one that
        classifies (its spec says so), built on the copy the forward runs on, and taking them in one forward."""
        if not self.merge_classify:
            return None
        for name, method in self.methods.items():
            if method.classifies and method.classifier.net is self.executed.net and method.classifies_batch(images):
                return name
        return None

    def _explain_classifying(self, name: str, positions: list[int], inputs, targets, image_ids, masks,
                             images: list[ImageResult], tally: ShardTally) -> tuple[torch.Tensor, list] | None:
        """``name`` on the batch with the targets picked from its first pass: (targets, its outcome), or None
        when it raised. The batch then runs as without it (a forward of its own, each method with its retries),
        so which image fails, and why, stays what it is there."""
        method = self.methods[name]
        pick = _TargetPick(self, positions, targets, images)
        started = time.perf_counter()
        try:  # the pick records the targets into ``images`` only when the method is done
            with tally.counting_forwards(method.classifier.net, name, len(positions), runner=method), \
                    dev.autocast(inputs.device, self.compute.precision):
                outcome = self._explain(name, method, inputs, None, image_ids, masks, pick=pick)
        except Exception:  # noqa: BLE001 - the batch is run again the ordinary way, which reports it per image
            log.info("%s; the batch runs with a classifying forward of its own", _failure(f"{name} classifying"))
            for position in positions:  # as before any forward: the ordinary path sets them, or says why not
                image = images[position]
                image.target = image.target_name = image.target_prob = None
            return None
        tally(MethodDone(name, len(positions), time.perf_counter() - started))
        return pick.picked[0], outcome

    def _classify(self, positions: list[int], inputs: torch.Tensor, targets: torch.Tensor | None,
                  images: list[ImageResult]) -> torch.Tensor:
        """The targets of the images (given, or by the target mode), with their names and probabilities."""
        with torch.no_grad(), dev.autocast(inputs.device, self.compute.precision):
            outputs = self.executed.net(inputs)
        targets, target_probs = self._take_targets(outputs, targets)
        self._record_targets(positions, targets, target_probs, images)
        return targets

    def _take_targets(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The targets from the classifying forward's ``outputs`` (given, or the predicted classes) and their
        probabilities, on the device."""
        with torch.no_grad(), dev.autocast(outputs.device, self.compute.precision):
            probabilities = torch.softmax(outputs.float(), dim=1)
        if targets is None:
            targets = probabilities.argmax(dim=1)
        return targets, target_outputs(probabilities, targets)

    def _record_targets(self, positions: list[int], targets: torch.Tensor, target_probs: torch.Tensor,
                        images: list[ImageResult]) -> None:
        """The images' targets, their names and probabilities, filled into ``images`` (a wait for the device)."""
        for position, target, prob in zip(positions, targets.cpu().tolist(), target_probs.cpu().tolist()):
            image = images[position]
            image.target, image.target_name, image.target_prob = target, self.classifier.category(target), prob

    def _run_method(self, name, method, inputs, targets, image_ids: Sequence[str], masks) -> list:
        """Per image: (map, columns), or an error message.

        The batch runs as one; if it raises, each image runs alone, so one bad image fails only itself.
        """
        try:
            with dev.autocast(inputs.device, self.compute.precision):
                return self._explain(name, method, inputs, targets, image_ids, masks)
        except Exception:  # noqa: BLE001 - isolate the culprit below, then report it per image
            if len(image_ids) == 1:
                return [_failure(name)]
        results = []
        for i in range(len(image_ids)):
            one_mask = masks[i: i + 1] if masks is not None else None
            results.extend(
                self._run_method(name, method, inputs[i: i + 1], targets[i: i + 1], image_ids[i: i + 1], one_mask)
            )
        return results

    def _explain(self, name, method, inputs, targets, image_ids: Sequence[str], masks,
                 pick: "_TargetPick | None" = None) -> list[tuple]:
        """The maps and columns of ``name`` on the batch; with ``pick`` (and no ``targets``), the method picks the
        targets from its first pass."""
        n = len(image_ids)
        seeds = [derive_seed(self.seed, image_id, name) for image_id in image_ids]
        started = time.perf_counter()
        if pick is None:
            attributions = self.oom.run(method, lambda: method.attribute(inputs, targets, seeds)).float()
        else:
            # No halving on out-of-memory here: a smaller chunk would no longer be the classifying forward.
            attributions = method.attribute_classifying(inputs, seeds, pick).float()
            targets = pick.record()
        dev.synchronize(inputs.device)
        attr_seconds = (time.perf_counter() - started) / n
        how = method.row_columns()  # read before the metrics call the method again on perturbed inputs
        if not torch.isfinite(attributions).all():
            bad = [i for i in range(n) if not torch.isfinite(attributions[i]).all()]
            if n == 1:
                raise FloatingPointError(f"{name} produced non-finite values")
            raise FloatingPointError(f"{name} produced non-finite values for images {bad}")
        zero_maps = (attributions.reshape(n, -1) == 0).all(dim=1).cpu().tolist()
        batch = MapBatch(name, method, inputs, targets, seeds, list(image_ids), attributions, masks)
        quality, reasons = self.metrics.evaluate(batch)
        for column, (values, why_nan) in method.diagnostics(inputs, targets, attributions).items():
            quality[column] = [None if v != v else float(v) for v in values.cpu().tolist()]
            reasons[column] = [why_nan if v is None else None for v in quality[column]]
        maps = attributions.cpu().numpy()
        explained = []
        for i in range(n):
            columns = {
                "attr_seconds": attr_seconds,
                "sensitivity_max": None,
                "sensitivity_seconds": None,
                **{column: values[i] for column, values in quality.items()},
            }
            columns.update(how)
            why = {column: per_image[i] for column, per_image in reasons.items() if per_image[i]}
            explained.append((maps[i], with_missing_values_explained(columns, zero_maps[i], why)))
        return explained


class _TargetPick:
    """The ``pick`` a classifying method calls with its first pass's outputs: the explainer takes the targets and
    their probabilities from them as from its own forward; :meth:`record` fills them into the images once the method
    is done (not in the middle of its passes, where reading them would make the host wait for the device)."""

    def __init__(self, explainer: BatchExplainer, positions: list[int], given: torch.Tensor | None,
                 images: list[ImageResult]):
        self.explainer, self.positions, self.given, self.images = explainer, positions, given, images
        self.picked: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        self.picked = self.explainer._take_targets(outputs, self.given)
        return self.picked[0]

    def record(self) -> torch.Tensor:
        """The targets, recorded into the images; an error if the method never picked them."""
        if self.picked is None:
            raise RuntimeError("the classifying method did not pick the targets from its first pass")
        targets, target_probs = self.picked
        self.explainer._record_targets(self.positions, targets, target_probs, self.images)
        return targets


def segmentation_workers(configured: int | str, device: torch.device, torch_threads: int | None) -> int:
    """``compute.segmentation_workers``, or for auto: on a GPU, the worker's cores but the one feeding the device;
    on a CPU, inline (the model's threads hold the cores, and segmentation is ~1 % of LIME's work)."""
    if configured != "auto":
        return configured
    if device.type != "cuda":
        return 1
    return max(1, (torch_threads or usable_cores()) - 1)


def with_missing_values_explained(columns: dict, zero_map: bool, reasons: dict[str, str] | None = None) -> dict:
    """``columns`` with every undefined value as NaN and a ``note`` saying why, so no ok row holds a silent NaN.

    An all-zero map has no relative sensitivity (‖Φ(x+δ) − Φ(x)‖ / ‖Φ(x)‖ divides by zero; Captum's convention of
    dividing by 1 instead would make the map that says nothing the "most stable" one). ``reasons`` names the cause
    of a missing value where its producer knows it (no mask for this image, an all-zero map's complexity …); any
    other value that is not finite came from inputs that overflowed the model. Columns with the same cause share one
    clause of the note.
    """
    reasons = reasons or {}
    why_missing: dict[str, list[str]] = {}  # cause → its columns, in column order

    def explain(column: str, why: str) -> None:
        columns[column] = float("nan")
        why_missing.setdefault(why, []).append(column)

    if zero_map and columns.get("sensitivity_max") is not None:
        explain("sensitivity_max", "undefined: the map is all zero")
    for column, value in list(columns.items()):
        if column == "sensitivity_max" and zero_map:
            continue
        missing = value is None or (isinstance(value, float) and not math.isfinite(value))
        if missing and reasons.get(column):
            explain(column, reasons[column])
        elif isinstance(value, float) and not math.isfinite(value):
            explain(column, "not finite: the perturbed or masked inputs overflowed the model")
    if why_missing:
        columns["note"] = "; ".join(f"{', '.join(names)} {why}" for why, names in why_missing.items())
    return columns
