"""Every shard in this process, one after another: the one-worker path and the tests' reference."""

from __future__ import annotations

from ..config import Job
from ..progress import RunProgress
from ..store import RunStore
from ..worker import Shard, ShardReport, ShardWorker


class InProcessExecutor:
    def __init__(self, job: Job):
        self.job = job
        self.worker: ShardWorker | None = None

    def __enter__(self) -> "InProcessExecutor":
        self.worker = ShardWorker(self.job)  # a bad model or weights fails here, before anything is written
        return self

    def __exit__(self, *exc) -> None:
        self.worker = None

    def run(self, shards: list[Shard], store: RunStore, progress: RunProgress) -> list[ShardReport]:
        return [self.worker.process_shard(shard, store, progress=progress.advance) for shard in shards]
