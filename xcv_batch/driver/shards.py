"""The unit of work the driver hands out and what comes back: plain data, free of torch, so the driver can plan a
run (and ``--dry-run`` show it) before the model's libraries are imported."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.sources import ImageRecord


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
