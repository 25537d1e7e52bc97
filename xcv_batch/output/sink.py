"""The output sink: what the driver, its actors and the worker need from where results go.

:class:`OutputSink` lists every call they make; :class:`xcv_batch.output.store.RunStore` (the Parquet row ledger,
local or any fsspec URL, with the maps in the job's map format of :mod:`xcv_batch.output.formats`) is the one
implementation, and :func:`open_sink` is the one place that constructs it. The commit
protocol a sink keeps: the driver lays OUT out once (:meth:`OutputSink.prepare`); a shard writes its maps through an
:class:`ArrayWriter`, flushes it, then commits its rows (:meth:`OutputSink.commit_rows`); an image is done iff a
committed row names it, so a shard that dies before its commit is simply run again.

Typing only at import (no zarr, pyarrow or torch): the driver imports this before its checks have passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, runtime_checkable

from ..errors import OutputError

if TYPE_CHECKING:
    import numpy as np


class UnreadableShard(OutputError):
    """A committed shard (Parquet file) that cannot be read (truncated, not Parquet): ``path`` names it, ``why``
    says what Parquet found. The message is for readers; ``--resume`` says instead that it recomputes the shard."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path} is not readable Parquet ({why}); run the job again with --resume to recompute its "
                         "shard")


@dataclass
class CommitCheck:
    """What ``--resume`` found in OUT: the images of whole committed shards, and the shards set aside, with why."""

    done: set[int] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # committed name → reason

    def reject(self, name: str, reason: str) -> None:
        self.rejected[name] = reason


@runtime_checkable
class ArrayWriter(Protocol):
    """Writes one shard's images into the arrays (``inputs`` and one per method); :meth:`flush` before the commit."""

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        """The ``(3, H, W)`` float32 map (or model input) of image ``index`` into array ``name``. The worker writes
        through a thread (:mod:`.background`), so ``values`` may be stored later: it is never changed afterwards."""

    def flush(self) -> None:
        """Store everything written so far: after this the shard's rows may be committed."""


@runtime_checkable
class OutputSink(Protocol):
    """Where one run's results go (see the module docstring for the commit protocol)."""

    #: The sink's address as the user gave it (``--out``), for messages.
    out: str
    #: Key-value metadata every committed shard carries (:func:`xcv_batch.output.provenance.run_provenance`); the actors
    #: set it per shard.
    provenance: dict[str, str]

    # --- driver side, before the shards
    def layout_images_per_object(self) -> int | None:
        """Images per stored object of the arrays already there (None when there are none)."""

    def verify_committed(self, methods: Sequence[str], decode: bool = False, inputs: bool = True) -> CommitCheck:
        """For ``--resume``: the images of committed shards that are whole; broken shards are set aside. With
        ``decode`` (``--verify``) every committed map and input is also decoded. ``inputs``: whether OUT stores the
        inputs (``output.inputs``)."""

    def prepare(self, job_yaml: str, fingerprint: str, image_ids: Sequence[str], resolution: int,
                methods: Sequence[str], attrs: dict, resume: bool, image_paths: Sequence[str] | None = None,
                images_per_object: int = 1, storage: dict | None = None) -> None:
        """Lay out the arrays and write the job, or check on resume that what is there is this job's. ``storage``:
        the :class:`~.formats.MapLayout` storage choices (dtype, channels, inputs; defaults when None)."""

    # --- shard side (workers, and the driver for an image no worker survived)
    def open_arrays(self) -> ArrayWriter:
        """A writer for one shard's maps."""

    def commit_rows(self, first_index: int, last_index: int, rows: Iterable[dict]) -> str:
        """Commit the rows of the shard of images ``first_index``…``last_index`` atomically (the same shard committed
        twice replaces, never duplicates); returns the committed name."""

    # --- reading what is committed
    def committed_files(self) -> list[str]:
        """The names of the committed shards."""

    def is_committed(self, first_index: int, last_index: int) -> bool:
        """Whether the shard of images ``first_index``…``last_index`` has committed."""

    def committed_file_indices(self, name: str) -> list[int]:
        """The image indices that committed shard ``name`` holds rows of; :class:`UnreadableShard` if unreadable."""

    def failed_image_ids(self) -> set[str]:
        """The images with an error row in a committed shard."""

    # --- driver side, after the shards
    def finish(self) -> None:
        """After the last shard (consolidate metadata, close)."""


def open_sink(out: str, provenance: dict[str, str] | None = None, map_format: str = "zarr") -> OutputSink:
    """The output sink for ``out`` (a local path or an fsspec URL such as ``s3://…``), its maps in ``map_format``
    (``output.format``): the one place the concrete store is constructed. pyarrow and the format's writer (zarr) are
    imported here, not when this module is."""
    from .store import RunStore

    return RunStore(out, provenance=provenance, map_format=map_format)
