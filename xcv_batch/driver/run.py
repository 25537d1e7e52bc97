"""One run: list the images, choose where shards run, lay out OUT, run the shards, report.

Shards are planned over the images not yet committed, so ``--resume`` after any crash runs exactly the rest.
Everything that can be answered from the job file, the source and OUT is checked before zarr, torch or Ray are
imported, so a typo costs a second, not a model load: this module imports only light ones at the top.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence, TextIO

from ..config import Job, OutputConfig, dump_job, weights_file_digest
from ..errors import ConfigError, OutputError, cli_or_python
from ..output.lock import RunLock
from ..output.outdir import check_out_contents, check_out_writable
from ..plan import method_passes
from .progress import RunProgress
from ..models.pinned import PinnedWeights, pin_weights, weights_changed
from ..output.provenance import provenance_from_metadata, run_provenance
from ..work import Shard, ShardReport
from ..data.sources import ImageRecord, list_images
from .placement import local_resources, plan_workers

if TYPE_CHECKING:
    from ..output.sink import OutputSink

#: Seconds between plain progress lines when stderr is not a terminal (job logs); the tests set 0.
PROGRESS_INTERVAL_ENV = "XCV_PROGRESS_INTERVAL_S"


@dataclass
class RunReport:
    out: str
    n_images: int
    n_skipped: int  # already committed when the run started (--resume)
    n_processed: int
    n_failed: int  # images with at least one error row, over the whole OUT
    seconds: float
    shards: list[ShardReport] = field(default_factory=list)
    retries: int = 0  # shard attempts lost to dead, hung or failing workers
    recomputed: dict[str, str] = field(default_factory=dict)  # committed files --resume found broken → why

    def final_line(self) -> str:
        resumed = f", {self.n_skipped} already done" if self.n_skipped else ""
        retried = f", {self.retries} retries" if self.retries else ""
        redone = f", {len(self.recomputed)} broken shards recomputed" if self.recomputed else ""
        return (
            f"done: {self.n_images} images ({self.n_processed} processed{resumed}{redone}), "
            f"{self.n_failed} failed{retried}, in {self.seconds:.1f} s → {self.out}"
        )


class Executor(Protocol):
    """Where shards run. Entering builds the model(s), so a bad model fails before OUT is touched."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...

    def run(self, shards: list[Shard], store: OutputSink, progress: RunProgress) -> list[ShardReport]: ...


def plan_shards(records: Sequence[ImageRecord], shard_size: int, done: set[int] = frozenset(),
                images_per_object: int = 1) -> list[Shard]:
    """Consecutive runs of not-yet-committed images, at most ``shard_size`` each, that own whole Zarr objects.

    The not-yet-committed images of one object (``images_per_object`` consecutive images, aligned to multiples of
    it) always go to the same shard, because concurrent shards writing one object would overwrite each other's
    images; ``shard_size`` is a multiple of ``images_per_object`` (checked with the job). A shard ends before a
    committed image, so its file name (first-last index) cannot collide with a committed one — except inside an
    object, where the rest of the object's images stay with it (its writer leaves the committed ones untouched).
    """
    shards: list[Shard] = []
    current: list[tuple[int, ImageRecord]] = []
    for group in _images_per_object(records, done, images_per_object):
        after_a_gap = bool(current) and group[0][0] != current[-1][0] + 1
        if current and (after_a_gap or len(current) + len(group) > shard_size):
            shards.append(Shard(tuple(current)))
            current = []
        current.extend(group)
    if current:
        shards.append(Shard(tuple(current)))
    return shards


def _images_per_object(records: Sequence[ImageRecord], done: set[int],
                       images_per_object: int) -> list[list[tuple[int, ImageRecord]]]:
    """The not-yet-committed (index, record) pairs of each Zarr object, objects in order, empty ones left out."""
    groups: list[list[tuple[int, ImageRecord]]] = []
    for first in range(0, len(records), images_per_object):
        group = [(index, records[index]) for index in range(first, min(first + images_per_object, len(records)))
                 if index not in done]
        if group:
            groups.append(group)
    return groups


def _ray_is_running() -> bool:
    """A Ray session already open in this process (a test's, a notebook's), without importing Ray for nothing."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class _NoWork:
    """A resumed run with nothing left: no model to build, no workers to start."""

    def __enter__(self) -> "_NoWork":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, shards, store, progress) -> list[ShardReport]:
        return []


def choose_executor(job: Job, n_shards: int, weights: PinnedWeights | None = None) -> Executor:
    """In-process for one worker on this machine; Ray actors for more, or whenever a cluster is named.

    ``RAY_ADDRESS`` (set for a submitted job) always means Ray, so the work lands on the cluster's workers and not on
    the machine the driver happens to run on. A run with one worker otherwise skips Ray's start-up cost. ``weights``:
    the run's pinned weights file (:func:`pin_run_weights`), which every worker loads.
    """
    if n_shards == 0:
        return _NoWork()
    if _wants_ray(job, n_shards):
        from .actors import RayExecutor

        return RayExecutor(job, max_workers=n_shards, weights=weights)
    from .local import InProcessExecutor

    return InProcessExecutor(job, weights=weights)


def pin_run_weights(job: Job, provenance: dict[str, str]) -> PinnedWeights | None:
    """The weights file's bytes, read once for the whole run and checked against the SHA-256 its ``provenance``
    records (as the fingerprint and job.yaml do). Every worker, a restarted Ray actor included, loads these bytes, so
    a ``latest.pt`` that training overwrites during the run cannot mix two sets of weights into its results."""
    return pin_weights(job.model.weights, provenance_from_metadata(provenance).get("weights_sha256"))


def _wants_ray(job: Job, n_shards: int) -> bool:
    if os.environ.get("RAY_ADDRESS"):
        return True
    if _ray_is_running():  # already joined in this process (a test session, a notebook): Ray unless one worker
        return job.compute.workers != 1
    return plan_workers(job.compute, local_resources(), max_workers=n_shards).count > 1


def store_attributes(job: Job) -> dict:
    from ..models.classifier import describe_model  # torchvision: the model is being built by now

    preprocessing, categories = describe_model(job.model)
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


def _progress_interval() -> float:
    try:
        return float(os.environ.get(PROGRESS_INTERVAL_ENV, "10"))
    except ValueError:
        return 10.0


def prepare_store(job: Job, store: OutputSink, records: list, resume: bool) -> None:
    """Lay out OUT for ``job`` over ``records`` (or check, on resume, that OUT holds this job and these images)."""
    job_yaml, fingerprint = dump_job(job), job.fingerprint()
    check_weights_unchanged(job, store.provenance)  # after both: they hash the weights file, maybe anew
    store.prepare(
        job_yaml,
        fingerprint,
        [r.image_id for r in records],
        job.model.resolution,
        list(job.methods),
        store_attributes(job),
        resume=resume,
        image_paths=[r.path for r in records],
        images_per_object=job.images_per_object(),  # a number even for a job not opened by open_store
        storage=storage_of(job),
    )


def check_weights_unchanged(job: Job, provenance: dict[str, str]) -> None:
    """job.yaml is to record the weights file that the Parquet files record and the workers loaded: a file replaced
    while the workers started stops the run here, with one line, before OUT is laid out."""
    recorded = provenance_from_metadata(provenance)
    if "fingerprint" not in recorded:  # a store opened without a run's provenance (a benchmark's): nothing to match
        return
    now = weights_file_digest(job.model.weights)
    if now != recorded.get("weights_sha256"):
        raise weights_changed(os.path.abspath(job.model.weights), recorded.get("weights_sha256"), now)


def open_store(job: Job, resume: bool, provenance: dict[str, str] | None = None) -> tuple[Job, OutputSink]:
    """OUT's sink, and ``job`` with the layout of the maps already in OUT when resuming onto them: the map format that
    OUT/job.yaml records (not in the fingerprint: the maps are the same values in any format, so a resume may name
    another), its storage choices (:func:`with_storage_of`), then the images per object (:func:`with_layout_of`). zarr
    and pyarrow are imported here."""
    from ..output.formats import stored_format, stored_job
    from ..output.sink import open_sink

    stored = stored_format(job.output.path) if resume else None
    if stored is not None and stored != job.output.format:
        job = dataclasses.replace(job, output=dataclasses.replace(job.output, format=stored))
    if resume:
        job = with_storage_of(job, stored_job(job.output.path))
    store = open_sink(job.output.path, provenance=provenance, map_format=job.output.format)
    return with_layout_of(job, store, resume), store


def storage_of(job: Job) -> dict:
    """How the maps are stored (``output.dtype``, ``output.channels``, ``output.inputs``), for the layout."""
    return {"dtype": job.output.dtype, "channels": job.output.channels, "inputs": job.output.inputs}


def with_storage_of(job: Job, out_job: dict | None) -> Job:
    """``job`` with the storage choices (:func:`storage_of`) of the job OUT was laid out with, read from its job.yaml
    (a mapping; None when OUT has none): they are not in the fingerprint (the values computed are the same), so a
    resume may name others, but the arrays in OUT are laid out one way. A job.yaml from before the keys: defaults."""
    output = (out_job or {}).get("output")
    if out_job is None or not isinstance(output, dict):
        return job
    defaults = OutputConfig()
    stored = {key: output.get(key, getattr(defaults, key)) for key in storage_of(job)}
    if stored == storage_of(job):
        return job
    return dataclasses.replace(job, output=dataclasses.replace(job.output, **stored))


def with_layout_of(job: Job, store: OutputSink, resume: bool) -> Job:
    """``job`` with the images per object of the arrays already in OUT, when resuming onto them: the layout was
    fixed when OUT was made (the setting is not in the fingerprint, so a resume may name another); otherwise with
    ``auto`` resolved (:meth:`Job.images_per_object`). Everything after this sees a number."""
    stored = store.layout_images_per_object() if resume else None
    if stored is None:
        stored = job.images_per_object()
    if stored == job.output.images_per_object:
        return job
    if job.compute.shard_size % stored:
        raise OutputError(f"{store.out} stores {stored} images per object, which does not divide compute.shard_size "
                          f"({job.compute.shard_size}); resume with "
                          f"{cli_or_python('--set output.images_per_object=', 'output.images_per_object ')}{stored} and a "
                          "compute.shard_size that is a multiple of it")
    return dataclasses.replace(job, output=dataclasses.replace(job.output, images_per_object=stored))


def run_job(job: Job, resume: bool = False, executor: Executor | None = None,
            stream: TextIO | None = None, verify: bool = False) -> RunReport:
    """Check everything that can be checked before the model is built, then run the shards not yet committed.

    ``stream`` (default stderr) gets the start line, the progress and the closing per-method summary. ``verify``
    (with ``resume``) decodes every committed map and input before trusting it (``run --resume --verify``).
    """
    started = time.perf_counter()
    stream = stream or sys.stderr
    records = checked_images(job)
    check_out_writable(job.output.path)  # before zarr, torch or Ray: a wrong --out is answered at once
    # One run at a time in OUT: the lock comes before anything there is read or laid out, and what OUT holds is
    # checked under it, so a second run is refused, never interleaved.
    lock = RunLock(job.output.path, job=job.name, stream=stream).acquire()
    try:
        check_out_contents(job.output.path, job, resume)
        report = _run_holding_lock(job, resume, executor, stream, records, started, verify)
    finally:
        lock.release()
    lock.check_kept()
    return report


def _run_holding_lock(job: Job, resume: bool, executor: Executor | None, stream: TextIO, records: list[ImageRecord],
                      started: float, verify: bool = False) -> RunReport:
    provenance = run_provenance(job)  # first: the weights file's digest as the OUT check just saw it (hashed once)
    from ..output.sink import CommitCheck

    job, store = open_store(job, resume, provenance)  # zarr and pyarrow: imported now that the checks have passed
    check = (store.verify_committed(list(job.methods), decode=verify, inputs=job.output.inputs) if resume
             else CommitCheck())
    shards = plan_shards(records, job.compute.shard_size, check.done, job.output.images_per_object)
    print(start_line(job, len(records), len(check.done), len(shards)), file=stream, flush=True)
    if shards:
        from ..models.classifier import check_arch  # torchvision, but no model yet and no Ray: a wrong name costs seconds

        check_arch(job.model.arch)
    executor = executor or choose_executor(job, len(shards), pin_run_weights(job, provenance) if shards else None)
    with executor:
        prepare_store(job, store, records, resume)
        with RunProgress(len(records), method_passes(job), already_done=len(check.done),
                         interval_s=_progress_interval(), stream=stream) as progress:
            reports = executor.run(shards, store, progress) if shards else []
    store.finish()
    return RunReport(
        out=job.output.path,
        n_images=len(records),
        n_skipped=len(check.done),
        n_processed=sum(len(s) for s in shards),
        n_failed=len(store.failed_image_ids()),
        seconds=time.perf_counter() - started,
        shards=reports,
        retries=progress.retries,
        recomputed=dict(check.rejected),
    )


def checked_images(job: Job) -> list[ImageRecord]:
    """The job's images, once the source has been listed and its labels checked (torch-free)."""
    records = list_images(job.data.source, job.data.limit)
    _check_labels(job, records)
    return records


def start_line(job: Job, n_images: int, n_done: int, n_shards: int) -> str:
    """What the run is about to do, printed before the model loads (which takes seconds, Ray's start more)."""
    done = f" ({n_done} already done)" if n_done else ""
    work = (f"{n_shards} shard{'s' if n_shards != 1 else ''}; loading model {job.model.arch} ({job.model.weights}) "
            f"at {job.model.resolution} px …") if n_shards else "nothing left to do"
    return f"run {job.name}: {n_images} images{done} → {job.output.path}, {work}"


def _check_labels(job: Job, records: Sequence[ImageRecord]) -> None:
    """``target: label`` needs labels: a source without any is a job error, not one error row per image."""
    if job.target == "label" and records and all(record.label is None for record in records):
        raise ConfigError("target", f"is 'label' but no image of {job.data.source} has a label "
                                    "(give a .csv/.parquet manifest with a label column)")
