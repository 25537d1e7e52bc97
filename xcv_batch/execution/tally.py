"""A worker's progress in one shard: the events it sends (:mod:`xcv_batch.work`) and the seconds its report keeps."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from ..work import Forwarded, ImagesDone, MethodDone, ProgressEvent, Skipped

#: Seconds between two :class:`Forwarded` events of one worker: often enough for a live ETA, rare enough to cost
#: nothing next to a forward pass (and a few bytes a second from a Ray worker).
HEARTBEAT_S = 0.5

#: The stages of a worker's pipeline whose CPU seconds a shard's report keeps: decoding and resizing an image, checking
#: and stacking a batch and sending it to the device, the methods and metrics (the calling thread's CPU: the threads
#: torch starts inside an operator are not counted), storing the maps, building and committing the rows.
STAGES = ("decode", "staging", "method", "write", "commit")


class ShardTally:
    """A worker's view of one shard: passes its events on, fills in :class:`Skipped` at the end of each batch, and
    keeps the per-method seconds and images that the shard's report carries back."""

    def __init__(self, methods: Sequence[str], send: Callable[[ProgressEvent], None] | None = None):
        self.methods = list(methods)
        self.send = send
        self.seconds: Counter = Counter()
        self.images: Counter = Counter()
        self._batch: Counter = Counter()  # images each method has explained in the current batch
        self.stage_seconds: Counter = Counter()  # CPU seconds by stage (STAGES); added to from several threads
        self._stage_lock = threading.Lock()

    def add_stage(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` of CPU to ``stage`` (one of :data:`STAGES`); any thread may call it."""
        with self._stage_lock:
            self.stage_seconds[stage] += seconds

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Count the calling thread's CPU while open to ``stage``."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.add_stage(stage, time.thread_time() - started)

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, MethodDone):
            self.seconds[event.method] += event.seconds
            self.images[event.method] += event.images
            self._batch[event.method] += event.images
        if self.send is not None:
            self.send(event)

    def end_batch(self, images: int, failed: int) -> None:
        for method in self.methods:
            missing = images - self._batch[method]
            if missing > 0:
                self(Skipped(method, missing))
        self._batch.clear()
        self(ImagesDone(images, failed))

    @contextmanager
    def counting_forwards(self, net, method: str, images: int, runner=None) -> Iterator[None]:
        """While open, rows through ``net`` are reported as :class:`Forwarded` (at most every HEARTBEAT_S), and so
        are the rows ``runner`` (the method object) reports itself through ``report_rows``: a path that never calls
        ``net`` as a whole (incremental Occlusion) still moves the progress while it runs."""
        if self.send is None:
            yield
            return
        pending = {"rows": 0, "last": -HEARTBEAT_S}
        active = [True]  # a copy of the model made meanwhile (deep copies keep hooks) must not report later

        def add(rows: int) -> None:
            if not active[0]:
                return
            pending["rows"] += rows
            now = time.monotonic()
            if now - pending["last"] >= HEARTBEAT_S:
                self(Forwarded(method, pending["rows"], images))
                pending["rows"], pending["last"] = 0, now

        def count(module, args, output) -> None:
            if args and hasattr(args[0], "shape"):
                add(int(args[0].shape[0]))

        handle = net.register_forward_hook(count)
        listening = runner is not None and hasattr(runner, "rows_listener")
        if listening:
            runner.rows_listener = add
        try:
            yield
        finally:
            active[0] = False
            handle.remove()
            if listening:
                runner.rows_listener = None
