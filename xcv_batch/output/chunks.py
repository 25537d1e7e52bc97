"""The chunk files of one Zarr v3 array, checked without decoding a map: which images they hold, and which files
cannot be whole.

One recursive listing per array gives every chunk file with its size (``fs.find``: local and s3 alike); folders
without a file count for nothing. What the size can prove depends on the array's codecs (its ``zarr.json``):

* uncompressed (``bytes``, optionally ``crc32c``): every chunk has the same size, so any other size is broken;
* compressed (``zstd``, ``gzip``, ``blosc``): the size depends on the values, so only a file shorter than the
  smallest frame the codec can write is certainly broken (zstd: 9 bytes; the default zstd has no content checksum,
  so a truncated or overwritten frame is found only by decoding it — ``--resume --verify``);
* sharded (``sharding_indexed``, ``output.images_per_object`` > 1): the shard index (16 bytes an inner chunk, then
  its crc32c, at the end of the object) is read — one small ranged read per object — and must pass its checksum,
  point inside the file and account for every byte of it: zarr writes an object's chunks back to back, so a
  truncated, extended or overwritten index is found exactly. Its entries also say which images the object holds.

Kept free of zarr imports (only ``google_crc32c``, which zarr's crc32c codec uses too), like :mod:`.layout`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass, field

import numpy as np
from fsspec.implementations.local import LocalFileSystem

#: An inner chunk that was never written: offset and length both 2**64 − 1 (the sharding codec's spec).
_EMPTY = 2**64 - 1
#: The fewest bytes each compressor can write. zstd: magic number (4) + frame header descriptor (1) + window
#: descriptor or frame content size (≥ 1) + one block header (3); gzip: its 10-byte header and 8-byte trailer;
#: blosc: its 16-byte header.
_SMALLEST_FRAME = {"zstd": 9, "gzip": 18, "blosc": 16}
#: Bytes a chunk of these Zarr v3 data types takes per element, uncompressed.
_ITEM_BYTES = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "uint32": 4,
               "float32": 4, "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16}


@dataclass(frozen=True)
class ArrayChunks:
    """What the chunk files of one array say: the images stored in files that passed the checks, and the files that
    cannot be whole (key under the array folder, e.g. ``c/1/0/0/0`` → why)."""

    per_object: int  # images per stored object (1 unless sharded)
    ndim: int
    written: frozenset[int] = frozenset()
    broken: dict[str, str] = field(default_factory=dict)
    broken_images: dict[int, str] = field(default_factory=dict)  # image → key of its broken file

    def key_of(self, index: int) -> str:
        """The key (under the array folder) of the file that holds image ``index``."""
        return chunk_key(index, self.per_object, self.ndim)


def chunk_key(index: int, per_object: int, ndim: int) -> str:
    """``c/O/0/0/0``: the object holding image ``index`` of an array chunked (or sharded) along images only."""
    return "/".join(["c", str(index // per_object), *["0"] * (ndim - 1)])


@dataclass(frozen=True)
class _SizeRule:
    """What a stored chunk's size can be: exactly ``exact`` bytes when known, else at least ``minimum``."""

    exact: int | None
    minimum: int
    codec: str  # named in messages

    def problem(self, size: int) -> str | None:
        if size == 0:
            return "is empty (0 bytes)"
        if self.exact is not None and size != self.exact:
            return f"has {size} bytes, not the {self.exact} that every {self.codec} chunk has"
        if size < self.minimum:
            return f"has {size} bytes, fewer than the smallest {self.codec} chunk ({self.minimum})"
        return None


def _size_rule(codecs: list, chunk_shape: list, data_type) -> _SizeRule:
    """The size rule of chunks encoded by ``codecs`` (a zarr.json codec list, sharding excluded)."""
    item = _ITEM_BYTES.get(data_type) if isinstance(data_type, str) else None
    exact = math.prod(chunk_shape) * item if item else None
    minimum, named = 1, "stored"
    for codec in codecs:
        name = codec.get("name") if isinstance(codec, dict) else None
        if name in ("bytes", "transpose"):
            continue
        if name == "crc32c":
            exact, minimum = (exact + 4 if exact is not None else None), minimum + 4
        elif name in _SMALLEST_FRAME:
            checksum = name == "zstd" and bool((codec.get("configuration") or {}).get("checksum"))
            exact, minimum, named = None, _SMALLEST_FRAME[name] + 4 * checksum, name
        else:  # a codec this check does not know: only an empty file is certainly broken
            exact, minimum, named = None, 1, str(name)
    return _SizeRule(exact, minimum, "uncompressed" if exact is not None else named)


@dataclass(frozen=True)
class _Sharding:
    """How to read one object's shard index."""

    entries_per_image_axis: tuple[int, ...]  # the grid of inner chunks in an object (C order in the index)
    inner_images: int  # images per inner chunk
    index_bytes: int
    at_end: bool
    crc: bool
    inner: _SizeRule


def _sharding(config: dict, grid: list[int], data_type) -> _Sharding | None:
    """The shard index layout of a ``sharding_indexed`` codec over objects of shape ``grid``, or None when its index
    codecs are not the plain little-endian bytes (optionally with crc32c) this check can read."""
    index_codecs = [c.get("name") if isinstance(c, dict) else c for c in config.get("index_codecs", [])]
    if index_codecs not in (["bytes"], ["bytes", "crc32c"]):
        return None
    if (config["index_codecs"][0].get("configuration") or {}).get("endian", "little") != "little":
        return None
    inner_shape = [int(n) for n in config["chunk_shape"]]
    inner_grid = tuple(o // i for o, i in zip(grid, inner_shape))
    crc = index_codecs[-1] == "crc32c"
    return _Sharding(
        entries_per_image_axis=inner_grid,
        inner_images=inner_shape[0],
        index_bytes=math.prod(inner_grid) * 16 + 4 * crc,
        at_end=config.get("index_location", "end") == "end",
        crc=crc,
        inner=_size_rule(config.get("codecs", []), inner_shape, data_type),
    )


def check_array(fs, folder: str) -> ArrayChunks:
    """The chunks of the Zarr v3 array in ``folder`` (a path of ``fs``), from one recursive listing and, when the
    array is sharded, each object's index. An array without readable metadata is read as one image an object, with
    no size checks (then an existing file counts as written)."""
    try:
        metadata = json.loads(fs.cat_file(f"{folder}/zarr.json"))
        shape = [int(n) for n in metadata["shape"]]
        grid = [int(n) for n in metadata["chunk_grid"]["configuration"]["chunk_shape"]]
        codecs = list(metadata.get("codecs") or [])
        data_type = metadata.get("data_type")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        shape, grid, codecs, data_type = [], [1], [], None
    ndim = max(len(grid), 1)
    per_object, n_images = grid[0], (shape[0] if shape else None)
    files = _chunk_files(fs, folder, ndim)
    if not shape:
        return ArrayChunks(1, ndim, frozenset(files))
    sharding_codec = next((c for c in codecs if isinstance(c, dict) and c.get("name") == "sharding_indexed"), None)
    if sharding_codec is None:
        return _check_chunks(files, _size_rule(codecs, grid, data_type), per_object, ndim, n_images)
    sharding = _sharding(sharding_codec.get("configuration") or {}, grid, data_type)
    if sharding is None:  # an index this check cannot read: every image of an existing object counts
        return _check_chunks(files, _SizeRule(None, 1, "stored"), per_object, ndim, n_images)
    return _check_shards(fs, files, sharding, per_object, ndim, n_images)


def _chunk_files(fs, folder: str, ndim: int) -> dict[int, tuple[str, int]]:
    """Object number → (file path, size) of every chunk file under ``folder/c`` (one recursive listing)."""
    prefix = f"{folder}/c"
    if isinstance(fs, LocalFileSystem):
        return _local_chunk_files(prefix, ndim)
    return _listed_chunk_files(fs, prefix, ndim)


def _listed_chunk_files(fs, prefix: str, ndim: int) -> dict[int, tuple[str, int]]:
    """:func:`_chunk_files` through the file system's recursive listing (object stores: one paged listing)."""
    fs.invalidate_cache(prefix)  # object stores cache listings; chunks may have been written since
    if not fs.exists(prefix):
        return {}
    found: dict[int, tuple[str, int]] = {}
    for path, info in fs.find(prefix, detail=True).items():
        parts = path[len(prefix):].strip("/").split("/")
        # c/O/0/0/0: maps are chunked along the image axis only; anything else is not a chunk of this layout
        if len(parts) != ndim or not all(p.isdigit() for p in parts) or any(p != "0" for p in parts[1:]):
            continue
        found[int(parts[0])] = (path, int(info.get("size") or 0))
    return found


def _local_chunk_files(prefix: str, ndim: int) -> dict[int, tuple[str, int]]:
    """:func:`_chunk_files` on a local disk: one listing of ``c/`` and one ``stat`` of each ``c/O/0/0/0``, instead of
    fsspec's walk through every folder (three a chunk) with a stat of each entry: a 100,000-image OUT stored one
    image an object has 400,000 folders and files per array."""
    tail = "/".join(["0"] * (ndim - 1))
    found: dict[int, tuple[str, int]] = {}
    try:
        entries = list(os.scandir(prefix))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for entry in entries:
        if not entry.name.isdigit():
            continue
        path = f"{prefix}/{entry.name}/{tail}" if tail else f"{prefix}/{entry.name}"
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(info.st_mode):
            found[int(entry.name)] = (path, info.st_size)
    return found


def _images_of(obj: int, per_object: int, n_images: int | None) -> range:
    first = obj * per_object
    return range(first, first + per_object if n_images is None else min(first + per_object, n_images))


def _check_chunks(files: dict[int, tuple[str, int]], rule: _SizeRule, per_object: int, ndim: int,
                  n_images: int | None) -> ArrayChunks:
    whole: list[int] = []
    broken: dict[str, str] = {}
    broken_images: dict[int, str] = {}
    for obj, (_, size) in files.items():
        problem = rule.problem(size)
        if problem is None:
            whole.append(obj)
            continue
        key = chunk_key(obj * per_object, per_object, ndim)
        broken[key] = problem
        broken_images.update(dict.fromkeys(_images_of(obj, per_object, n_images), key))
    images = np.asarray(whole, dtype=np.int64)[:, None] * per_object + np.arange(per_object, dtype=np.int64)
    return ArrayChunks(per_object, ndim, _image_set([images.ravel()], n_images), broken, broken_images)


def _image_set(images: list[np.ndarray], n_images: int | None) -> frozenset[int]:
    """The images of ``images`` (arrays of image numbers) below ``n_images``, as one set: built from one array, not
    updated image by image (a 1,000,000-image array holds as many)."""
    found = np.concatenate(images) if images else np.zeros(0, dtype=np.int64)
    if n_images is not None:
        found = found[found < n_images]
    return frozenset(found.tolist())


def _check_shards(fs, files: dict[int, tuple[str, int]], sharding: _Sharding, per_object: int, ndim: int,
                  n_images: int | None) -> ArrayChunks:
    written: list[np.ndarray] = []
    broken: dict[str, str] = {}
    broken_images: dict[int, str] = {}
    readable = {obj: (path, size) for obj, (path, size) in files.items() if size >= sharding.index_bytes}
    indices = {}
    if readable:
        objs = sorted(readable)
        paths = [readable[obj][0] for obj in objs]
        starts = [readable[obj][1] - sharding.index_bytes if sharding.at_end else 0 for obj in objs]
        ends = [start + sharding.index_bytes for start in starts]
        indices = dict(zip(objs, fs.cat_ranges(paths, starts, ends)))  # concurrent on object stores
    for obj, (_, size) in files.items():
        key = chunk_key(obj * per_object, per_object, ndim)
        if obj not in indices:
            problem, held = (f"has {size} bytes, fewer than its shard index ({sharding.index_bytes})"
                             if size else "is empty (0 bytes)"), None
        else:
            problem, held = _read_index(indices[obj], size, sharding)
        if problem is not None:
            broken[key] = problem
            broken_images.update(dict.fromkeys(_images_of(obj, per_object, n_images), key))
            continue
        written.append(obj * per_object + held)
    return ArrayChunks(per_object, ndim, _image_set(written, n_images), broken, broken_images)


def _read_index(index: bytes, size: int, sharding: _Sharding) -> tuple[str | None, np.ndarray]:
    """(why the object cannot be whole, or None; the images — relative to the object's first, sorted — it holds).
    The entries are checked as arrays; the first failing one, in entry order, is named as a loop over them would."""
    nothing = np.zeros(0, dtype=np.int64)
    entries = index[:-4] if sharding.crc else index
    if sharding.crc:
        import google_crc32c  # zarr's crc32c codec's own dependency

        if struct.pack("<I", google_crc32c.value(entries)) != index[-4:]:
            return "fails its shard index checksum (truncated or overwritten)", nothing
    data_start, data_end = (0, size - sharding.index_bytes) if sharding.at_end else (sharding.index_bytes, size)
    per_row = math.prod(sharding.entries_per_image_axis[1:])
    table = np.frombuffer(entries, dtype="<u8").reshape(-1, 2)
    offset, length = table[:, 0], table[:, 1]
    used = ~((offset == _EMPTY) & (length == _EMPTY))
    # offset + length > data_end without the uint64 sum (it can wrap): where offset > data_end the first term holds
    past = (offset < data_start) | (offset > data_end) | (length > np.uint64(data_end) - np.minimum(offset, data_end))
    rule = sharding.inner
    bad_size = length < max(rule.minimum, 1)
    if rule.exact is not None:
        bad_size |= length != rule.exact
    failing = np.flatnonzero(used & (past | bad_size))
    if len(failing):
        first = int(failing[0])
        if past[first]:
            return f"has {size} bytes, but its shard index points past them", nothing
        return f"holds an inner chunk that {rule.problem(int(length[first]))}", nothing
    total = int(length[used].sum(dtype=np.uint64)) if used.any() else 0
    if total != data_end - data_start:  # zarr writes an object's chunks back to back, then the index
        return f"has {size} bytes, but its shard index accounts for {total + sharding.index_bytes}", nothing
    rows = np.flatnonzero(used) // per_row  # ascending: a row's entries are adjacent (C order)
    rows = rows[np.concatenate(([True], rows[1:] != rows[:-1]))] if per_row > 1 and len(rows) else rows
    held = rows[:, None] * sharding.inner_images + np.arange(sharding.inner_images, dtype=np.int64)
    return None, held.ravel()
