"""Where results go: ``OUT/job.yaml``, ``OUT/attributions.zarr`` and ``OUT/metrics/*.parquet``.

The commit protocol, which makes crashes and retries harmless:
1. the driver lays out the Zarr group once (arrays of N images, one image per chunk, NaN fill);
2. a shard writes its images' chunks — whole chunks, so concurrent shards need no lock;
3. a shard then writes its Parquet rows to a temporary name and renames it to ``part-FIRST-LAST.parquet``.
The Parquet file is the commit: an image is done iff a row for it is in a committed file. A shard that dies before
step 3 left chunks that the retry overwrites byte for byte; a shard that runs twice writes the same file name, so
rows are never duplicated. Temporary names start with '.', which ``pyarrow.dataset`` ignores.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from .errors import OutputError
from .layout import JOB_FILE, METRICS_DIR, REJECTED_DIR, ZARR_NAME, written_chunks
from .yaml_io import load_yaml


#: Parquet columns, in order (CONTRACT). Extra metric columns may follow.
ROW_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("index", pa.int64()),
        ("method", pa.string()),
        ("target", pa.int64()),
        ("target_name", pa.string()),
        ("target_prob", pa.float64()),
        ("label", pa.int64()),
        ("sensitivity_max", pa.float64()),
        ("attr_seconds", pa.float64()),
        ("sensitivity_seconds", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("note", pa.string()),  # why an ok row has a missing value (e.g. sensitivity of an all-zero map)
        ("shard", pa.string()),
    ]
)


class UnreadableShard(OutputError):
    """A committed Parquet file that cannot be read (truncated, not Parquet)."""


@dataclass
class CommitCheck:
    """What ``--resume`` found in OUT: the images of whole committed shards, and the shards set aside, with why."""

    done: set[int] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # file name → reason

    def reject(self, name: str, reason: str) -> None:
        self.rejected[name] = reason


def shard_file_name(first_index: int, last_index: int) -> str:
    return f"part-{first_index:08d}-{last_index:08d}.parquet"


class RunStore:
    """One output directory, local or any fsspec URL (s3://…)."""

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.out)

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def zarr_url(self) -> str:
        return f"{self.out}/{ZARR_NAME}"

    def _open_group(self, mode: str) -> zarr.Group:
        return zarr.open_group(self.zarr_url, mode=mode)

    # ------------------------------------------------------------------ driver side
    def existing_fingerprint(self) -> str | None:
        path = self._path(JOB_FILE)
        if not self.fs.exists(path):
            return None
        try:
            with self.fs.open(path, "r") as fh:
                data = load_yaml(fh) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise OutputError(f"{self.out}/{JOB_FILE} is not a job file this tool wrote ({_first_line(err)})") from None
        return data.get("fingerprint") if isinstance(data, dict) else None

    def has_results(self) -> bool:
        return bool(self.committed_files()) or self.fs.exists(self._path(JOB_FILE))

    def check_target(self, fingerprint: str, resume: bool) -> None:
        """Before any work: OUT can be written, and holds no other run (or, on resume, this job's run)."""
        self._check_writable()
        if resume and self.fs.exists(self._path(JOB_FILE)):
            found = self.existing_fingerprint()
            if found != fingerprint:
                raise OutputError(
                    f"{self.out} holds results of a different job (fingerprint {found}, this job {fingerprint}); "
                    "resume only with the same settings, or choose another --out"
                )
        elif not resume and self.has_results():
            raise OutputError(f"{self.out} already holds a run; pass --resume to finish it, or choose another --out")

    def _check_writable(self) -> None:
        """Write and remove a probe file in OUT; folders made only for the probe are removed again, so a run that
        stops before its first image leaves nothing behind."""
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise OutputError(f"--out {self.out} is a file, not a folder")
        first_missing = self._first_missing_folder()
        probe = self._path(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"")
            self.fs.rm(probe)
        except OSError as err:
            raise OutputError(f"cannot write to {self.out}: {_first_line(err)}") from None
        finally:
            if first_missing is not None and self.fs.exists(first_missing):
                self.fs.rm(first_missing, recursive=True)

    def _first_missing_folder(self) -> str | None:
        """The outermost folder of OUT's path that does not exist yet (None when OUT exists or is not local)."""
        if not isinstance(self.fs, LocalFileSystem) or self.fs.exists(self.root):
            return None
        path = self.root
        while not self.fs.exists(os.path.dirname(path)) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        return path

    def prepare(
        self,
        job_yaml: str,
        fingerprint: str,
        image_ids: Sequence[str],
        resolution: int,
        methods: Sequence[str],
        attrs: dict,
        resume: bool,
    ) -> None:
        """Lay out OUT for a run, or check that a resumed run matches what is there (:meth:`check_target` first)."""
        if resume and self.fs.exists(self._path(JOB_FILE)):
            if self.fs.exists(self._path(ZARR_NAME)):
                group = self._open_group("r")
                if list(group.attrs.get("image_ids", [])) != list(image_ids):
                    raise OutputError(
                        f"{self.out} was made from a different image list ({len(group.attrs.get('image_ids', []))} "
                        f"images, now {len(image_ids)}); the source changed since — use another --out"
                    )
                return
            # The maps are gone: verify_committed has set every shard with maps aside; lay the arrays out again.
            self._create_arrays(fingerprint, image_ids, resolution, methods, attrs)
            return
        self.fs.makedirs(self._path(METRICS_DIR), exist_ok=True)
        self._create_arrays(fingerprint, image_ids, resolution, methods, attrs)
        # job.yaml last: its presence says the layout is complete.
        with self.fs.open(self._path(JOB_FILE), "w") as fh:
            fh.write(job_yaml)

    def _create_arrays(self, fingerprint: str, image_ids: Sequence[str], resolution: int, methods: Sequence[str],
                       attrs: dict) -> None:
        group = self._open_group("w")
        n = len(image_ids)
        for name in ("inputs", *methods):
            group.create_array(
                name,
                shape=(n, 3, resolution, resolution),
                chunks=(1, 3, resolution, resolution),  # one image a chunk: shards own whole chunks
                dtype="float32",
                fill_value=float("nan"),
            )
        group.attrs.update({"image_ids": list(image_ids), "fingerprint": fingerprint, **attrs})

    def committed_files(self) -> list[str]:
        directory = self._path(METRICS_DIR)
        # Object-store filesystems (s3fs) cache listings per instance, and fsspec shares instances within a process:
        # files that workers committed since the last listing would be missing from it.
        self.fs.invalidate_cache(directory)
        if not self.fs.exists(directory):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False)]
        return sorted(n for n in names if n.endswith(".parquet") and not n.startswith((".", "_")))

    def committed_indices(self) -> set[int]:
        done: set[int] = set()
        for name in self.committed_files():
            done.update(self.read_committed(name, ["index"]).column("index").to_pylist())
        return done

    def read_committed(self, name: str, columns: Sequence[str]) -> pa.Table:
        """Columns of one committed Parquet file; an unreadable file is an OutputError naming it."""
        path = self._path(METRICS_DIR, name)
        try:
            with self.fs.open(path, "rb") as fh:
                return pq.read_table(fh, columns=list(columns))
        except (pa.ArrowException, OSError) as err:
            raise UnreadableShard(f"{self.out}/{METRICS_DIR}/{name} is not readable Parquet ({_first_line(err)}); "
                                  "run again with --resume to recompute its shard") from None

    def verify_committed(self, methods: Sequence[str]) -> "CommitCheck":
        """For ``--resume``: the images of committed shards that are whole — every file readable, every ok row's map
        and input chunk present. A shard that fails either check is moved to ``metrics/_rejected/`` (kept, but no
        longer committed) so that its images run again."""
        written = {name: written_chunks(self.fs, self.root, name) for name in ("inputs", *methods)}
        check = CommitCheck()
        for name in self.committed_files():
            try:
                table = self.read_committed(name, ["index", "method", "status"])
            except UnreadableShard as err:
                check.reject(name, str(err))
                continue
            missing = [
                (index, method)
                for index, method, status in zip(*(table.column(c).to_pylist() for c in ("index", "method", "status")))
                if status == "ok" and (index not in written.get(method, ()) or index not in written["inputs"])
            ]
            if missing:
                index, method = missing[0]
                check.reject(name, f"{self.out}/{METRICS_DIR}/{name} commits {len(missing)} maps that are missing "
                                   f"from {ZARR_NAME} (first: {method} of image {index}); recomputing its shard")
                continue
            check.done.update(table.column("index").to_pylist())
        for name in check.rejected:
            self._set_aside(name)
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
    def open_arrays(self) -> "ShardWriter":
        return ShardWriter(self._open_group("r+"))

    def commit_rows(self, first_index: int, last_index: int, rows: Iterable[dict]) -> str:
        """Write a shard's rows atomically; returns the committed file name."""
        table = rows_to_table(list(rows))
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
            raise OutputError(f"cannot commit {self.out}/{METRICS_DIR}/{name}: {_first_line(err)}") from None
        finally:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
        return name


class ShardWriter:
    """Writes whole per-image chunks of the Zarr arrays."""

    def __init__(self, group: zarr.Group):
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self.group[name]
        try:
            array[index] = np.ascontiguousarray(values, dtype=np.float32)
        except OSError as err:
            raise OutputError(f"cannot write {name} of image {index} to {ZARR_NAME}: {_first_line(err)}") from None


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) → a table with ROW_SCHEMA first, then any extra numeric columns as float64."""
    extra = sorted({k for row in rows for k in row} - set(ROW_SCHEMA.names))
    schema = ROW_SCHEMA
    for name in extra:
        schema = schema.append(pa.field(name, pa.float64()))
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
