"""How many CPU cores this process may use: one answer for thread counts, worker placement and process pools.

Its own module, free of torch and skimage, so that light processes (segmentation workers) can import it cheaply; at
the package's bottom, so LIME's segmentation, the execution and the driver's placement share it without importing
each other.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
