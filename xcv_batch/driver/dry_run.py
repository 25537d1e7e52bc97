"""``run --dry-run``: the checks of a run, then what it would do and about how long it would take; nothing is written.

The checks are the run's own (job, source, labels, OUT) and come before any heavy import; then the plan (images,
shards, workers), the passes every method needs per image (:mod:`xcv_batch.plan`) and an estimate from a short
probe of the model on this machine (:mod:`xcv_batch.execution.probe`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import Job
from ..methods.registry import is_control
from ..output.outdir import check_out
from ..plan import Passes, classify_passes, explanation_copies, format_duration, method_passes
from .placement import WorkerPlan, local_resources, plan_workers
from .run import _wants_ray, checked_images, open_store, plan_shards


@dataclass
class RunPlan:
    job: Job
    n_images: int
    n_done: int  # committed already (--resume)
    n_broken: int  # committed files that cannot be read: their shards would be recomputed
    n_shards: int
    workers: str
    worker_plan: WorkerPlan | None  # None: one worker in this process, or a cluster's (decided there)
    passes: dict[str, Passes]
    times: object | None = None  # probe.PassTimes, when probed
    copies: dict[str, int] = field(default_factory=dict)  # per method: its explanations' own copies per image

    @property
    def images_to_run(self) -> int:
        return self.n_images - self.n_done

    def seconds_per_image(self, which: str = "median") -> dict[str, float]:
        """Per method, seconds per image from the probe: the median, or ``which`` "low"/"high" for the range."""
        if not self.times:
            return {}
        return {name: self.times.method_seconds(name, passes, self.copies.get(name, 0), which)
                for name, passes in self.passes.items()}

    def estimate_seconds(self, which: str = "median") -> float | None:
        """Wall time of the images left: each GPU worker has its own device; CPU workers share this machine's
        cores, which the probe already used all of. ``which``: "low"/"high" for the range's ends."""
        if self.times is None:
            return None
        classify = classify_passes(self.passes)
        per_image = sum(self.seconds_per_image(which).values()) + self.times.method_seconds("", classify, 0, which)
        parallel = self.worker_plan.count if self.worker_plan is not None and self.worker_plan.num_gpus else 1
        return self.images_to_run * per_image / parallel

    def describe(self) -> str:
        job = self.job
        done = f", {self.n_done} already done" if self.n_done else ""
        broken = f", {self.n_broken} unreadable shard files to recompute" if self.n_broken else ""
        lines = [
            f"dry run of {job.name} → {job.output.path} (nothing is written)",
            f"images: {self.n_images} from {job.data.source}{done}{broken}; {self.n_shards} shard"
            f"{'s' if self.n_shards != 1 else ''} of up to {job.compute.shard_size}",
            f"workers: {self.workers}",
        ]
        sensitivity = job.sensitivity
        factor = (f", each × {1 + sensitivity.n_perturb_samples} with Max-Sensitivity "
                  f"(n_perturb_samples {sensitivity.n_perturb_samples})") if sensitivity is not None else ""
        lines.append(f"passes per image at {job.model.resolution} px{factor}:")
        seconds = self.seconds_per_image()
        width = max(len(name) for name in [*self.passes, "classification"])
        paths = self.times.own_paths if self.times is not None else {}
        for name, passes in self.passes.items():
            cost = f"   ≈ {seconds[name]:.3g} s/image" if name in seconds else ""
            if name in paths:
                cost += f" ({paths[name]})"
            control = " (control: its metrics' passes; the map needs none)" if is_control(name) else ""
            lines.append(f"  {name:<{width}}  {passes.describe()}{control}{cost}")
        classify = classify_passes(self.passes)
        how = "the target" if classify.rows else "the target, from a method's own forward"
        lines.append(f"  {'classification':<{width}}  {classify.describe()} ({how})")
        per_image = stored_bytes_per_image(job)
        lines.append(f"storage: {per_image:,} bytes per image uncompressed ({_storage_choice(job)}), "
                     f"{_bytes_text(per_image * self.n_images)} for {self.n_images} images")
        if self.times is not None:
            t = self.times
            own = "".join(f", {t.own_rows[name].median * 1e3:.3g} ms per {name} copy ({t.own_paths[name]})"
                          for name in t.own_rows)
            lines.append(f"probe: {job.model.arch} on {t.device}, {t.rows} rows a pass, median of {t.repeats} "
                         f"passes: {t.forward_s * 1e3:.3g} ms a forward row, {t.forward_backward_s * 1e3:.3g} ms a "
                         f"forward+backward row{own}")
            estimate = self.estimate_seconds()
            low, high = self.estimate_seconds("low"), self.estimate_seconds("high")
            lines.append(f"estimate: {format_duration(estimate)} for {self.images_to_run} images, likely "
                         f"{format_duration(low)} to {format_duration(high)} ({self._estimate_scope()})")
        return "\n".join(lines)

    def _estimate_scope(self) -> str:
        left_out = ("the range is the probe's quartiles widened 1.5 interquartile ranges; decoding, LIME's superpixels "
                "and writing are not included")
        if os.environ.get("RAY_ADDRESS"):
            return f"one worker as fast as this machine; divide by the cluster's workers; {left_out}"
        return left_out


def plan_run(job: Job, resume: bool = False, probe: bool = True) -> RunPlan:
    """Check the job's source and OUT as ``run`` does, then plan it; ``probe`` times the model for an estimate."""
    records = checked_images(job)
    check_out(job.output.path, job, resume)
    from ..output.sink import UnreadableShard

    job, store = open_store(job, resume)
    done, broken = set(), 0
    if resume:
        for name in store.committed_files():  # read only: a real --resume would set unreadable files aside
            try:
                done.update(store.committed_file_indices(name))
            except UnreadableShard:
                broken += 1
    shards = plan_shards(records, job.compute.shard_size, done, job.output.images_per_object)
    workers, worker_plan = _describe_workers(job, len(shards))
    plan = RunPlan(job, len(records), len(done), broken, len(shards), workers, worker_plan, method_passes(job),
                   copies=explanation_copies(job))
    if probe and shards:
        from ..execution.probe import probe_pass_times

        plan.times = probe_pass_times(job)
    return plan


def stored_bytes_per_image(job: Job) -> int:
    """The bytes of one image's stored arrays before compression: each method's map (``output.channels``: 3, or 1
    when summed; ``output.dtype``: 4 or 2 bytes a value) and, with ``output.inputs``, the float32 ``(3, R, R)``
    input."""
    pixels = job.model.resolution ** 2
    channels = 1 if job.output.channels == "sum" else 3
    value_bytes = 2 if job.output.dtype == "float16" else 4
    maps = len(job.methods) * channels * pixels * value_bytes
    return maps + (3 * pixels * 4 if job.output.inputs else 0)


def _storage_choice(job: Job) -> str:
    out = job.output
    inputs = "stored" if out.inputs else "not stored"
    return f"{len(job.methods)} maps, {out.dtype}, channels {out.channels}, inputs {inputs}"


def _bytes_text(n: int) -> str:
    for unit, size in (("TB", 10 ** 12), ("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _describe_workers(job: Job, n_shards: int) -> tuple[str, WorkerPlan | None]:
    if n_shards == 0:
        return "none (nothing left to do)", None
    if os.environ.get("RAY_ADDRESS"):
        return f"Ray workers on the cluster at RAY_ADDRESS (compute.workers: {job.compute.workers})", None
    if not _wants_ray(job, n_shards):
        return "1, in this process", None
    plan = plan_workers(job.compute, local_resources(), max_workers=n_shards)
    return f"{plan.describe()} on a local Ray", plan
