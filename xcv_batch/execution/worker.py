"""A worker: stages one shard of images, has them explained, and turns the result into committed outputs.

The compute is :class:`~xcv_batch.execution.explain.BatchExplainer`'s (model, methods, metrics); this module decodes
and checks images (labels, masks), keeps the next batch on its way to the device, hands maps and inputs to a writer
thread (:mod:`xcv_batch.output.background`) and commits the rows once they are stored. No Ray here: the driver runs a ShardWorker in-process or wraps it in an actor; both call
``process_shard``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from . import device as dev
from ..config import Job
from ..data.sources import ImageRecord
from ..data.images import decode_many, load_mask
from ..errors import ImageError
from ..metrics.registry import masks_required_by
from ..models.classifier import Classifier
from ..models.pinned import PinnedWeights
from ..output.background import BackgroundWriter
from ..output.sink import OutputSink
from ..work import ProgressEvent, Shard, ShardReport
from .explain import BatchExplainer, error_rows
from .tally import ShardTally

log = logging.getLogger(__name__)

#: Batches of maps that may wait for the writer thread before the methods wait for it (bounds the memory they hold).
WRITE_AHEAD_BATCHES = 2


@dataclass
class _Prepared:
    """One image ready for the methods (or its decode error)."""

    index: int
    record: ImageRecord
    pixels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    error: str | None = None


class ShardWorker:
    """Holds a :class:`BatchExplainer` for one job on one device, and runs shards through it.

    ``torch_threads`` is this worker's share of the node's cores (None: all of them, the in-process case); it also
    decides how many processes may segment for LIME next to it. ``weights``: the bytes of the job's weights file as
    the driver pinned them for the run (:mod:`xcv_batch.models.pinned`), loaded instead of the file; not kept.
    """

    def __init__(self, job: Job, device: str | None = None, torch_threads: int | None = None,
                 weights: PinnedWeights | None = None):
        self.job = job
        self.explainer = BatchExplainer.from_job(job, device, torch_threads, weights)
        self.feeder = dev.DeviceFeeder(self.classifier.device)
        self._tally = ShardTally(self.explainer.method_names)  # the running shard's progress (none outside a shard)

    @property
    def classifier(self) -> Classifier:
        """The model as built."""
        return self.explainer.classifier

    @property
    def methods(self) -> dict:
        """The built methods, by name (a method unavailable for the model is not among them)."""
        return self.explainer.methods

    @property
    def oom(self) -> dev.HalveOnOutOfMemory:
        return self.explainer.oom

    # ------------------------------------------------------------------ one shard
    def process_shard(
        self, shard: Shard, store: OutputSink, progress: Callable[[ProgressEvent], None] | None = None
    ) -> ShardReport:
        """Compute, write the maps, then commit the rows. ``progress`` receives the events of
        :mod:`xcv_batch.work` while the shard runs: per method and batch, and a few times a second in between."""
        started = time.perf_counter()
        rows: list[dict] = []
        n_failed = 0
        tally = self._tally = ShardTally(self.explainer.method_names, progress)
        # Maps are stored on a writer thread while the next batch is computed; its queue holds a few batches' maps.
        writer = BackgroundWriter(store.open_arrays(), max_pending=self._pending_maps())
        try:
            # The next batch is decoded, stacked and sent to the device while the methods work on this one.
            for batch, pixels in dev.prefetch(self._batches(shard), self._stage):
                with tally.stage("method"):
                    batch_rows = self._process_batch(batch, pixels, writer)
                rows.extend(batch_rows)
                failed = len({r["image_id"] for r in batch_rows if r["status"] == "error"})
                n_failed += failed
                tally.end_batch(len(batch), failed)
            writer.flush()  # every map is stored (or its write's error raised) before the rows commit it
        finally:
            writer.close()  # a shard that failed: its queued maps are dropped, its retry writes them again
            tally.add_stage("write", writer.cpu_seconds)
        with tally.stage("commit"):
            store.commit_rows(shard.first_index, shard.last_index, [{**r, "shard": shard.name} for r in rows])
        return ShardReport(shard.name, len(shard), n_failed, time.perf_counter() - started,
                           dict(tally.seconds), dict(tally.images), dict(tally.stage_seconds))

    def _pending_maps(self) -> int:
        """How many maps may wait for the writer thread: two batches' worth (inputs and every method)."""
        return WRITE_AHEAD_BATCHES * self.job.compute.batch_size * (len(self.explainer.method_names) + 1)

    def _batches(self, shard: Shard) -> Iterator[list[_Prepared]]:
        """Decoded images in batches of ``compute.batch_size``; decoding runs ahead on a thread pool."""
        records = [record for _, record in shard.items]
        indices = [index for index, _ in shard.items]
        decoded = decode_many(records, self.classifier.preprocessing, self.job.compute.decode_threads,
                              cpu=functools.partial(self._tally.add_stage, "decode"))
        prepared = (
            self._checked(_Prepared(index, record, pixels=result)) if not isinstance(result, ImageError)
            else _Prepared(index, record, error=f"cannot use image: {result}")
            for index, (record, result) in zip(indices, decoded)
        )
        while batch := list(itertools.islice(prepared, self.job.compute.batch_size)):
            yield batch

    def _stage(self, batch: list[_Prepared]) -> tuple[list[_Prepared], dev.InFlight | None]:
        """The batch and its usable images' pixels on their way to the device (None when none is usable)."""
        with self._tally.stage("staging"):
            good = [item.pixels for item in batch if item.error is None]
            return batch, (self.feeder.send(torch.stack(good)) if good else None)

    def _checked(self, item: _Prepared) -> _Prepared:
        with self._tally.stage("staging"):
            return self._with_mask(item)

    def _with_mask(self, item: _Prepared) -> _Prepared:
        """Check the image has what the job needs (a label, a mask) and load its ground-truth mask."""
        label, n_classes = item.record.label, self.classifier.num_classes
        if self.job.target == "label" and label is None:
            item.error = "target is 'label' but this image has no label in the manifest"
        elif self.job.target == "label" and n_classes > 0 and not 0 <= label < n_classes:
            item.error = f"label {label} is not a class of this model (0 … {n_classes - 1})"
        elif item.record.mask_path and self.explainer.wants_masks:
            try:
                item.mask = load_mask(item.record.mask_path, self.classifier.preprocessing, item.record.reader)
            except ImageError as err:
                item.error = f"cannot use mask: {err}"
        elif (requiring := masks_required_by(self.job.sensitivity, self.job.metrics)) is not None:
            item.error = f"{requiring.job_key} is on but this image has no mask_path in the manifest"
        return item

    def _process_batch(self, batch: list[_Prepared], pixels: dev.InFlight | None, writer) -> list[dict]:
        rows: list[dict] = []
        good = [item for item in batch if item.error is None]
        for item in batch:
            if item.error is not None:
                rows.extend(error_rows(item.index, item.record, self.explainer.method_names, item.error))
        if pixels is None:
            return rows
        inputs = self.classifier.preprocessing.normalize(pixels.wait())
        if self.classifier.device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        result = self.explainer.explain_batch(
            inputs,
            [item.record.image_id for item in good],
            labels=[item.record.label for item in good],
            masks=[item.mask for item in good],
            progress=self._tally,
        )
        if self.job.output.inputs:  # output.inputs false: no inputs array is laid out
            host_inputs = inputs.float().cpu().numpy()
            for item, image, x in zip(good, result.images, host_inputs):
                if image.error is None:  # the inputs of every image that went through the model
                    writer.write("inputs", item.index, x)
        for explained in result.results:
            if explained.attribution is not None:
                writer.write(explained.method, good[explained.image].index, explained.attribution)
        shared = [{"image_id": item.record.image_id, "image_path": item.record.path, "index": item.index,
                   "label": item.record.label} for item in good]
        return rows + result.rows(shared)

