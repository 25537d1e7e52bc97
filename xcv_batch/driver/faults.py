"""Test-only fault injection: make a Ray worker die or hang on a chosen image, to exercise the driver's recovery.

``XCV_TEST_FAULTS`` in the *driver's* environment (read once per run and handed to the actors) lists faults as
``ACTION:IMAGE_ID:WHEN`` separated by ``;`` — ACTION ``kill`` (SIGKILL, like the OOM killer) or ``hang``; WHEN
``once`` (the image's first attempt only) or ``always``. The fault fires after the batch holding the image is
computed and its maps written, before the shard commits: the worst moment for a real crash. Unset, it costs nothing.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from ..work import ImagesDone, ProgressEvent, Shard

ENV = "XCV_TEST_FAULTS"


@dataclass(frozen=True)
class Fault:
    action: str  # 'kill' | 'hang'
    image_id: str
    when: str  # 'once' | 'always'


def faults_from_env() -> tuple[Fault, ...]:
    text = os.environ.get(ENV, "").strip()
    faults = []
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        action, _, rest = entry.partition(":")
        image_id, _, when = rest.rpartition(":")
        if action not in ("kill", "hang") or when not in ("once", "always") or not image_id:
            raise ValueError(f"{ENV}: bad entry {entry!r}; expected ACTION:IMAGE_ID:WHEN (kill|hang, once|always)")
        faults.append(Fault(action, image_id, when))
    return tuple(faults)


def progress_hook(faults: tuple[Fault, ...], shard: Shard, attempt: int) -> Callable[[ProgressEvent], None] | None:
    """A ``process_shard`` progress callback that fires the faults meant for this shard and attempt, or None."""
    positions = {record.image_id: position for position, (_, record) in enumerate(shard.items)}
    armed = [(positions[f.image_id], f) for f in faults
             if f.image_id in positions and (f.when == "always" or attempt == 1)]
    if not armed:
        return None
    done = 0

    def hook(event: ProgressEvent) -> None:
        nonlocal done
        if not isinstance(event, ImagesDone):  # faults fire when a batch is finished
            return
        done += event.images
        for position, fault in armed:
            if position < done:
                if fault.action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                while True:  # 'hang': never returns; the driver's shard timeout must notice
                    time.sleep(60)

    return hook
