"""Run progress at the grain of the work: a rich bar on a terminal, plain lines at a steady interval elsewhere.

Workers report small events (:mod:`xcv_batch.work`) while they compute (:class:`MethodDone` when a method has
explained a batch's images, :class:`Forwarded` a few times a second while it runs, :class:`Skipped` for images that
ran no method); in-process they arrive as calls, from Ray actors as messages. :class:`RunProgress` keeps them per
*key* (a shard's attempt) so that a lost attempt's progress is taken back (:meth:`RunProgress.discard`) and a
committed shard counts exactly what its report says (:meth:`RunProgress.settle`). Work is weighed in
forward-equivalents (:mod:`xcv_batch.plan`), so the fraction done and the ETA do not jump when a cheap method follows
an expensive one.

"images" counts committed images (what ``--resume`` would skip); "image-methods" the explanations finished.
Job logs keep only a bar's last frame, so off a terminal the lines are plain, from a timer thread: they come at
``interval_s`` even while a long method runs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Mapping

from ..plan import Passes, format_duration
from ..work import Forwarded, MethodDone, ProgressEvent, Skipped


# ------------------------------------------------------------------------------------------------------ ledger


@dataclass
class _Ledger:
    """What one key (a shard's attempt) has reported so far."""

    units: int = 0  # image-methods finished
    work: float = 0.0  # forward-equivalents of those
    partial: dict = field(default_factory=dict)  # method → work of a call still running, from its forwards


@dataclass
class Snapshot:
    """The numbers a progress line shows."""

    images: int
    total_images: int
    units: int
    total_units: int
    work: float
    total_work: float
    failed: int
    retries: int
    elapsed: float
    rate: float | None  # forward-equivalents per second since the start; None until some work is measured

    @property
    def fraction(self) -> float:
        return min(1.0, self.work / self.total_work) if self.total_work > 0 else 1.0

    @property
    def eta_seconds(self) -> float | None:
        if self.rate is None:
            return None
        return max(0.0, self.total_work - self.work) / self.rate

    def eta_text(self) -> str:
        eta = self.eta_seconds
        if self.work >= self.total_work:
            return "eta 0:00:00"
        return "eta pending (measuring)" if eta is None else f"eta {format_duration(eta)}"

    def images_per_second(self, work_per_image: float) -> float | None:
        return self.rate / work_per_image if self.rate is not None and work_per_image > 0 else None


class RunProgress:
    """Progress of one run; thread-safe (the timer thread reads while events arrive)."""

    def __init__(self, total: int, work: Mapping[str, Passes], already_done: int = 0, interval_s: float = 10.0,
                 stream=None):
        self.total = total
        self.work = dict(work)
        self.work_per_image = sum(p.work for p in self.work.values())
        self.failed = 0
        self.retries = 0
        self._settled_images = already_done
        self._settled_units = already_done * len(self.work)
        self._settled_work = already_done * self.work_per_image
        self._start_work = self._settled_work
        self._method_seconds: Counter = Counter()
        self._method_images: Counter = Counter()
        self._open: dict[Hashable, _Ledger] = {}
        self._closed: set = set()
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self._interval = interval_s
        self._stream = stream or sys.stderr
        self._last_printed: tuple | None = None  # the state the last line showed
        self._last_print_at = 0.0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._bar = None

    @property
    def done(self) -> int:
        """Committed images."""
        return self._settled_images

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "RunProgress":
        self._started = time.monotonic()
        if self._stream.isatty():
            self._bar = _Bar(self._stream)
            self._bar.start()
        else:
            self._print_line(force=True)
        if self._bar is not None or self._interval > 0:
            self._timer = threading.Thread(target=self._tick, name="xcv-progress", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self._bar is not None:
            self._bar.show(self.snapshot())
            self._bar.stop()
        else:
            self._print_line(force=True)  # the final state, unless that exact line is already the last one
        summary = self.method_summary() if exc_type is None else None  # a failed run ends on its error line
        if summary:
            print(summary, file=self._stream, flush=True)

    def _tick(self) -> None:
        period = 1.0 if self._bar is not None else self._interval
        while not self._stop.wait(period):
            if self._bar is not None:
                self._bar.show(self.snapshot())
            else:
                self._print_line(repeat=True)  # a steady line, the same one too: the run is alive

    # ------------------------------------------------------------------ events
    def record(self, event: ProgressEvent, key: Hashable = None) -> None:
        """One worker event, for the shard attempt ``key``; events of a settled or discarded key are ignored."""
        with self._lock:
            if key in self._closed:
                return
            ledger = self._open.setdefault(key, _Ledger())
            if isinstance(event, MethodDone):
                self._finish(ledger, event.method, event.images)
            elif isinstance(event, Skipped):
                self._finish(ledger, event.method, event.images)
            elif isinstance(event, Forwarded):
                passes = self.work.get(event.method)
                if passes is not None and passes.rows > 0:
                    cap = event.images * passes.work  # a call's forwards never count for more than the call
                    credit = event.rows * passes.work / passes.rows
                    ledger.partial[event.method] = min(cap, ledger.partial.get(event.method, 0.0) + credit)
        self._show()

    def _finish(self, ledger: _Ledger, method: str, images: int) -> None:
        ledger.partial.pop(method, None)
        ledger.units += images
        passes = self.work.get(method)
        ledger.work += images * (passes.work if passes is not None else 0.0)

    def settle(self, key: Hashable, report) -> None:
        """A shard committed: it counts exactly its report (images, failures, per-method time), whatever arrived."""
        with self._lock:
            self._open.pop(key, None)
            self._closed.add(key)
            self._settled_images += report.n_images
            self._settled_units += report.n_images * len(self.work)
            self._settled_work += report.n_images * self.work_per_image
            self.failed += report.n_failed
            self._method_seconds.update(getattr(report, "method_seconds", None) or {})
            self._method_images.update(getattr(report, "method_images", None) or {})
        self._show()

    def discard(self, key: Hashable) -> None:
        """An attempt was lost (its worker died, hung or raised): what it reported is taken back."""
        with self._lock:
            self._open.pop(key, None)
            self._closed.add(key)
        self._show()

    def retry(self) -> None:
        with self._lock:
            self.retries += 1
        self._show()

    # ------------------------------------------------------------------ display
    def snapshot(self) -> Snapshot:
        with self._lock:
            open_units = sum(ledger.units for ledger in self._open.values())
            open_work = sum(ledger.work + sum(ledger.partial.values()) for ledger in self._open.values())
            work = self._settled_work + open_work
            elapsed = time.monotonic() - self._started
            measured = work - self._start_work
            return Snapshot(
                images=self._settled_images,
                total_images=self.total,
                units=min(self._settled_units + open_units, self.total * len(self.work)),
                total_units=self.total * len(self.work),
                work=work,
                total_work=self.total * self.work_per_image,
                failed=self.failed,
                retries=self.retries,
                elapsed=elapsed,
                rate=measured / elapsed if measured > 0 and elapsed > 0 else None,
            )

    def line(self) -> str:
        snap = self.snapshot()
        retries = f", {snap.retries} retries" if snap.retries else ""
        speed = snap.images_per_second(self.work_per_image)
        speed_text = f", {speed:.3g} images/s" if speed is not None else ""
        return (
            f"progress: {snap.images}/{snap.total_images} images, {snap.units}/{snap.total_units} image-methods "
            f"({snap.fraction:.0%}), {snap.failed} failed{retries}{speed_text}, {snap.eta_text()}"
        )

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.show(self.snapshot())
        else:
            self._print_line()

    def _print_line(self, force: bool = False, repeat: bool = False) -> None:
        """``force``: now, whatever the interval; ``repeat``: even when nothing has progressed since the last line
        (only the speed and ETA, which move with the clock, would differ)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_print_at < self._interval:
                return
            snap = self.snapshot()
            state = (snap.images, snap.units, round(snap.work, 6), snap.failed, snap.retries)
            if not repeat and state == self._last_printed:
                return
            self._last_printed, self._last_print_at = state, now
            print(self.line(), file=self._stream, flush=True)

    def method_summary(self) -> str | None:
        """One line: per method, images per second of its own time and its share of all methods' time."""
        with self._lock:
            seconds, images = dict(self._method_seconds), dict(self._method_images)
        total = sum(seconds.values())
        if total <= 0:
            return None
        parts = []
        for method in self.work:
            if seconds.get(method, 0) > 0:
                rate = images.get(method, 0) / seconds[method]
                parts.append(f"{method} {rate:.3g} images/s ({seconds[method] / total:.0%})")
        return "time by method (images/s of the method's own time, share of all methods' time): " + ", ".join(parts)


class _Bar:
    """The terminal bar: work done, image-methods and images, failures, elapsed and the measured ETA."""

    def __init__(self, stream):
        from rich.console import Console  # only on a terminal: plain lines need nothing from rich
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]explaining"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=Console(file=stream),
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("run", total=1.0, completed=0.0, counts="", eta="eta pending (measuring)")

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def show(self, snap: Snapshot) -> None:
        failed = f" · [red]{snap.failed} failed[/]" if snap.failed else ""
        retries = f" · [yellow]{snap.retries} retries[/]" if snap.retries else ""
        counts = (f"{snap.units}/{snap.total_units} image-methods · {snap.images}/{snap.total_images} images"
                  f"{failed}{retries}")
        self.progress.update(self.task, completed=snap.fraction, counts=counts, eta=snap.eta_text())
