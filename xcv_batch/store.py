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
from typing import Iterable, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zarr

from .errors import OutputError

ZARR_NAME = "attributions.zarr"
METRICS_DIR = "metrics"
JOB_FILE = "job.yaml"

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
        ("shard", pa.string()),
    ]
)


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
        with self.fs.open(path, "r") as fh:
            data = yaml.safe_load(fh) or {}
        return data.get("fingerprint")

    def has_results(self) -> bool:
        return bool(self.committed_files()) or self.fs.exists(self._path(JOB_FILE))

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
        """Lay out OUT for a run, or check that a resumed run matches what is there."""
        if resume and self.fs.exists(self._path(JOB_FILE)):
            found = self.existing_fingerprint()
            if found != fingerprint:
                raise OutputError(
                    f"{self.out} holds results of a different job (fingerprint {found}, this job {fingerprint}); "
                    "resume only with the same settings, or choose another --out"
                )
            group = self._open_group("r")
            if list(group.attrs.get("image_ids", [])) != list(image_ids):
                raise OutputError(
                    f"{self.out} was made from a different image list ({len(group.attrs.get('image_ids', []))} "
                    f"images, now {len(image_ids)}); the source changed since — use another --out"
                )
            return
        if not resume and self.has_results():
            raise OutputError(f"{self.out} already holds a run; pass --resume to finish it, or choose another --out")

        self.fs.makedirs(self._path(METRICS_DIR), exist_ok=True)
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
        # job.yaml last: its presence says the layout is complete.
        with self.fs.open(self._path(JOB_FILE), "w") as fh:
            fh.write(job_yaml)

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
            with self.fs.open(self._path(METRICS_DIR, name), "rb") as fh:
                done.update(pq.read_table(fh, columns=["index"]).column("index").to_pylist())
        return done

    def failed_image_ids(self) -> set[str]:
        """Images with an error row in a committed shard (only those two columns of each file are read)."""
        failed: set[str] = set()
        for name in self.committed_files():
            with self.fs.open(self._path(METRICS_DIR, name), "rb") as fh:
                table = pq.read_table(fh, columns=["image_id", "status"])
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
        array[index] = np.ascontiguousarray(values, dtype=np.float32)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts) → a table with ROW_SCHEMA first, then any extra numeric columns as float64."""
    extra = sorted({k for row in rows for k in row} - set(ROW_SCHEMA.names))
    schema = ROW_SCHEMA
    for name in extra:
        schema = schema.append(pa.field(name, pa.float64()))
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)
