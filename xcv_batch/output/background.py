"""Writing a shard's maps on a thread of their own, so that storing one batch overlaps computing the next.

:class:`BackgroundWriter` is an :class:`~.sink.ArrayWriter` around the format's own: :meth:`~BackgroundWriter.write`
hands the map to a bounded queue (it waits while ``max_pending`` maps are queued, so memory stays bounded when the
store is slower than the methods), and one thread writes them in order. A failed write is kept and raised by the next
``write`` and by :meth:`~BackgroundWriter.flush`, which the shard calls before its rows commit: a shard whose maps
did not all land is never committed. :meth:`~BackgroundWriter.close` (after a failure elsewhere in the shard) drops
what is still queued and stops the thread; the retry of the shard overwrites whatever was written.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .sink import ArrayWriter

_END = object()  # queued last: the thread stops after it


class BackgroundWriter:
    """Writes through ``writer`` on a background thread; at most ``max_pending`` maps wait in its queue.

    ``cpu_seconds``: the CPU the writes took (the thread's own, and :meth:`flush`'s), for the shard's stage times.
    """

    def __init__(self, writer: ArrayWriter, max_pending: int):
        if max_pending < 1:
            raise ValueError(f"max_pending must be ≥ 1, got {max_pending}")
        self.writer = writer
        self.max_pending = max_pending
        self.cpu_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._abandoned = threading.Event()  # close() before flush(): what is queued is dropped
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="xcv-writer", daemon=True)
        self._thread.start()

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        """Queue the map of image ``index`` for array ``name`` (``values`` must not change afterwards)."""
        if self._closed:
            raise RuntimeError("write after flush or close")
        self._raise_failure()
        while True:  # wait for room, but not on a thread that has failed and drops what it gets
            try:
                self._queue.put((name, index, values), timeout=0.1)
                return
            except queue.Full:
                self._raise_failure()

    def flush(self) -> None:
        """Wait until every queued map is written, then flush the format's writer; raises the first failed write."""
        self._stop()
        self._raise_failure()
        started = time.thread_time()
        self.writer.flush()
        self.cpu_seconds += time.thread_time() - started

    def close(self) -> None:
        """Stop the thread without writing what is still queued (a no-op after :meth:`flush`)."""
        self._abandoned.set()
        self._stop()

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_END)  # the thread keeps taking items until this one, so the put cannot wait forever
            self._thread.join()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        started = time.thread_time()
        try:
            while (item := self._queue.get()) is not _END:
                if self._error is None and not self._abandoned.is_set():
                    try:
                        self.writer.write(*item)
                    except BaseException as error:  # noqa: BLE001 - handed to the shard, which raises it
                        self._error = error
        finally:
            self.cpu_seconds += time.thread_time() - started
