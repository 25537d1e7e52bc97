"""Where results go: ``OUT/job.yaml``, ``OUT/attributions.zarr`` and ``OUT/metrics/*.parquet``.

The commit protocol, which makes crashes and retries harmless:
1. the driver lays out the Zarr group once (arrays of N images, one image per chunk, ``output.images_per_object``
   images per stored object, NaN fill);
2. a shard writes its images' objects — whole objects, since shards start at multiples of the images per object, so
   concurrent shards need no lock;
3. a shard then writes its Parquet rows to a temporary name and renames it to ``part-FIRST-LAST.parquet``.
The Parquet file is the commit: an image is done iff a row for it is in a committed file. A shard that dies before
step 3 left chunks that the retry overwrites byte for byte; a shard that runs twice writes the same file name, so
rows are never duplicated. Temporary names start with '.', which ``pyarrow.dataset`` ignores.
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from ..errors import OutputError, first_line
from .layout import (EXTRA_COLUMN_KIND, FLOAT, IMAGE_ARRAY, IMAGE_PATH_ARRAY, INT, JOB_FILE, MAP_DIMENSIONS,
                     METRICS_DIR, OPTIONAL_INT, REJECTED_DIR, ROW_COLUMNS, STRING, ZARR_NAME, array_chunks,
                     stored_image_ids)
from .chunks import ArrayChunks
from .sink import CommitCheck, UnreadableShard  # noqa: F401 - defined with the sink protocol; re-exported here


#: pyarrow types of the row column kinds of :mod:`xcv_batch.layout`.
_ARROW_TYPES = {STRING: pa.string(), INT: pa.int64(), OPTIONAL_INT: pa.int64(), FLOAT: pa.float64()}

#: Parquet columns, in order (the README's Output section), from :data:`xcv_batch.layout.ROW_COLUMNS`. Extra metric columns may follow.
ROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in ROW_COLUMNS])


#: The chunks of an array that is not in OUT (a method added since): nothing written, nothing broken.
_NO_CHUNKS = ArrayChunks(per_object=1, ndim=4)

#: Ids and paths per chunk of their 1-D arrays: a million images are 16 chunks, each a few MB at most.
STRINGS_PER_CHUNK = 65536


def shard_file_name(first_index: int, last_index: int) -> str:
    return f"part-{first_index:08d}-{last_index:08d}.parquet"


class RunStore:
    """One output directory, local or any fsspec URL (s3://…): the :class:`xcv_batch.sink.OutputSink` of this
    package. Construct it through :func:`xcv_batch.sink.open_sink`."""

    def __init__(self, out: str, provenance: dict[str, str] | None = None):
        self.out = out.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.out)
        #: key-value metadata of every Parquet file this store commits (xcv_batch.provenance.run_provenance)
        self.provenance = dict(provenance or {})

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def zarr_url(self) -> str:
        return f"{self.out}/{ZARR_NAME}"

    def _open_group(self, mode: str) -> zarr.Group:
        return zarr.open_group(self.zarr_url, mode=mode)

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
    ) -> None:
        """Lay out OUT for a run, or check that a resumed run matches what is there (after
        :func:`xcv_batch.outdir.check_out`)."""
        layout = _Layout(fingerprint, image_ids, image_paths, resolution, methods, attrs, images_per_object)
        if resume and self.fs.exists(self._path(JOB_FILE)):
            if self.fs.exists(self._path(ZARR_NAME)):
                stored = stored_image_ids(self._open_group("r")) or []
                if stored != list(image_ids):
                    raise OutputError(
                        f"{self.out} was made from a different image list ({len(stored)} "
                        f"images, now {len(image_ids)}); the source changed since — use another --out"
                    )
                return
            # The maps are gone: verify_committed has set every shard with maps aside; lay the arrays out again.
            self._create_arrays(layout)
            return
        try:  # a disk that fills while OUT is laid out is one line, as one that fills while a shard is written
            self.fs.makedirs(self._path(METRICS_DIR), exist_ok=True)
            self._create_arrays(layout)
            # job.yaml last: its presence says the layout is complete.
            with self.fs.open(self._path(JOB_FILE), "w") as fh:
                fh.write(job_yaml)
        except OSError as err:
            raise OutputError(f"cannot write the layout of {self.out}: {first_line(err)}") from None

    def _create_arrays(self, layout: "_Layout") -> None:
        group = self._open_group("w")
        n, resolution, per_object = len(layout.image_ids), layout.resolution, layout.images_per_object
        image = (1, 3, resolution, resolution)
        for name in ("inputs", *layout.methods):
            group.create_array(
                name,
                shape=(n, 3, resolution, resolution),
                chunks=image,  # one image a chunk: readers fetch one image, shards own whole chunks
                # K images an object (Zarr's sharding codec); run shards start at multiples of K, so they own whole
                # objects. None keeps one object per image.
                shards=(per_object, *image[1:]) if per_object > 1 else None,
                dtype="float32",
                # zstd's own checksum (4 bytes a chunk): damage that still decodes is found by --resume --verify and
                # readers instead of read as wrong maps.
                compressors=ZstdCodec(level=0, checksum=True),
                fill_value=float("nan"),
                dimension_names=MAP_DIMENSIONS,
                # xarray: image_path is a coordinate (beside the image index), not a data variable
                attributes={"coordinates": IMAGE_PATH_ARRAY} if layout.image_paths is not None else None,
            )
        _write_strings(group, IMAGE_ARRAY, layout.image_ids)
        if layout.image_paths is not None:
            _write_strings(group, IMAGE_PATH_ARRAY, layout.image_paths)
        # The ids live in the arrays above, not here: attributes are read on every open and must stay small.
        group.attrs.update({"fingerprint": layout.fingerprint, **layout.attrs})
        self.consolidate()

    def consolidate(self) -> None:
        """Gather every array's metadata into the group's ``zarr.json``, so an open is one read (on S3: one request
        instead of one per array). The arrays' metadata never changes during a run; chunks are not metadata."""
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not in the v3 spec yet; zarr, xarray and this package read it.
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(self.zarr_url)

    def finish(self) -> None:
        """After the last shard: consolidate the metadata (also of an OUT laid out before this was done)."""
        if self.fs.exists(self._path(ZARR_NAME)):
            self.consolidate()

    def layout_images_per_object(self) -> int | None:
        """Images per object of the Zarr arrays already in OUT (None when there are none)."""
        if not self.fs.exists(self._path(ZARR_NAME)):
            return None
        group = self._open_group("r")
        if "inputs" not in group:
            return None
        shards = group["inputs"].shards
        return shards[0] if shards else 1

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

    def verify_committed(self, methods: Sequence[str], decode: bool = False) -> "CommitCheck":
        """For ``--resume``: the images of committed shards that are whole — every file readable, every ok row's map
        and input chunk present and of a size its codecs can write (:mod:`.chunks`), and with ``decode``
        (``--verify``) decodable too. A shard that fails is moved to ``metrics/_rejected/`` (kept, but no longer
        committed) so that its images run again; a chunk file that cannot be whole is removed, so that the rewrite of
        a partly recomputed object starts afresh."""
        arrays = ("inputs", *methods)
        chunks = {name: array_chunks(self.fs, self.root, name) for name in arrays}
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
            pairs = [(index, array) for index, method in ok for array in (method, "inputs")]
            problem = self._chunk_problem(name, pairs, chunks)
            if problem:
                check.reject(name, problem)
                continue
            committed[name] = (pairs, table.column("index").to_pylist())
            check.done.update(committed[name][1])
        if decode:
            self._reject_undecodable(committed, chunks, check)
        for name in check.rejected:
            self._set_aside(name)
        for array, found in chunks.items():
            for key in found.broken:
                self.fs.rm(self._path(ZARR_NAME, array, key))
        return check

    def _chunk_file(self, array: str, key: str) -> str:
        return f"{self.out}/{ZARR_NAME}/{array}/{key}"

    def _chunk_problem(self, name: str, pairs: list[tuple[int, str]], chunks: dict) -> str | None:
        """Why committed file ``name`` cannot stand, from its ok rows' chunks; None when every one is there."""
        broken = [(index, array) for index, array in pairs if index in chunks.get(array, _NO_CHUNKS).broken_images]
        if broken:
            index, array = broken[0]
            key = chunks[array].broken_images[index]
            return (f"{self.out}/{METRICS_DIR}/{name} commits {len(broken)} maps whose chunk file cannot be whole "
                    f"(first: {array} of image {index}, {self._chunk_file(array, key)} {chunks[array].broken[key]}); "
                    "recomputing its shard")
        missing = [(index, array) for index, array in pairs if index not in chunks.get(array, _NO_CHUNKS).written]
        if missing:
            index, array = missing[0]
            return (f"{self.out}/{METRICS_DIR}/{name} commits {len(missing)} maps that are missing from {ZARR_NAME} "
                    f"(first: {array} of image {index}); recomputing its shard")
        return None

    def _reject_undecodable(self, committed: dict[str, tuple[list[tuple[int, str]], list[int]]], chunks: dict,
                            check: "CommitCheck") -> None:
        """``--verify``: decode every committed ok image of every array (each once); a file whose rows point at a
        chunk that cannot be decoded is rejected, and its images leave ``check.done``."""
        wanted = sorted({pair for pairs, _ in committed.values() for pair in pairs}, key=lambda pair: pair[::-1])
        if not wanted:  # nothing committed with a map (or the maps are gone, and their shards already rejected)
            return
        group = self._open_group("r")
        failed: dict[tuple[int, str], str] = {}
        for index, array in wanted:
            try:  # each image on its own: one damaged chunk names its file and leaves the others to be checked
                group[array][index]
            except Exception as err:  # noqa: BLE001 - whatever a codec raises on damaged bytes, the chunk is unreadable
                failed[(index, array)] = f"cannot be decoded ({type(err).__name__}: {first_line(err)})"
        for name, (pairs, images) in committed.items():
            bad = [pair for pair in pairs if pair in failed]
            if not bad:
                continue
            index, array = bad[0]
            check.reject(name, f"{self.out}/{METRICS_DIR}/{name} commits {len(bad)} maps whose chunk cannot be "
                               f"decoded (first: {array} of image {index}, "
                               f"{self._chunk_file(array, chunks[array].key_of(index))} {failed[bad[0]]}); "
                               "recomputing its shard")
            check.done.difference_update(images)

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
    def open_arrays(self) -> "ShardWriter":  # an xcv_batch.sink.ArrayWriter
        return ShardWriter(self._open_group("r+"))

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


class ShardWriter:
    """Writes the images of one shard into the Zarr arrays; call :meth:`flush` before committing the shard's rows.

    With one image an object each image is written as it comes. With K images an object, writing one image would
    rewrite the whole object (read, merge, write: K times per object), so a sharded array's images are gathered per
    object and the object is written once, when all its images are in; :meth:`flush` writes what is left (objects
    with a failed image, or only partly this shard's after a resume), each run of consecutive images in one write,
    so images that are not this writer's are never touched.
    """

    def __init__(self, group: zarr.Group):
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._gathered: dict[tuple[str, int], dict[int, np.ndarray]] = {}  # (array, object) → image index → map

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        array = self._array(name)
        image = np.ascontiguousarray(values, dtype=np.float32)
        per_object = array.shards[0] if array.shards else 1
        if per_object == 1:
            self._store(name, index, image[None])
            return
        obj = index // per_object
        images = self._gathered.setdefault((name, obj), {})
        images[index] = image
        if len(images) == min(per_object, array.shape[0] - obj * per_object):
            self._write_gathered(name, obj)

    def flush(self) -> None:
        """Write every image still gathered."""
        for name, obj in list(self._gathered):
            self._write_gathered(name, obj)

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self.group[name]
        return array

    def _write_gathered(self, name: str, obj: int) -> None:
        images = self._gathered.pop((name, obj))
        for first, block in _consecutive_blocks(images):
            self._store(name, first, block)

    def _store(self, name: str, first: int, block: np.ndarray) -> None:
        try:
            self._array(name)[first: first + len(block)] = block
        except OSError as err:
            raise OutputError(f"cannot write {name} of image {first} to {ZARR_NAME}: {first_line(err)}") from None


def _consecutive_blocks(images: dict[int, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(first index, stacked maps) for each run of consecutive indices."""
    blocks: list[tuple[int, list[np.ndarray]]] = []
    previous = None
    for index in sorted(images):
        if previous is None or index != previous + 1:
            blocks.append((index, []))
        blocks[-1][1].append(images[index])
        previous = index
    return [(first, np.stack(maps)) for first, maps in blocks]


@dataclass(frozen=True)
class _Layout:
    """What the Zarr group is laid out from."""

    fingerprint: str
    image_ids: Sequence[str]
    image_paths: Sequence[str] | None
    resolution: int
    methods: Sequence[str]
    attrs: dict
    images_per_object: int


def _write_strings(group: zarr.Group, name: str, values: Sequence[str]) -> None:
    """A 1-D array of variable-length strings along the ``image`` dimension."""
    array = group.create_array(name, shape=(len(values),), chunks=(max(1, min(len(values), STRINGS_PER_CHUNK)),),
                               dtype=str, dimension_names=(MAP_DIMENSIONS[0],))
    if len(values):
        array[:] = np.asarray(list(values), dtype=object)


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

