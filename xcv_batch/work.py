"""What the driver and the workers hand each other: the unit of work, its report, and the progress events in between.

Plain data, free of torch and of the driver, in a module below both: the driver plans shards (and ``--dry-run`` shows
them) before the model's libraries are imported, and a worker, the notebook API or a benchmark runs a batch without
loading any scheduling code. A worker sends the events (in-process as calls, from Ray actors as messages);
:class:`xcv_batch.driver.progress.RunProgress` turns them into the run's progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.sources import ImageRecord

# ------------------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """Consecutive images of the job's sorted list: the unit of output files, retry and resume."""

    items: tuple[tuple[int, ImageRecord], ...]  # (index in the Zarr arrays, record)

    @property
    def first_index(self) -> int:
        return self.items[0][0]

    @property
    def last_index(self) -> int:
        return self.items[-1][0]

    @property
    def name(self) -> str:
        return f"{self.first_index:08d}-{self.last_index:08d}"

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class ShardReport:
    shard: str
    n_images: int
    n_failed: int
    seconds: float
    # per method: the seconds it ran in this shard (explanation, Max-Sensitivity and metrics) and the images it
    # explained then, for the run's closing summary
    method_seconds: dict[str, float] = field(default_factory=dict)
    method_images: dict[str, int] = field(default_factory=dict)
    # CPU seconds by stage of the worker's pipeline (:data:`xcv_batch.execution.tally.STAGES`: decode, staging,
    # method, write, commit), each counted on the thread that ran it
    stage_seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class MethodDone:
    """``method`` has explained ``images`` images of a batch (Max-Sensitivity and metrics included) in ``seconds``."""

    method: str
    images: int
    seconds: float


@dataclass(frozen=True)
class Forwarded:
    """``rows`` more rows went through the model for ``method``, in a call on ``images`` images still running."""

    method: str
    rows: int
    images: int


@dataclass(frozen=True)
class Skipped:
    """``images`` images of a batch ended without ``method`` running (unreadable, or their forward failed)."""

    method: str
    images: int


@dataclass(frozen=True)
class ImagesDone:
    """A batch of ``images`` is finished, ``failed`` of them with error rows (its rows commit with the shard)."""

    images: int
    failed: int


ProgressEvent = MethodDone | Forwarded | Skipped | ImagesDone
