"""The driver: lists the images, lays out OUT, plans shards, runs them, and reports.

Shards are planned over the images not yet committed, so ``--resume`` after any crash runs exactly the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .config import Job, dump_job
from .data import ImageRecord, list_images
from .model import describe_weights, read_categories
from .progress import RunProgress
from .store import RunStore
from .worker import Shard, ShardReport, ShardWorker


@dataclass
class RunReport:
    out: str
    n_images: int
    n_skipped: int  # already committed when the run started (--resume)
    n_processed: int
    n_failed: int  # images with at least one error row, over the whole OUT
    seconds: float
    shards: list[ShardReport] = field(default_factory=list)

    def final_line(self) -> str:
        resumed = f", {self.n_skipped} already done" if self.n_skipped else ""
        return (
            f"done: {self.n_images} images ({self.n_processed} processed{resumed}), "
            f"{self.n_failed} failed, in {self.seconds:.1f} s → {self.out}"
        )


def plan_shards(records: Sequence[ImageRecord], shard_size: int, done: set[int] = frozenset()) -> list[Shard]:
    """Consecutive runs of not-yet-committed images, at most ``shard_size`` each.

    A shard never spans a committed image, so its file name (first-last index) cannot collide with a committed one.
    """
    shards: list[Shard] = []
    current: list[tuple[int, ImageRecord]] = []
    for index, record in enumerate(records):
        if index in done:
            if current:
                shards.append(Shard(tuple(current)))
                current = []
            continue
        current.append((index, record))
        if len(current) == shard_size:
            shards.append(Shard(tuple(current)))
            current = []
    if current:
        shards.append(Shard(tuple(current)))
    return shards


def _store_attributes(job: Job) -> dict:
    preprocessing, categories = describe_weights(job.model.arch, job.model.weights, job.model.resolution)
    categories = read_categories(job.model.categories) or categories
    return {
        "name": job.name,
        "model": job.model.arch,
        "weights": job.model.weights,
        "methods": job.to_dict()["methods"],
        "sensitivity": job.to_dict()["sensitivity"],
        "target": job.target,
        "seed": job.seed,
        "preprocessing": {
            "mean": list(preprocessing.mean),
            "std": list(preprocessing.std),
            "resize_size": preprocessing.resize_size,
            "resolution": preprocessing.crop_size,
        },
        "categories": list(categories) if categories else None,
    }


def run_in_process(job: Job, shards: list[Shard], store: RunStore, progress: RunProgress,
                   worker: ShardWorker | None = None) -> list[ShardReport]:
    """Every shard in this process, one after another (the single-machine path and the tests' reference)."""
    worker = worker or ShardWorker(job)
    return [worker.process_shard(shard, store, progress=progress.advance) for shard in shards]


def run_job(
    job: Job,
    resume: bool = False,
    executor: Callable[[Job, list[Shard], RunStore, RunProgress], list[ShardReport]] | None = None,
) -> RunReport:
    started = time.perf_counter()
    records = list_images(job.data.source, job.data.limit)
    store = RunStore(job.output.path)
    executor = executor or run_in_process
    worker = None
    if executor is run_in_process:
        worker = ShardWorker(job)  # fail on a bad model or weights before anything is written
    store.prepare(
        dump_job(job),
        job.fingerprint(),
        [r.image_id for r in records],
        job.model.resolution,
        list(job.methods),
        _store_attributes(job),
        resume=resume,
    )
    done = store.committed_indices() if resume else set()
    shards = plan_shards(records, job.compute.shard_size, done)
    with RunProgress(total=len(records), already_done=len(done)) as progress:
        if worker is not None:
            reports = run_in_process(job, shards, store, progress, worker=worker)
        else:
            reports = executor(job, shards, store, progress)
    rows = store.read_rows()
    failed = {
        image_id
        for image_id, status in zip(rows.column("image_id").to_pylist(), rows.column("status").to_pylist())
        if status == "error"
    }
    return RunReport(
        out=job.output.path,
        n_images=len(records),
        n_skipped=len(done),
        n_processed=sum(len(s) for s in shards),
        n_failed=len(failed),
        seconds=time.perf_counter() - started,
        shards=reports,
    )
