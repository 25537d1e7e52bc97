"""Every shard in this process, one after another: the one-worker path and the tests' reference."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..config import Job
from .progress import RunProgress
from .shards import Shard, ShardReport

if TYPE_CHECKING:
    from ..output.sink import OutputSink


class InProcessExecutor:
    def __init__(self, job: Job):
        self.job = job
        self.worker = None

    def __enter__(self) -> "InProcessExecutor":
        from ..execution.worker import ShardWorker  # torch: imported once the job, source and OUT have been checked

        self.worker = ShardWorker(self.job)  # a bad model or weights fails here, before anything is written
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
