"""Shards on Ray actors: each actor holds one ShardWorker (model and methods built once) and writes its own outputs.

The scheduler keeps ``compute.max_in_flight`` shards queued on each actor and takes back only small reports. It
re-queues lost work itself (actors run with ``max_task_retries=0``, and Ray's ``ActorPool`` does not re-submit), so it decides what a
failure means:

* an actor that dies (SIGKILL, OOM, node lost) or hangs past ``compute.shard_timeout_s`` is killed and replaced;
  the shard it was running is retried up to ``compute.max_attempts`` times, the shards queued behind it are
  re-queued without penalty (an actor runs its calls in order, so the oldest one is the one that was running);
* a shard that still fails is split into one-image shards with the same cap, so an image that kills its worker
  every time ends as that image's error rows ("worker died N times while processing this image") and the rest of
  its shard is computed;
* an actor that dies before its model is built does not count against any shard; ``max_attempts`` such deaths in a
  row stop the run. A model or config error raised while building (bad weights) stops it at once, as the same
  one-line XcvError the in-process run gives.

Nothing committed is lost and nothing is written twice: shard files have deterministic names, and a shard whose
file exists when its report was lost counts as done.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import ActorUnschedulableError, RayError, RayTaskError, RuntimeEnvSetupError

from .. import errors
from ..config import Job
from ..errors import XcvError
from ..logs import show_info
from ..models.pinned import PinnedWeights, pin_job_weights
from .progress import ProgressEvent, RunProgress
from ..output.sink import OutputSink, open_sink
from ..execution.explain import error_rows
from ..execution.worker import ShardWorker
from ..work import Shard, ShardReport
from .faults import Fault, faults_from_env, progress_hook
from .placement import WorkerPlan, plan_workers
from .session import RaySession


# ----------------------------------------------------------------------------------------------------- the actor


@dataclass(frozen=True)
class StartFailure:
    """Why an actor could not build its ShardWorker; travels back as a value so the driver re-raises it as-is."""

    kind: str  # the exception's class name
    message: str
    details: str  # the traceback, for errors that are bugs rather than a bad job

    def to_exception(self) -> Exception:
        return _xcv_error(self.kind, self.message) or RuntimeError(f"a Ray worker failed to start:\n{self.details}")


def _xcv_error(kind: str, message: str) -> XcvError | None:
    """The XcvError subclass named ``kind`` with ``message`` (so the CLI prints the line it would without Ray)."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, XcvError)):
        return None
    error = XcvError.__new__(cls)  # ConfigError's own __init__ wants (key, message): keep the message whole
    XcvError.__init__(error, message)
    return error


class ShardActor:
    """One worker process: builds the model once, then processes the shards it is sent; its progress events go to
    the driver's ``inbox`` as they happen (fire and forget: computing never waits for the driver)."""

    def __init__(self, job: Job, device: str | None, torch_threads: int | None, out: str,
                 faults: tuple[Fault, ...] = (), inbox=None, weights: PinnedWeights | None = None):
        show_info()  # this process's INFO lines (a method's choices) reach the driver's terminal through Ray
        self.failure: StartFailure | None = None
        self.worker: ShardWorker | None = None
        try:  # ``weights``: the driver's pinned bytes (Ray hands over the object, not its reference); not kept
            self.worker = ShardWorker(job, device=device, torch_threads=torch_threads, weights=weights)
        except Exception as err:  # noqa: BLE001 - raising here would kill the actor and hide the reason
            self.failure = StartFailure(type(err).__name__, str(err), traceback.format_exc())
        self.store = open_sink(out, map_format=job.output.format)
        self.faults = faults
        self.inbox = inbox

    def ready(self) -> StartFailure | None:
        return self.failure

    def process(self, shard: Shard, attempt: int, provenance: dict | None = None) -> ShardReport | StartFailure:
        """``provenance``: the run's Parquet metadata, sent with each shard (the driver knows when its run began)."""
        if self.worker is None:
            return self.failure
        self.store.provenance = dict(provenance or {})
        sent: list = []
        report = self.worker.process_shard(shard, self.store, progress=self._progress_sender(shard, attempt, sent))
        if sent:  # the shard's events are in the inbox before its report reaches the driver (one round trip)
            try:
                ray.get(sent[-1], timeout=PUSH_TIMEOUT_S)
            except RayError:  # progress is best effort: a lost inbox costs lines, never results
                pass
        return report

    def _progress_sender(self, shard: Shard, attempt: int, sent: list):
        fault = progress_hook(self.faults, shard, attempt)
        inbox, key = self.inbox, (shard.name, attempt)

        def send(event: ProgressEvent) -> None:
            if inbox is not None:
                sent[:] = [inbox.push.remote(key, event)]  # a worker's calls run in order: the last one is enough
            if fault is not None:
                fault(event)

        return send


_RemoteShardActor = ray.remote(ShardActor)


class ProgressInbox:
    """Where the workers' progress events wait until the driver takes them: a list, drained a few times a second.

    An actor rather than a Ray queue: a worker's push is a call it does not wait for, so progress never slows work.
    """

    def __init__(self) -> None:
        self._events: list = []

    def push(self, key, event: ProgressEvent) -> None:
        self._events.append((key, event))

    def drain(self) -> list:
        events, self._events = self._events, []
        return events


_RemoteProgressInbox = ray.remote(num_cpus=0)(ProgressInbox)

#: Seconds between two drains of the inbox by the driver (it also drains before taking a shard's report).
DRAIN_EVERY_S = 0.25
#: How long a worker waits for its last progress event to be taken in before returning a shard's report.
PUSH_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------------------------- the scheduler


@dataclass
class _Task:
    shard: Shard
    earlier_attempts: int = 0  # attempts its images had inside a bigger shard, before it was split
    failures: list[str] = field(default_factory=list)  # why each attempt of this shard was lost

    @property
    def attempt(self) -> int:
        """1 for an image's first try, counting tries inside the shard it was split from."""
        return self.earlier_attempts + len(self.failures) + 1

    @property
    def key(self) -> tuple[str, int]:
        """Whose progress this attempt's events are (see RunProgress.record)."""
        return self.shard.name, self.attempt


@dataclass(eq=False)
class _Slot:
    """One actor and the calls queued on it, oldest (running) first."""

    actor: object
    ready_ref: object
    started: bool = False  # its model is built
    calls: deque = field(default_factory=deque)  # (ObjectRef, _Task, submitted_at)
    running_since: float | None = None  # when the oldest call started, as far as the driver can tell


@dataclass(frozen=True)
class ShardTiming:
    """Driver-side timing of one shard, for measuring Ray's overhead (scripts/bench_ray_overhead.py)."""

    shard: str
    submitted: float  # time.monotonic() when the call was sent
    started: float  # when the actor was free to start it (the previous call's result arrived, or model ready)
    received: float  # when its report arrived
    compute_s: float  # the actor's own measure (ShardReport.seconds)

    @property
    def overhead_s(self) -> float:
        """Scheduling, argument and result transfer, and result polling: the part of the wall time not computing."""
        return (self.received - self.started) - self.compute_s


class RayExecutor:
    """Runs shards on Ray actors; see the module docstring for the failure rules."""

    def __init__(self, job: Job, max_workers: int | None = None, stream=None, weights: PinnedWeights | None = None):
        self.job = job
        self.max_workers = max_workers
        self.weights = weights  # the run's pinned weights file; pinned on entering if not given
        self._weights_ref = None  # them, in Ray's object store: every actor, a restarted one included, loads these
        self.plan: WorkerPlan | None = None  # decided in __enter__, from the resources the session finds
        self.faults = faults_from_env()
        self.session = RaySession()
        self.slots: list[_Slot] = []
        self.timings: list[ShardTiming] = []
        self._stream = stream or sys.stderr
        self._start_failures = 0  # actors in a row that died before their model was built
        self._pending: deque[_Task] = deque()
        self._owner: dict = {}  # ObjectRef (a process() call or a ready() check) → its _Slot
        self._reports: list[ShardReport] = []
        self._store: OutputSink | None = None  # set while run() runs
        self._progress: RunProgress | None = None
        self.inbox = None  # the workers' progress events (a ProgressInbox actor), from __enter__ on
        self._drained_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "RayExecutor":
        self.session.__enter__()
        try:
            self.plan = plan_workers(self.job.compute, self.session.resources(), self.max_workers)
            print(f"workers: {self.plan.describe()} on {self.session.where}", file=self._stream, flush=True)
            self.inbox = _RemoteProgressInbox.options(max_restarts=0).remote()
            self._put_weights()
            self.slots = [self._start_slot() for _ in range(self.plan.count)]
            self._await_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for slot in self.slots:
            self._kill(slot)
        self.slots = []
        self._owner.clear()
        if self.inbox is not None:
            self._kill_actor(self.inbox)
            self.inbox = None
        self._weights_ref = None
        self.session.__exit__()

    def _put_weights(self) -> None:
        """The pinned weights into the object store, once: actors started later (replacements) get the same bytes, never
        the file as it is then. The driver keeps no copy of its own."""
        weights = self.weights if self.weights is not None else pin_job_weights(self.job.model.weights)
        self.weights = None
        self._weights_ref = ray.put(weights) if weights is not None else None

    def _start_slot(self) -> _Slot:
        plan = self.plan
        options = dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0, max_task_retries=0,
                       scheduling_strategy="SPREAD")
        env = self.session.worker_env()
        if env:
            options["runtime_env"] = {"env_vars": env}
        actor = _RemoteShardActor.options(**options).remote(
            self.job, None, plan.torch_threads, self.job.output.path, self.faults, self.inbox, self._weights_ref
        )
        slot = _Slot(actor, actor.ready.remote())
        self._owner[slot.ready_ref] = slot
        return slot

    @classmethod
    def _kill(cls, slot: _Slot) -> None:
        cls._kill_actor(slot.actor)

    @staticmethod
    def _kill_actor(actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _await_ready(self) -> None:
        """Every first actor has built its model (a bad model raises here, before OUT is laid out)."""
        while waiting := [slot.ready_ref for slot in self.slots if not slot.started]:
            done, _ = ray.wait(waiting, num_returns=1)
            self._collect(done[0])

    # ------------------------------------------------------------------ the loop
    def run(self, shards: list[Shard], store: OutputSink, progress: RunProgress) -> list[ShardReport]:
        self._pending = deque(_Task(shard) for shard in shards)
        self._reports = []
        self._store, self._progress = store, progress
        try:
            while self._pending or any(slot.calls for slot in self.slots):
                self._fill()
                done, _ = ray.wait(list(self._owner), num_returns=1, timeout=self._wait_timeout())
                self._drain_progress()
                for ref in done:
                    self._collect(ref)
                self._expire_hung()
        finally:
            self._store = self._progress = None
        return self._reports

    def _fill(self) -> None:
        """Deal pending shards round-robin, one deep on every actor before two deep on any."""
        for depth in range(1, self.job.compute.max_in_flight + 1):
            for slot in self.slots:
                task = self._next_task() if len(slot.calls) < depth else None
                if task is not None:
                    ref = slot.actor.process.remote(task.shard, task.attempt, self._store.provenance)
                    self._owner[ref] = slot
                    if not slot.calls and slot.started:
                        slot.running_since = time.monotonic()
                    slot.calls.append((ref, task, time.monotonic()))

    def _next_task(self) -> _Task | None:
        """The first pending task that shares no Zarr object with a task in flight (None if there is none).

        Planned shards own whole objects, but the one-image tasks of a split shard share them when an object holds
        K > 1 images: each writes its object (read, merge, write), so two at once would lose one's image.
        """
        per_object = self.job.images_per_object()  # auto resolved, as open_store resolves it for the run
        if per_object == 1 or not self._pending:
            return self._pending.popleft() if self._pending else None
        busy = {obj for slot in self.slots for _, task, _ in slot.calls for obj in _objects(task.shard, per_object)}
        for position, task in enumerate(self._pending):
            if not busy & _objects(task.shard, per_object):
                del self._pending[position]
                return task
        return None

    def _drain_progress(self, now_please: bool = False) -> None:
        """Pass the workers' events to the progress (at most every DRAIN_EVERY_S unless ``now_please``); progress is
        best effort: a lost inbox loses lines, never results."""
        now = time.monotonic()
        if self._progress is None or self.inbox is None:
            return
        if not now_please and now - self._drained_at < DRAIN_EVERY_S:
            return
        self._drained_at = now
        try:
            events = ray.get(self.inbox.drain.remote(), timeout=10)
        except RayError:
            return
        for key, event in events:
            self._progress.record(event, key)

    def _wait_timeout(self) -> float:
        timeout = self.job.compute.shard_timeout_s
        if timeout is None:
            return 1.0  # wake now and then so Ctrl-C is honoured promptly
        now = time.monotonic()
        deadlines = [slot.running_since + timeout - now for slot in self.slots
                     if slot.calls and slot.running_since is not None]
        return max(0.0, min([1.0, *deadlines]))

    def _expire_hung(self) -> None:
        timeout = self.job.compute.shard_timeout_s
        if timeout is None:
            return
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.calls and slot.running_since is not None and now - slot.running_since > timeout:
                self._lose_slot(slot, f"timed out after {timeout:g} s")

    # ------------------------------------------------------------------ results
    def _collect(self, ref) -> None:
        slot = self._owner.pop(ref, None)
        if slot is None:  # from an actor already given up on
            return
        if ref == slot.ready_ref:
            self._collect_ready(slot)
            return
        position = next(i for i, (call_ref, _, _) in enumerate(slot.calls) if call_ref == ref)
        _, task, submitted = slot.calls[position]
        try:
            result = ray.get(ref)
        except RayTaskError as err:  # process_shard raised: the actor lives on
            cause = getattr(err, "cause", None)
            if isinstance(cause, XcvError):  # the store or the source as a whole is unusable: retrying cannot help
                raise (_xcv_error(type(cause).__name__, str(cause)) or XcvError(str(cause))) from None
            del slot.calls[position]
            self._advance_clock(slot)
            self._failed(task, f"raised {_last_line(err)}")
            return
        except (RuntimeEnvSetupError, ActorUnschedulableError) as err:
            raise XcvError(f"Ray cannot place a worker: {_last_line(err)}") from err
        except RayError:  # the actor died: SIGKILL, OOM, its node lost
            self._lose_slot(slot, "died")
            return
        if isinstance(result, StartFailure):
            raise result.to_exception()
        del slot.calls[position]
        self.timings.append(
            ShardTiming(result.shard, submitted, slot.running_since or submitted, time.monotonic(), result.seconds)
        )
        self._advance_clock(slot)
        self._drain_progress(now_please=True)  # its events first: the report then settles the shard exactly
        self._done(result, task.key)

    def _collect_ready(self, slot: _Slot) -> None:
        try:
            failure = ray.get(slot.ready_ref)
        except (RuntimeEnvSetupError, ActorUnschedulableError) as err:
            raise XcvError(f"Ray cannot place a worker: {_last_line(err)}") from err
        except RayError:
            self._lose_slot(slot, "died while loading the model")
            return
        if failure is not None:
            raise failure.to_exception()
        slot.started = True
        self._start_failures = 0
        if slot.calls:
            slot.running_since = time.monotonic()

    @staticmethod
    def _advance_clock(slot: _Slot) -> None:
        """The oldest call left starts now: the actor runs its calls one after another."""
        slot.running_since = time.monotonic() if slot.calls else None

    def _done(self, report: ShardReport, key) -> None:
        self._reports.append(report)
        if self._progress is not None:
            self._progress.settle(key, report)

    # ------------------------------------------------------------------ failures
    def _lose_slot(self, slot: _Slot, reason: str) -> None:
        """Kill and replace the actor; charge the call it was running, re-queue the others as they were."""
        self._kill(slot)
        self._collect_finished(slot)
        for ref, _, _ in slot.calls:
            self._owner.pop(ref, None)
        self._owner.pop(slot.ready_ref, None)
        tasks = [task for _, task, _ in slot.calls]
        if slot.started or self._ready_now(slot):
            self._pending.extendleft(reversed(tasks[1:]))
            if tasks:
                self._failed(tasks[0], reason)
        else:
            self._start_failures += 1
            if self._start_failures >= self.job.compute.max_attempts:
                raise XcvError(
                    f"Ray workers died {self._start_failures} times in a row while loading the model "
                    "(out of memory? see the Ray logs of the worker nodes)"
                )
            self._pending.extendleft(reversed(tasks))
        self.slots[self.slots.index(slot)] = self._start_slot()

    def _collect_finished(self, slot: _Slot) -> None:
        """Calls that finished before the actor died, their reports not yet collected: done, and not charged."""
        while slot.calls:
            ref = slot.calls[0][0]
            if not ray.wait([ref], timeout=0)[0]:
                return
            try:
                report = ray.get(ref)
            except RayError:
                return
            if not isinstance(report, ShardReport):
                return
            _, task, _ = slot.calls.popleft()
            self._owner.pop(ref, None)
            self._done(report, task.key)

    @staticmethod
    def _ready_now(slot: _Slot) -> bool:
        """Whether the actor had built its model before it died (its ready() result may not be collected yet)."""
        if not ray.wait([slot.ready_ref], timeout=0)[0]:
            return False
        try:
            return ray.get(slot.ready_ref) is None
        except RayError:
            return False

    def _failed(self, task: _Task, reason: str) -> None:
        """One lost attempt of ``task``: retry it, split it, or (one image, out of attempts) commit its error rows."""
        if self._progress is not None:
            self._progress.discard(task.key)  # what the lost attempt reported is undone; a retry reports anew
            self._progress.retry()
        task.failures.append(reason)
        store = self._store
        if store is not None and store.is_committed(task.shard.first_index, task.shard.last_index):
            # it committed, then its report was lost with the worker: done, and not to be written again
            self._done(ShardReport(task.shard.name, len(task.shard), 0, 0.0), (task.shard.name, "committed"))
            return
        if len(task.failures) < self.job.compute.max_attempts:
            self._pending.appendleft(task)
        elif len(task.shard) > 1:  # isolate the culprit: its images one by one, each with a fresh cap
            self._pending.extendleft(
                _Task(Shard((item,)), earlier_attempts=task.attempt - 1) for item in reversed(task.shard.items)
            )
        else:
            report = _commit_failed_image(self.job, store, task.shard, _give_up_message(task.failures))
            self._done(report, (task.shard.name, "given up"))


def _objects(shard: Shard, per_object: int) -> set[int]:
    """The Zarr objects (of every array) that ``shard``'s images lie in."""
    return {index // per_object for index, _ in shard.items}


def _give_up_message(failures: list[str]) -> str:
    counts = Counter(failures)
    parts = [f"{reason} {_times(n)}" for reason, n in counts.items()]
    return f"worker {' and '.join(parts)} while processing this image"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _commit_failed_image(job: Job, store: OutputSink, shard: Shard, message: str) -> ShardReport:
    """The error rows of an image no worker survived; its maps are reset to NaN first (the commit comes last)."""
    (index, record), = shard.items
    resolution = job.model.resolution
    writer = store.open_arrays()
    empty = np.full((3, resolution, resolution), np.nan, dtype=np.float32)
    for name in ("inputs", *job.methods) if job.output.inputs else job.methods:
        writer.write(name, index, empty)
    writer.flush()
    rows = [{**row, "shard": shard.name} for row in error_rows(index, record, job.methods, message)]
    store.commit_rows(index, index, rows)
    return ShardReport(shard.name, 1, 1, 0.0)
