"""The package's log lines on the terminal: INFO and above, one message a line, on the stderr of the moment.

Python prints only warnings when nothing is configured; a run also says which path a method chose and why (INFO),
so the CLI and each worker process call :func:`show_info` once. A library user's own logging setup is untouched
unless they call it.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (a test or a notebook may have replaced it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_info() -> None:
    """The ``xcv_batch`` loggers' INFO, WARNING and ERROR lines on stderr (once per process)."""
    logger = logging.getLogger("xcv_batch")
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
