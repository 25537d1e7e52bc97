"""The Parquet row ledger of one OUT: ``OUT/job.yaml``, ``OUT/metrics/*.parquet``, and the maps through the
run's map format (:mod:`.formats`; ``OUT/attributions.zarr`` by default).

The commit protocol, which makes crashes and retries harmless:
1. the driver lays the maps out once (all missing) through the format's writer, then writes ``job.yaml``;
2. a shard writes its images' maps through the writer — whole objects, since shards start at multiples of the
   images per object, so concurrent shards need no lock;
3. a shard then writes its Parquet rows to a temporary name and renames it to ``part-FIRST-LAST.parquet``.
The Parquet file is the commit: an image is done iff a row for it is in a committed file. A shard that dies before
step 3 left maps that the retry overwrites byte for byte; a shard that runs twice writes the same file name, so
rows are never duplicated. Temporary names start with '.', which ``pyarrow.dataset`` ignores. On ``--resume`` the
ledger asks the format which committed maps are whole (:meth:`RunStore.verify_committed`).
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Iterable, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.parquet as pq
# pyarrow imports pandas the first time it builds a table (0.4 s on a 2-core machine). Imported with the store, when a
# worker opens its OUT, that cost falls in the worker's start-up with torch and the model, not inside its first shard,
# whose time (and the progress line's rate) is then its images' own, as every later shard's is.
import pandas  # noqa: F401

from ..errors import OutputError, first_line
from .formats import DEFAULT_FORMAT, MapLayout, map_writer
from .layout import (EXTRA_COLUMN_KIND, FLOAT, INT, JOB_FILE, METRICS_DIR, OPTIONAL_INT, REJECTED_DIR, ROW_COLUMNS,
                     STRING)
from .sink import ArrayWriter, CommitCheck, UnreadableShard  # noqa: F401 - defined with the sink protocol; re-exported


#: pyarrow types of the row column kinds of :mod:`xcv_batch.output.layout`.
_ARROW_TYPES = {STRING: pa.string(), INT: pa.int64(), OPTIONAL_INT: pa.int64(), FLOAT: pa.float64()}

#: Parquet columns, in order (docs/output.md), from :data:`xcv_batch.output.layout.ROW_COLUMNS`. Extra
#: metric columns may follow.
ROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in ROW_COLUMNS])


def shard_file_name(first_index: int, last_index: int) -> str:
    return f"part-{first_index:08d}-{last_index:08d}.parquet"


class RunStore:
    """One output directory, local or any fsspec URL (s3://…): the :class:`xcv_batch.output.sink.OutputSink` of this
    package, its maps in format ``map_format`` (registered in :mod:`.formats`). Construct it through
    :func:`xcv_batch.output.sink.open_sink`."""

    def __init__(self, out: str, provenance: dict[str, str] | None = None, map_format: str = DEFAULT_FORMAT):
        self.out = out.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.out)
        #: key-value metadata of every Parquet file this store commits (xcv_batch.output.provenance.run_provenance)
        self.provenance = dict(provenance or {})
        self.map_format = map_format
        #: The format's writer (:class:`xcv_batch.output.formats.MapWriter`)
        self.maps = map_writer(self.out, map_format)

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ------------------------------------------------------------------ driver side
    def prepare(
        self,
        job_yaml: str,
        fingerprint: str,
        image_ids: Sequence[str],
        resolution: int,
        methods: Sequence[str],
        attrs: dict,
        resume: bool,
        image_paths: Sequence[str] | None = None,
        images_per_object: int = 1,
        storage: dict | None = None,
    ) -> None:
        """Lay out OUT for a run, or check that a resumed run matches what is there (after
        :func:`xcv_batch.output.outdir.check_out`)."""
        layout = MapLayout(fingerprint, image_ids, image_paths, resolution, methods, attrs, images_per_object,
                           **(storage or {}))
        if resume and self.fs.exists(self._path(JOB_FILE)):
            # The maps there are checked to be this image list's; gone, verify_committed has set every shard with maps
            # aside, and they are laid out again.
            self.maps.prepare(layout, resume=True)
            return
        try:  # a disk that fills while OUT is laid out is one line, as one that fills while a shard is written
            self.fs.makedirs(self._path(METRICS_DIR), exist_ok=True)
            self.maps.prepare(layout, resume=False)
            # job.yaml last: its presence says the layout is complete.
            with self.fs.open(self._path(JOB_FILE), "w") as fh:
                fh.write(job_yaml)
        except OSError as err:
            raise OutputError(f"cannot write the layout of {self.out}: {first_line(err)}") from None

    def finish(self) -> None:
        """After the last shard (the format's, e.g. Zarr's consolidated metadata)."""
        self.maps.finish()

    def layout_images_per_object(self) -> int | None:
        """Images per stored object of the maps already in OUT (None when there are none)."""
        return self.maps.images_per_object()

    def committed_files(self) -> list[str]:
        directory = self._path(METRICS_DIR)
        # Object-store filesystems (s3fs) cache listings per instance, and fsspec shares instances within a process:
        # files that workers committed since the last listing would be missing from it.
        self.fs.invalidate_cache(directory)
        if not self.fs.exists(directory):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False)]
        return sorted(n for n in names if n.endswith(".parquet") and not n.startswith((".", "_")))

    def is_committed(self, first_index: int, last_index: int) -> bool:
        return shard_file_name(first_index, last_index) in self.committed_files()

    def committed_file_indices(self, name: str) -> list[int]:
        return self.read_committed(name, ["index"]).column("index").to_pylist()

    def read_committed(self, name: str, columns: Sequence[str]) -> pa.Table:
        """Columns of one committed Parquet file; an unreadable file is an :class:`UnreadableShard` naming it."""
        path = self._path(METRICS_DIR, name)
        try:
            with self.fs.open(path, "rb") as fh:
                return pq.read_table(fh, columns=list(columns))
        except (pa.ArrowException, OSError) as err:
            # pyarrow names the open file handle ('<Buffer>'), not the file: the message names it instead
            why = re.sub(r"^Could not open Parquet input source '[^']*': ", "", first_line(err))
            raise UnreadableShard(f"{self.out}/{METRICS_DIR}/{name}", why) from None

    def verify_committed(self, methods: Sequence[str], decode: bool = False, inputs: bool = True) -> "CommitCheck":
        """For ``--resume``: the images of committed shards that are whole — every file readable, and every ok row's
        map and input whole as the map format checks them without decoding (Zarr: chunk files present and of a size
        their codecs can write, :mod:`.chunks`), and with ``decode`` (``--verify``) decodable too. A shard that fails
        is moved to ``metrics/_rejected/`` (kept, but no longer committed) so that its images run again; what the
        format stores but cannot be whole is removed, so that the rewrite of a partly recomputed object starts
        afresh."""
        arrays = ("inputs", *methods) if inputs else tuple(methods)  # output.inputs false: no inputs to check
        maps = self.maps.check(arrays)
        check = CommitCheck()
        committed: dict[str, tuple[list[tuple[int, str]], list[int]]] = {}  # file → its ok (image, array), its images
        for name in self.committed_files():
            try:
                table = self.read_committed(name, ["index", "method", "status"])
            except UnreadableShard as err:
                check.reject(name, f"{err.path} is not readable Parquet ({err.why}); recomputing its shard")
                continue
            ok = [(index, method) for index, method, status
                  in zip(*(table.column(c).to_pylist() for c in ("index", "method", "status"))) if status == "ok"]
            pairs = [(index, array) for index, method in ok for array in ((method, "inputs") if inputs else (method,))]
            problem = maps.problem(pairs)
            if problem:
                check.reject(name, f"{self.out}/{METRICS_DIR}/{name} commits {problem}; recomputing its shard")
                continue
            committed[name] = (pairs, table.column("index").to_pylist())
            check.done.update(committed[name][1])
        if decode:
            maps.decode({pair for pairs, _ in committed.values() for pair in pairs})
            for name, (pairs, images) in committed.items():
                problem = maps.decode_problem(pairs)
                if problem:
                    check.reject(name, f"{self.out}/{METRICS_DIR}/{name} commits {problem}; recomputing its shard")
                    check.done.difference_update(images)
        for name in check.rejected:
            self._set_aside(name)
        maps.clean()
        return check

    def _set_aside(self, name: str) -> None:
        target = self._path(METRICS_DIR, REJECTED_DIR, name)
        self.fs.makedirs(self._path(METRICS_DIR, REJECTED_DIR), exist_ok=True)
        if self.fs.exists(target):
            self.fs.rm(target)
        self.fs.mv(self._path(METRICS_DIR, name), target)

    def failed_image_ids(self) -> set[str]:
        """Images with an error row in a committed shard (only those two columns of each file are read)."""
        failed: set[str] = set()
        for name in self.committed_files():
            table = self.read_committed(name, ["image_id", "status"])
            statuses = table.column("status").to_pylist()
            failed.update(i for i, status in zip(table.column("image_id").to_pylist(), statuses) if status == "error")
        return failed

    # ------------------------------------------------------------------ shard side
    def open_arrays(self) -> ArrayWriter:
        """A writer for one shard's maps, in the run's map format."""
        return self.maps.open_shard()

    def commit_rows(self, first_index: int, last_index: int, rows: Iterable[dict]) -> str:
        """Write a shard's rows atomically; returns the committed file name."""
        table = rows_to_table(list(rows), self.provenance)
        name = shard_file_name(first_index, last_index)
        final = self._path(METRICS_DIR, name)
        temporary = self._path(METRICS_DIR, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open(temporary, "wb") as fh:
                pq.write_table(table, fh)
            if isinstance(self.fs, LocalFileSystem):
                os.replace(temporary, final)  # atomic on a POSIX file system
            else:
                self.fs.mv(temporary, final)  # object stores: the copy lands whole or not at all
        except OSError as err:
            raise OutputError(f"cannot commit {self.out}/{METRICS_DIR}/{name}: {first_line(err)}") from None
        finally:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
        return name


def rows_to_table(rows: list[dict], metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows (dicts) → a table with ROW_SCHEMA first, then any extra numeric columns as float64; ``metadata``
    becomes the file's key-value metadata (the run's provenance)."""
    extra = sorted({k for row in rows for k in row} - set(ROW_SCHEMA.names))
    schema = ROW_SCHEMA
    for name in extra:
        schema = schema.append(pa.field(name, _ARROW_TYPES[EXTRA_COLUMN_KIND]))
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
    return pa.table(columns, schema=schema)

