"""Run progress: a rich bar on a terminal, plain periodic lines elsewhere (job logs keep only a bar's last frame)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, total: int, already_done: int = 0, interval_s: float = 10.0, stream=None):
        self.total = total
        self.done = already_done
        self.failed = 0
        self.retries = 0
        self._start_done = already_done
        self._started = time.monotonic()
        self._last_line = 0.0
        self._interval = interval_s
        self._stream = stream or sys.stderr
        self._bar: Progress | None = None
        if self._stream.isatty():
            self._bar = Progress(
                TextColumn("[bold]explaining"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("[red]{task.fields[failed]} failed"),
                TextColumn("[yellow]{task.fields[retries]} retries"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
            )
            self._task = self._bar.add_task("run", total=total, completed=already_done, rate="", failed=0, retries=0)

    def __enter__(self) -> "RunProgress":
        if self._bar is not None:
            self._bar.start()
        else:
            self._line(force=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line(force=True)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def advance(self, images: int, failed: int = 0) -> None:
        self.done += images
        self.failed += failed
        if self._bar is not None:
            self._bar.update(
                self._task, completed=self.done, rate=f"{self.rate:.2f} img/s", failed=self.failed
            )
        else:
            self._line()

    def retry(self) -> None:
        self.retries += 1
        if self._bar is not None:
            self._bar.update(self._task, retries=self.retries)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < self._interval:
            return
        self._last_line = now
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = f", {self.retries} retries" if self.retries else ""
        print(
            f"progress: {self.done}/{self.total} images, {self.failed} failed{extra}, {rate:.2f} img/s, "
            f"eta {eta:.0f} s",
            file=self._stream,
            flush=True,
        )
