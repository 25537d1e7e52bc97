"""Images packed into bigger files: WebDataset-style tar shards and Parquet files with an ``image`` bytes column.

Both are read where they lie, never extracted: listing reads a tar's member headers (names, offsets, sizes, and the
small ``.cls`` labels) or a Parquet file's footer and ``label`` column; the reader then fetches one image's bytes, a
range read of ``size`` bytes at ``offset`` for a tar member, one row group's ``image`` column for a Parquet row
(kept for the next rows, which the run's id order reads next). Local paths go through ``open``, URLs through fsspec.

A record's ``path`` says where its bytes are, ``<shard>#<member>@<offset>+<size>`` or ``<file>#<row group>/<row>``,
and its ``image_id`` is stable, ``<shard>/<key>`` or ``<file>/<row>`` (relative to the folder the pattern starts
in), so seeds do not depend on how the shards are split among workers. Torch- and PIL-free, like
:mod:`xcv_batch.data.sources`.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import tarfile
import threading
from typing import Iterator

from ..errors import DataError
from .sources import IMAGE_EXTENSIONS, ImageRecord, _as_label, is_url, list_files

TAR_READER = ".packed:read_tar_member"
# Written into each record rather than the spec: a Parquet file without image bytes is a manifest of files.
PARQUET_READER = ".packed:read_parquet_row"

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` lists alternatives."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    inside, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numbers = _RANGE.match(inside)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in inside:
        choices = inside.split(",")
    else:
        raise DataError(f"data.source {pattern}: write a brace range as {{000..099}} or a list as {{a,b}}")
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _files(source: str) -> tuple[list[str], str]:
    """The files ``source`` names (braces expanded, local paths made absolute) and the folder ids are relative to."""
    location = source if is_url(source) else os.path.abspath(os.path.expanduser(source))
    fixed = location.split("{", 1)[0]
    folder = fixed.rsplit("/", 1)[0] if "/" in fixed else ""
    return expand_braces(location), folder


def _relative(path: str, folder: str) -> str:
    return path[len(folder) + 1:] if folder and path.startswith(folder + "/") else path


_TAR_PATH = re.compile(r"\.tar#.+@\d+\+\d+$", re.IGNORECASE)
_PARQUET_PATH = re.compile(r"\.parquet#\d+/\d+$", re.IGNORECASE)


def reader_of(path: str) -> str:
    """The reader of an ``image_path`` this module wrote ("" for any other path): what reads an image again from the
    rows alone, where the records are gone."""
    if _TAR_PATH.search(path):
        return TAR_READER
    if _PARQUET_PATH.search(path):
        return PARQUET_READER
    return ""


def _open(path: str):
    """Local paths with ``open``, URLs with fsspec; the reader's failures stay ``OSError`` (that image's error rows)."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _open_listed(path: str):
    try:
        return _open(path)
    except (OSError, ValueError, ImportError) as err:
        raise DataError(f"data.source: cannot read {path}: {err}") from err


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's grouping: the key is the member name up to the first dot of its last component."""
    while name.startswith("./"):  # tar run in the folder itself writes ./0001.jpg
        name = name[2:]
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + extension).lower()


# ---------------------------------------------------------------------------------------------------------------
# Tar shards
# ---------------------------------------------------------------------------------------------------------------


def list_tar(source: str) -> Iterator[ImageRecord]:
    """Every key of every shard that has an image member; its ``.cls`` member, when there is one, is its label."""
    shards, folder = _files(source)
    for shard in shards:
        yield from _list_shard(shard, _relative(shard, folder))


def _list_shard(shard: str, shard_id: str) -> Iterator[ImageRecord]:
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int | None] = {}
    with _open_listed(shard) as handle:
        try:
            # Plain (uncompressed) tar only: a member's bytes must sit at a fixed offset for the range read.
            with tarfile.open(fileobj=handle, mode="r:") as archive:
                for member in archive:
                    if not member.isfile() or posixpath.basename(member.name).startswith("."):
                        continue
                    key, extension = _split_key(member.name)
                    if extension == ".cls":
                        text = archive.extractfile(member).read().decode("utf-8", "replace")
                        labels[key] = _as_label(text, shard, f"member {member.name}")
                    elif "." + extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                        if key in images:
                            raise DataError(f"data.source: shard {shard} has two images for key '{key}' "
                                            f"({images[key][0]} and {member.name}); keep one image a key")
                        images[key] = (member.name, member.offset_data, member.size)
        except tarfile.TarError as err:
            raise DataError(f"data.source: {shard} is not a readable uncompressed tar file ({err})") from err
    if not images:
        raise DataError(f"data.source: shard {shard} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    for key, (name, offset, size) in images.items():
        yield ImageRecord(f"{shard_id}/{key}", f"{shard}#{name}@{offset}+{size}", labels.get(key))


def read_tar_member(path: str) -> bytes:
    """``<shard>#<member>@<offset>+<size>`` → that member's bytes, one range read."""
    shard, _, where = path.rpartition("#")
    offset, size = (int(n) for n in where.rpartition("@")[2].split("+"))
    if is_url(shard):
        import fsspec

        fs, stripped = fsspec.core.url_to_fs(shard)
        data = fs.cat_file(stripped, start=offset, end=offset + size)
    else:
        with open(shard, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{shard} ended {size - len(data)} bytes early inside {where}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Parquet files with image bytes
# ---------------------------------------------------------------------------------------------------------------




def list_parquet(source: str) -> Iterator[ImageRecord]:
    """One record a row of a Parquet file whose ``image`` column is a struct with ``bytes`` (and ``path``), as
    Hugging Face ``datasets`` writes images; a Parquet file without one is a manifest (a ``path`` column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, folder = _files(source)
    if "{" not in source and not _holds_image_bytes(files[0]):
        yield from list_files(source)  # a manifest, or a file that is none: the manifest's checks say so
        return
    for file in files:
        with _open_listed(file) as handle:
            try:
                parquet = pq.ParquetFile(handle)  # reads the footer only
                schema = parquet.schema_arrow
                if not _has_image_bytes(schema):
                    raise DataError(f"data.source: {file} has no 'image' column of bytes; each file of a brace "
                                    "pattern must hold images (an 'image' struct column with 'bytes')")
                labels = (parquet.read(columns=["label"]).column("label").to_pylist()
                          if "label" in schema.names else [None] * parquet.metadata.num_rows)
                row_groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"data.source: cannot read {file} as Parquet: {err}") from err
        file_id = _relative(file, folder)
        width = max(6, len(str(len(labels) - 1)))
        row = 0
        for group, count in enumerate(row_groups):
            for inside in range(count):
                label = _as_label(labels[row], file, f"row {row}")
                yield ImageRecord(f"{file_id}/{row:0{width}d}", f"{file}#{group}/{inside}", label,
                                  reader=PARQUET_READER)
                row += 1


def _holds_image_bytes(file: str) -> bool:
    """Whether ``file`` is a Parquet file with an ``image`` bytes column, from its footer alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _open(file) as handle:
            return _has_image_bytes(pq.read_schema(handle))
    except (pa.ArrowInvalid, OSError, ValueError, ImportError):
        return False


def _has_image_bytes(schema) -> bool:
    import pyarrow as pa

    if "image" not in schema.names:
        return False
    kind = schema.field("image").type
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def read_parquet_row(path: str) -> bytes:
    """``<file>#<row group>/<row>`` → that row's image bytes (or the file its ``image.path`` names, when ``bytes``
    is empty, relative to the Parquet file's folder)."""
    file, _, where = path.rpartition("#")
    group, row = (int(n) for n in where.split("/"))
    try:
        data, named = _row_group_images(file, group)[row]
    except IndexError as err:
        raise ValueError(f"{file} has no row {row} in row group {group}: the file changed after it was listed") from err
    if data is not None:
        return data
    if not named:
        raise ValueError(f"row {row} of row group {group} of {file} has neither image bytes nor an image path")
    if not is_url(named) and not os.path.isabs(named):
        named = posixpath.join(file.rsplit("/", 1)[0], named) if is_url(file) else os.path.join(
            os.path.dirname(file), named)
    with _open(named) as handle:
        return handle.read()


_ROW_GROUPS_LOCK = threading.Lock()


def _row_group_images(file: str, group: int) -> list[tuple[bytes | None, str | None]]:
    # Decoding threads ask for neighbouring rows at once: one of them reads the row group, the others wait for it.
    # A local file's size and time are part of the key, so a file rewritten in the same process is read again.
    version = None if is_url(file) else (os.stat(file).st_mtime_ns, os.stat(file).st_size)
    with _ROW_GROUPS_LOCK:
        return _read_row_group(file, group, version)


@functools.lru_cache(maxsize=2)
def _read_row_group(file: str, group: int, version: object) -> list[tuple[bytes | None, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open(file) as handle:
        try:
            column = pq.ParquetFile(handle).read_row_group(group, columns=["image"]).column("image")
        except (pa.ArrowException, IndexError) as err:  # not OSError: a damaged or changed file
            raise ValueError(f"cannot read row group {group} of {file}: {err}") from err
    images = column.combine_chunks()
    data = images.field("bytes").to_pylist()
    names = images.field("path").to_pylist() if images.type.get_field_index("path") >= 0 else [None] * len(data)
    return list(zip(data, names))
