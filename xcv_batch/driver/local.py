"""Every shard in this process, one after another: the one-worker path and the tests' reference."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..config import Job
from ..models.pinned import PinnedWeights, pin_job_weights
from .progress import RunProgress
from ..work import Shard, ShardReport

if TYPE_CHECKING:
    from ..output.sink import OutputSink


class InProcessExecutor:
    """``weights``: the run's pinned weights file (:mod:`xcv_batch.models.pinned`); pinned on entering if not given."""

    def __init__(self, job: Job, weights: PinnedWeights | None = None):
        self.job = job
        self.weights = weights
        self.worker = None

    def __enter__(self) -> "InProcessExecutor":
        from ..execution.worker import ShardWorker  # torch: imported once the job, source and OUT have been checked

        weights = self.weights if self.weights is not None else pin_job_weights(self.job.model.weights)
        self.weights = None  # the model holds them now; the file's bytes need not stay in memory
        self.worker = ShardWorker(self.job, weights=weights)  # a bad model or weights fails here, before any write
        return self

    def __exit__(self, *exc) -> None:
        self.worker = None

    def run(self, shards: list[Shard], store: OutputSink, progress: RunProgress) -> list[ShardReport]:
        reports = []
        for shard in shards:
            report = self.worker.process_shard(shard, store, progress=functools.partial(progress.record, key=shard.name))
            progress.settle(shard.name, report)
            reports.append(report)
        return reports
