"""A worker: holds the model and the methods, and turns one shard of images into committed results.

No Ray here: the driver runs a ShardWorker in-process or wraps it in an actor; both call ``process_shard``.
"""

from __future__ import annotations

import itertools
import math
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import device as dev
from ..config import Job
from .cores import usable_cores
from ..data.images import ImageRecord, decode_many, load_mask
from ..errors import ImageError
from ..methods import build_method
from ..methods.base import target_outputs
from ..metrics.sensitivity import sensitivity_max
from ..models.classifier import Classifier, build_classifier, read_categories, resolve_device
from ..driver.progress import MethodDone, ProgressEvent, ShardTally
from ..metrics.runner import QualityMetrics
from ..seeding import derive_seed
from ..methods.segmentation import set_segmentation_workers
from ..driver.shards import Shard, ShardReport  # noqa: F401 - re-exported: the driver's and tests' import path
from ..output.sink import OutputSink

log = logging.getLogger(__name__)

#: ``forward_batch: auto`` on a CPU: throughput there is within ±6 % from 64 to 256 copies (ResNet-18 at 64 px on
#: the 2-core EPYC, forward and forward+backward, 1 and 2 threads) and drops below 64, where nothing is gained.
CPU_FORWARD_BATCH = 64


@dataclass
class _Prepared:
    """One image ready for the methods (or its decode error)."""

    index: int
    record: ImageRecord
    pixels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    error: str | None = None


@dataclass
class _Explained:
    """One method's result for one image."""

    attribution: np.ndarray
    columns: dict  # row columns: attr_seconds, sensitivity_max, sensitivity_seconds, quality metrics


class ShardWorker:
    """Holds the model and the methods of one job on one device.

    ``torch_threads`` is this worker's share of the node's cores (None: all of them, the in-process case); it also
    decides how many processes may segment for LIME next to it.
    """

    def __init__(self, job: Job, device: str | None = None, torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.job = job
        compute = job.compute
        #: the model as built: its weights are what the job names (the randomisation check copies these)
        self.classifier: Classifier = build_classifier(
            job.model.arch,
            job.model.weights,
            job.model.resolution,
            seed=job.seed,
            device=resolve_device(device or compute.device),
            categories=read_categories(job.model.categories),
        )
        #: the model every pass runs on: the fast copy unless ``compute.fast_execution`` is off
        self.executed = self._execution(self.classifier)
        self.forward_batch = CPU_FORWARD_BATCH if compute.forward_batch == "auto" else compute.forward_batch
        # Built here, before any image: a method checks its settings against the model (Guided Grad-CAM's layer).
        self.methods = {
            name: build_method(name, self.executed, settings, self.forward_batch)
            for name, settings in job.methods.items()
        }
        if compute.forward_batch == "auto":
            self._size_forward_batches()
        self.oom = dev.HalveOnOutOfMemory()
        self.feeder = dev.DeviceFeeder(self.classifier.device)
        set_segmentation_workers(self._segmentation_workers(torch_threads))
        self.quality = QualityMetrics(
            job, self.classifier, self.methods, self.forward_batch, self.executed, self._execution
        )
        self._tally = ShardTally(self.methods)  # the running shard's progress (none outside process_shard)

    def _execution(self, classifier: Classifier) -> Classifier:
        return dev.attribution_classifier(classifier) if self.job.compute.fast_execution else classifier

    def _size_forward_batches(self) -> None:
        """On a GPU, each kind of pass gets the forward batch that fits its free memory (CPU: left at the default)."""
        size = self.classifier.preprocessing.crop_size
        probes = dev.size_forward_batches(self.methods, self.executed, (3, size, size), self.job.compute.precision)
        if probes:
            # Quality metrics run plain forwards of maps' perturbed inputs: the smallest probe is safe for them.
            self.forward_batch = min(probe.forward_batch for probe in probes.values())
            log.info("forward batches from free device memory: %s",
                     {name: probe.forward_batch for name, probe in probes.items()})

    def _segmentation_workers(self, torch_threads: int | None) -> int:
        """``compute.segmentation_workers``, or for auto: on a GPU, the worker's cores but the one feeding the
        device; on a CPU, inline (the model's threads hold the cores, and segmentation is ~1 % of LIME's work)."""
        configured = self.job.compute.segmentation_workers
        if configured != "auto":
            return configured
        if self.classifier.device.type != "cuda":
            return 1
        return max(1, (torch_threads or usable_cores()) - 1)

    # ------------------------------------------------------------------ one shard
    def process_shard(
        self, shard: Shard, store: OutputSink, progress: Callable[[ProgressEvent], None] | None = None
    ) -> ShardReport:
        """Compute, write the maps, then commit the rows. ``progress`` receives the events of
        :mod:`xcv_batch.progress` while the shard runs: per method and batch, and a few times a second in between."""
        started = time.perf_counter()
        writer = store.open_arrays()
        rows: list[dict] = []
        n_failed = 0
        tally = self._tally = ShardTally(self.methods, progress)
        # The next batch is decoded, stacked and sent to the device while the methods work on this one.
        for batch, pixels in dev.prefetch(self._batches(shard), self._stage):
            batch_rows = self._process_batch(batch, pixels, writer)
            rows.extend(batch_rows)
            failed = len({r["image_id"] for r in batch_rows if r["status"] == "error"})
            n_failed += failed
            tally.end_batch(len(batch), failed)
        writer.flush()  # every map is stored before the rows commit it
        store.commit_rows(shard.first_index, shard.last_index, [{**r, "shard": shard.name} for r in rows])
        return ShardReport(shard.name, len(shard), n_failed, time.perf_counter() - started,
                           dict(tally.seconds), dict(tally.images))

    def _batches(self, shard: Shard) -> Iterator[list[_Prepared]]:
        """Decoded images in batches of ``compute.batch_size``; decoding runs ahead on a thread pool."""
        records = [record for _, record in shard.items]
        indices = [index for index, _ in shard.items]
        decoded = decode_many(records, self.classifier.preprocessing, self.job.compute.decode_threads)
        prepared = (
            self._with_mask(_Prepared(index, record, pixels=result)) if not isinstance(result, ImageError)
            else _Prepared(index, record, error=f"cannot use image: {result}")
            for index, (record, result) in zip(indices, decoded)
        )
        while batch := list(itertools.islice(prepared, self.job.compute.batch_size)):
            yield batch

    def _stage(self, batch: list[_Prepared]) -> tuple[list[_Prepared], dev.InFlight | None]:
        """The batch and its usable images' pixels on their way to the device (None when none is usable)."""
        good = [item.pixels for item in batch if item.error is None]
        return batch, (self.feeder.send(torch.stack(good)) if good else None)

    def _with_mask(self, item: _Prepared) -> _Prepared:
        """Check the image has what the job needs (a label, a mask) and load its ground-truth mask."""
        label, n_classes = item.record.label, self.classifier.num_classes
        if self.job.target == "label" and label is None:
            item.error = "target is 'label' but this image has no label in the manifest"
        elif self.job.target == "label" and n_classes > 0 and not 0 <= label < n_classes:
            item.error = f"label {label} is not a class of this model (0 … {n_classes - 1})"
        elif item.record.mask_path and self.quality.wants_masks:
            try:
                item.mask = load_mask(item.record.mask_path, self.classifier.preprocessing)
            except ImageError as err:
                item.error = f"cannot use mask: {err}"
        elif self.job.metrics.localisation is True:
            item.error = "metrics.localisation is on but this image has no mask_path in the manifest"
        return item

    def _process_batch(self, batch: list[_Prepared], pixels: dev.InFlight | None, writer) -> list[dict]:
        rows: list[dict] = []
        good = [item for item in batch if item.error is None]
        for item in batch:
            if item.error is not None:
                rows.extend(error_rows(item.index, item.record, self.methods, item.error))
        if pixels is None:
            return rows
        inputs = self.classifier.preprocessing.normalize(pixels.wait())
        if self.classifier.device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return rows + self._explain_images(good, inputs, writer)

    def _explain_images(self, good: list[_Prepared], inputs: torch.Tensor, writer) -> list[dict]:
        """Rows of usable images: the batch's forward, then every method. If the forward itself fails, each image
        is tried alone, so one image that breaks it fails only itself."""
        try:
            targets, base = self._classify(good, inputs)
        except Exception:  # noqa: BLE001 - isolate the culprit below, then report it per image
            if len(good) == 1:
                message = f"forward pass failed: {traceback.format_exc(limit=1).strip().splitlines()[-1]}"
                return error_rows(good[0].index, good[0].record, self.methods, message)
            return [row for i in range(len(good)) for row in self._explain_images(good[i: i + 1], inputs[i: i + 1], writer)]
        for item, x in zip(good, inputs.float().cpu().numpy()):
            writer.write("inputs", item.index, x)
        # One mask or None per image: an image without a mask gets no localisation, the others of its batch do.
        masks = None
        if any(item.mask is not None for item in good):
            masks = [item.mask.to(inputs.device) if item.mask is not None else None for item in good]
        image_ids = [item.record.image_id for item in good]
        rows = []
        for name, method in self.methods.items():
            started = time.perf_counter()
            with self._tally.counting_forwards(self.executed.net, name, len(good)):
                outcome = self._run_method(name, method, inputs, targets, image_ids, masks)
            self._tally(MethodDone(name, len(good), time.perf_counter() - started))
            for i, item in enumerate(good):
                result = outcome[i]
                if isinstance(result, str):
                    rows.append(method_row(base[i], name, error=result))
                    continue
                writer.write(name, item.index, result.attribution)
                rows.append(method_row(base[i], name, **result.columns))
        return rows

    def _classify(self, good: list[_Prepared], inputs: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """The targets of the images and the columns their rows share (target, its name and probability)."""
        with torch.no_grad(), dev.autocast(inputs.device, self.job.compute.precision):
            probabilities = torch.softmax(self.executed.net(inputs).float(), dim=1)
        if self.job.target == "label":
            targets = torch.tensor([item.record.label for item in good], dtype=torch.long, device=inputs.device)
        else:
            targets = probabilities.argmax(dim=1)
        target_probs = target_outputs(probabilities, targets).cpu().tolist()
        base = [
            image_columns(item.index, item.record, target, self.classifier.category(target), prob)
            for item, target, prob in zip(good, targets.cpu().tolist(), target_probs)
        ]
        return targets, base

    def _run_method(self, name, method, inputs, targets, image_ids: Sequence[str], masks) -> list:
        """Per image: an _Explained, or an error message.

        The batch runs as one; if it raises, each image runs alone, so one bad image fails only itself.
        """
        try:
            with dev.autocast(inputs.device, self.job.compute.precision):
                return self._explain(name, method, inputs, targets, image_ids, masks)
        except Exception:  # noqa: BLE001 - isolate the culprit below, then report it per image
            if len(image_ids) == 1:
                return [f"{name} failed: {traceback.format_exc(limit=1).strip().splitlines()[-1]}"]
        results = []
        for i in range(len(image_ids)):
            one_mask = masks[i: i + 1] if masks is not None else None
            results.extend(
                self._run_method(name, method, inputs[i: i + 1], targets[i: i + 1], image_ids[i: i + 1], one_mask)
            )
        return results

    def _explain(self, name, method, inputs, targets, image_ids: Sequence[str], masks) -> list[_Explained]:
        job, n = self.job, len(image_ids)
        seeds = [derive_seed(job.seed, image_id, name) for image_id in image_ids]
        started = time.perf_counter()
        attributions = self.oom.run(method, lambda: method.attribute(inputs, targets, seeds)).float()
        dev.synchronize(inputs.device)
        attr_seconds = (time.perf_counter() - started) / n
        if not torch.isfinite(attributions).all():
            bad = [i for i in range(n) if not torch.isfinite(attributions[i]).all()]
            if n == 1:
                raise FloatingPointError(f"{name} produced non-finite values")
            raise FloatingPointError(f"{name} produced non-finite values for images {bad}")
        sensitivities: list[float | None] = [None] * n
        sensitivity_seconds = None
        if job.sensitivity is not None:
            started = time.perf_counter()
            noise_seeds = [derive_seed(job.seed, image_id, name, "sensitivity") for image_id in image_ids]
            values = self.oom.run(method, lambda: sensitivity_max(
                method,
                inputs,
                targets,
                seeds,
                attributions,
                noise_seeds=noise_seeds,
                n_perturb_samples=job.sensitivity.n_perturb_samples,
                perturb_radius=job.sensitivity.perturb_radius,  # all B·n copies in one call: the method fills passes
            ))
            dev.synchronize(inputs.device)
            sensitivity_seconds = (time.perf_counter() - started) / n
            sensitivities = values.cpu().tolist()
        zero_maps = (attributions.reshape(n, -1) == 0).all(dim=1).cpu().tolist()
        quality, reasons = self.quality.evaluate(name, inputs, targets, seeds, image_ids, attributions, masks)
        for column, (values, why_nan) in method.diagnostics(inputs, targets, attributions).items():
            quality[column] = [None if v != v else float(v) for v in values.cpu().tolist()]
            reasons[column] = [why_nan if v is None else None for v in quality[column]]
        maps = attributions.cpu().numpy()
        explained = []
        for i in range(n):
            columns = {
                "attr_seconds": attr_seconds,
                "sensitivity_max": sensitivities[i],
                "sensitivity_seconds": sensitivity_seconds,
                **{column: values[i] for column, values in quality.items()},
            }
            why = {column: per_image[i] for column, per_image in reasons.items() if per_image[i]}
            explained.append(_Explained(maps[i], with_missing_values_explained(columns, zero_maps[i], why)))
        return explained


# ------------------------------------------------------------------------------------------------------ rows


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


def error_rows(index: int, record: ImageRecord, methods: Iterable[str], message: str) -> list[dict]:
    """An image's rows when it could not be explained at all: one error row per method."""
    image = image_columns(index, record)
    return [method_row(image, method, error=message) for method in methods]
