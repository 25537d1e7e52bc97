"""Waiting on a condition in tests: poll it until it holds or a deadline passes, never a fixed pause."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, poll_s: float = 0.05) -> T:
    """The first truthy value of ``condition()``, or its last (falsy) value once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: its wait is the polling interval
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        pause.wait(poll_s)
