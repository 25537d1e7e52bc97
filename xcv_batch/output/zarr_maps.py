"""The Zarr map format (``output.format: zarr``, the default): ``OUT/attributions.zarr``, one float32 array of
``(N, 3, H, W)`` per method and one for the model inputs, beside the 1-D ``image`` (ids) and ``image_path`` arrays
(``output.dtype: float16`` stores the maps as float16, ``output.channels: sum`` as ``(N, 1, H, W)``,
``output.inputs: false`` lays no ``inputs`` array out; readers return float32).

Layout: one image a chunk (readers fetch one image; shards own whole chunks), ``output.images_per_object`` images
per stored object (Zarr v3's sharding codec), NaN fill, zstd with its checksum, consolidated metadata. Shards start
at multiples of the images per object, so concurrent shards write whole objects and need no lock; a shard that dies
before its rows commit leaves objects that its retry overwrites byte for byte.

A map's chunk file (with one image an object), and a whole object of K images, are encoded and written here rather
than through zarr's array API (:class:`_ChunkFiles`): the same bytes (the layout's own codecs, checked per array; a
test compares the files), but tens of microseconds of CPU a map instead of the milliseconds zarr's per-call machinery
costs at small sizes. An object only partly this shard's still goes through zarr, which merges it.

``--resume`` asks :meth:`ZarrWriter.check` which committed maps are whole: the chunk files, their sizes and each
sharded object's index (:mod:`.chunks`, without decoding), and with ``--verify`` every committed map decoded.
"""

from __future__ import annotations

import os
import struct
import uuid
import warnings
from functools import cached_property
from typing import Iterable, NamedTuple, Sequence

import fsspec
import google_crc32c  # zarr's crc32c codec's own dependency
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from numcodecs import Zstd
from zarr.codecs import ZstdCodec

from ..errors import OutputError, cli_or_python, first_line
from .chunks import ArrayChunks, chunk_key
from .formats import MapLayout, MapUnreadable, StoredMaps
from .layout import IMAGE_ARRAY, IMAGE_PATH_ARRAY, MAP_DIMENSIONS, ZARR_NAME, array_chunks, stored_image_ids

#: The chunks of an array that is not in OUT (a method added since): nothing written, nothing broken.
_NO_CHUNKS = ArrayChunks(per_object=1, ndim=4)

#: Ids and paths per chunk of their 1-D arrays: a million images are 16 chunks, each a few MB at most.
STRINGS_PER_CHUNK = 65536


class ZarrWriter:
    """The Zarr group of one OUT (local or any fsspec URL), written (see the module docstring)."""

    folder = ZARR_NAME

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.out)
        self.url = f"{self.out}/{ZARR_NAME}"

    def _exists(self) -> bool:
        return self.fs.exists(f"{self.root}/{ZARR_NAME}")

    def _open_group(self, mode: str) -> zarr.Group:
        return zarr.open_group(self.url, mode=mode)

    def prepare(self, layout: MapLayout, resume: bool) -> None:
        if resume and self._exists():
            stored = stored_image_ids(self._open_group("r")) or []
            if stored != list(layout.image_ids):
                raise OutputError(
                    f"{self.out} was made from a different image list ({len(stored)} "
                    f"images, now {len(layout.image_ids)}); the source changed since — use another "
                    f"{cli_or_python('--out', 'out')}"
                )
            return
        # The maps are gone on a resume (the ledger has set every shard with maps aside): laid out again.
        group = self._open_group("w")
        n, resolution, per_object = len(layout.image_ids), layout.resolution, layout.images_per_object
        for name in layout.arrays:
            # output.channels: sum keeps a channel dimension of size 1, so readers and xarray see one layout
            image = (1, layout.channels_of(name), resolution, resolution)
            group.create_array(
                name,
                shape=(n, *image[1:]),
                chunks=image,  # one image a chunk: readers fetch one image, shards own whole chunks
                # K images an object (Zarr's sharding codec); run shards start at multiples of K, so they own whole
                # objects. None keeps one object per image.
                shards=(per_object, *image[1:]) if per_object > 1 else None,
                dtype=layout.dtype_of(name),  # output.dtype: the writer converts, readers return float32
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
            zarr.consolidate_metadata(self.url)

    def finish(self) -> None:
        """After the last shard: consolidate the metadata (also of an OUT laid out before this was done)."""
        if self._exists():
            self.consolidate()

    def images_per_object(self) -> int | None:
        if not self._exists():
            return None
        group = self._open_group("r")
        # any laid-out map array: the inputs are left out with output.inputs false, and every array has the same
        arrays = [name for name in group.array_keys() if name not in (IMAGE_ARRAY, IMAGE_PATH_ARRAY)]
        if not arrays:
            return None
        shards = group[arrays[0]].shards
        return shards[0] if shards else 1

    def open_shard(self) -> "ShardWriter":  # an xcv_batch.output.sink.ArrayWriter
        return ShardWriter(self._open_group("r+"), _ChunkFiles(self.fs, f"{self.root}/{ZARR_NAME}"))

    def check(self, arrays: Sequence[str]) -> "ZarrCheck":
        return ZarrCheck(self, arrays)

    def chunk_file(self, array: str, key: str) -> str:
        return f"{self.url}/{array}/{key}"


class ZarrCheck:
    """The chunk files of the arrays, listed once (:mod:`.chunks`: present, of a size their codecs can write, each
    sharded object's index whole), and with ``--verify`` the committed maps decoded."""

    def __init__(self, writer: ZarrWriter, arrays: Sequence[str]):
        self.writer = writer
        self.chunks = {name: array_chunks(writer.fs, writer.root, name) for name in arrays}
        self.failed: dict[tuple[int, str], str] = {}  # (image, array) → why it cannot be decoded

    def problem(self, maps: Sequence[tuple[int, str]]) -> str | None:
        chunks = self.chunks
        broken = [(index, array) for index, array in maps if index in chunks.get(array, _NO_CHUNKS).broken_images]
        if broken:
            index, array = broken[0]
            key = chunks[array].broken_images[index]
            return (f"{len(broken)} maps whose chunk file cannot be whole (first: {array} of image {index}, "
                    f"{self.writer.chunk_file(array, key)} {chunks[array].broken[key]})")
        missing = [(index, array) for index, array in maps if index not in chunks.get(array, _NO_CHUNKS).written]
        if missing:
            index, array = missing[0]
            return f"{len(missing)} maps that are missing from {ZARR_NAME} (first: {array} of image {index})"
        return None

    def decode(self, maps: Iterable[tuple[int, str]]) -> None:
        wanted = sorted(set(maps), key=lambda pair: pair[::-1])  # array by array, in chunk order
        if not wanted:  # nothing committed with a map (or the maps are gone, and their shards already rejected)
            return
        group = self.writer._open_group("r")
        for index, array in wanted:
            try:  # each image on its own: one damaged chunk names its file and leaves the others to be checked
                group[array][index]
            except Exception as err:  # noqa: BLE001 - whatever a codec raises on damaged bytes, the chunk is unreadable
                self.failed[(index, array)] = f"cannot be decoded ({type(err).__name__}: {first_line(err)})"

    def decode_problem(self, maps: Sequence[tuple[int, str]]) -> str | None:
        bad = [pair for pair in maps if pair in self.failed]
        if not bad:
            return None
        index, array = bad[0]
        return (f"{len(bad)} maps whose chunk cannot be decoded (first: {array} of image {index}, "
                f"{self.writer.chunk_file(array, self.chunks[array].key_of(index))} {self.failed[bad[0]]})")

    def clean(self) -> None:
        """Remove the chunk files that cannot be whole: the rewrite of a partly recomputed object starts afresh."""
        for array, found in self.chunks.items():
            for key in found.broken:
                self.writer.fs.rm(f"{self.writer.root}/{ZARR_NAME}/{array}/{key}")


class ShardWriter:
    """Writes the images of one shard into the Zarr arrays; call :meth:`flush` before committing the shard's rows.

    With one image an object each image's chunk file is written as it comes (by :class:`_ChunkFiles` when the
    array's codecs are the layout's, else through zarr). With K images an object, writing one image would rewrite
    the whole object (read, merge, write: K times per object), so a sharded array's images are gathered per object
    and the object is written once, when all its images are in; :meth:`flush` writes what is left (objects with a
    failed image, or only partly this shard's after a resume), each run of consecutive images in one write, so
    images that are not this writer's are never touched.
    """

    def __init__(self, group: zarr.Group, files: "_ChunkFiles | None" = None):
        self.group = group
        self.files = files
        self._arrays: dict[str, _Array] = {}
        self._gathered: dict[tuple[str, int], dict[int, np.ndarray]] = {}  # (array, object) → image index → map

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        array = self._array(name)
        image = _stored(values, array.channels, array.dtype)
        if array.per_object == 1:
            if array.codec is None:
                self._store(name, index, image[None])
            else:
                self._write_chunk(name, index, image, array.codec)
            return
        obj = index // array.per_object
        images = self._gathered.setdefault((name, obj), {})
        images[index] = image
        if len(images) == min(array.per_object, array.n_images - obj * array.per_object):
            self._write_gathered(name, obj)

    def flush(self) -> None:
        """Write every image still gathered."""
        for name, obj in list(self._gathered):
            self._write_gathered(name, obj)

    def _array(self, name: str) -> "_Array":
        """What the writes need of array ``name``, read from zarr once (its properties are recomputed on each use)."""
        array = self._arrays.get(name)
        if array is None:
            opened = self.group[name]
            array = self._arrays[name] = _Array(
                opened, opened.shards[0] if opened.shards else 1, opened.shape[0], opened.shape[1],
                np.dtype(opened.dtype), _chunk_compressor(opened) if self.files is not None else None)
        return array

    def _write_gathered(self, name: str, obj: int) -> None:
        images = self._gathered.pop((name, obj))
        array = self._array(name)
        if array.codec is not None and len(images) == array.per_object:  # every image of the object: written whole
            self._write_object(name, obj, [images[index] for index in sorted(images)], array.codec)
            return
        for first, block in _consecutive_blocks(images):
            self._store(name, first, block)

    def _store(self, name: str, first: int, block: np.ndarray) -> None:
        try:
            self._array(name).zarr[first: first + len(block)] = block
        except OSError as err:
            raise OutputError(f"cannot write {name} of image {first} to {ZARR_NAME}: {first_line(err)}") from None

    def _write_chunk(self, name: str, index: int, image: np.ndarray, codec: Zstd) -> None:
        self._put(name, index, chunk_key(index, 1, image.ndim + 1), _encoded(image, codec))

    def _write_object(self, name: str, obj: int, images: list[np.ndarray], codec: Zstd) -> None:
        """Object ``obj`` of K images as zarr's sharding codec writes it: the non-empty chunks back to back in image
        order (the Morton order of a grid that is K×1×1×1), then the index (offset, length as little-endian uint64 per
        image; 2**64 − 1 twice for an empty one) and its crc32c."""
        index = np.full((len(images), 2), _EMPTY, dtype="<u8")
        chunks, offset = [], 0
        for i, image in enumerate(images):
            chunk = _encoded(image, codec)
            if chunk is not None:
                index[i] = offset, len(chunk)
                chunks.append(chunk)
                offset += len(chunk)
        entries = index.tobytes()
        data = b"".join([*chunks, entries, struct.pack("<I", google_crc32c.value(entries))]) if chunks else None
        first = obj * len(images)
        self._put(name, first, chunk_key(first, len(images), images[0].ndim + 1), data)

    def _put(self, name: str, index: int, key: str, data: bytes | None) -> None:
        try:
            if data is None:  # zarr's rule for a chunk equal to the fill value (write_empty_chunks off): no file
                self.files.remove(f"{name}/{key}")
            else:
                self.files.put(f"{name}/{key}", data)
        except OSError as err:
            raise OutputError(f"cannot write {name} of image {index} to {ZARR_NAME}: {first_line(err)}") from None


#: An index entry of an object's chunk that is not stored (the sharding codec's spec).
_EMPTY = 2**64 - 1


def _object_chunks(fh, path: str, per_object: int, wanted: dict[int, int]) -> dict[int, bytes]:
    """key → the stored bytes of inner chunk ``wanted[key]`` of the sharded object open in ``fh`` (left out when not
    stored): its index (checked against its crc32c), then the chunks (:func:`_read_spans`)."""
    fh.seek(-(per_object * 16 + 4), os.SEEK_END)
    index = fh.read(per_object * 16 + 4)
    if struct.pack("<I", google_crc32c.value(index[:-4])) != index[-4:]:
        raise ValueError(f"{path}: its shard index fails its checksum")
    entries = np.frombuffer(index[:-4], dtype="<u8").reshape(per_object, 2)
    return _read_spans(fh, {key: (int(entries[chunk, 0]), int(entries[chunk, 1])) for key, chunk in wanted.items()
                            if entries[chunk, 0] != _EMPTY})


def _read_spans(fh, spans: dict[int, tuple[int, int]]) -> dict[int, bytes]:
    """key → the bytes at (offset, length) of ``fh``, chunks that lie back to back read in one go (a page in index
    order is one read) and no byte between them read."""
    found: dict[int, bytes] = {}
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    first = 0
    while first < len(ordered):
        last = first
        while last + 1 < len(ordered) and ordered[last + 1][1][0] == sum(ordered[last][1]):
            last += 1
        start = ordered[first][1][0]
        fh.seek(start)
        blob = fh.read(sum(ordered[last][1]) - start)
        for key, (offset, length) in ordered[first:last + 1]:
            found[key] = blob[offset - start:offset - start + length]
        first = last + 1
    return found


def _encoded(image: np.ndarray, codec: Zstd) -> bytes | None:
    """One stored map's chunk bytes (raw little-endian, then zstd); None when it is all NaN, the fill value."""
    if np.isnan(image).all():
        return None
    return bytes(codec.encode(image.astype(image.dtype.newbyteorder("<"), copy=False).tobytes()))


class _ChunkFiles:
    """Chunk files under one Zarr group, written whole or not at all: locally to a temporary name then renamed (as
    zarr's local store does), elsewhere by one put of the whole object (object stores land it whole)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self.fs, self.root = fs, root
        self.local = isinstance(fs, LocalFileSystem)
        self._folders: set[str] = set()

    def put(self, key: str, data: bytes) -> None:
        path = f"{self.root}/{key}"
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        temporary = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(temporary, "wb") as fh:
                fh.write(data)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def remove(self, key: str) -> None:
        path = f"{self.root}/{key}"
        if self.local:
            if os.path.exists(path):
                os.unlink(path)
        elif self.fs.exists(path):
            self.fs.rm_file(path)


#: The codecs of a chunk that :class:`_ChunkFiles` writes (the layout's: raw little-endian bytes, then zstd), as the
#: array's zarr.json names them; any other array is written through zarr.
_BYTES_LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}
_DEFAULT_KEYS = {"name": "default", "configuration": {"separator": "/"}}
#: The index of a sharded object as the layout writes it (at the end, with its crc32c).
_INDEX_CODECS = [_BYTES_LITTLE, {"name": "crc32c"}]


def _chunk_compressor(array: zarr.Array) -> Zstd | None:
    """The zstd compressor of ``array``'s chunks when its files can be written directly: one image a chunk, keys
    ``c/i/0/0/0``, NaN fill, chunk codecs bytes (little-endian) then zstd, and when sharded the index at the end with
    its crc32c. None: write it through zarr."""
    metadata = array.metadata.to_dict()
    codecs = list(metadata.get("codecs") or [])
    image = [1, *array.shape[1:]]
    if list(array.chunks) != image or metadata.get("chunk_key_encoding") != _DEFAULT_KEYS or not np.isnan(
            array.fill_value):
        return None
    if array.shards is not None:
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        sharding = codecs[0].get("configuration") or {}
        if (list(sharding.get("chunk_shape", [])) != image
                or list(sharding.get("index_codecs", [])) != _INDEX_CODECS or sharding.get("index_location") != "end"
                or list(array.shards) != [array.shards[0], *image[1:]]):
            return None
        codecs = list(sharding.get("codecs") or [])
    if len(codecs) != 2 or codecs[0] != _BYTES_LITTLE or codecs[1].get("name") != "zstd":
        return None
    config = codecs[1].get("configuration") or {}
    return Zstd(level=config.get("level", 0), checksum=config.get("checksum", False))


class _Array(NamedTuple):
    """One array as :class:`ShardWriter` writes it."""

    zarr: zarr.Array
    per_object: int  # images per stored object
    n_images: int
    channels: int
    dtype: np.dtype
    codec: Zstd | None  # its chunks' compressor when written as files; None: through zarr


def _stored(values: np.ndarray, channels: int, dtype: np.dtype) -> np.ndarray:
    """One image's float32 ``(3, H, W)`` map as an array of ``channels`` and ``dtype`` stores it: summed over the
    channels when it has one (``output.channels: sum``; summed in float32, as the metrics see the map), then in its
    dtype (``output.dtype``). Only here: the metrics are computed on the maps as computed, before they are stored."""
    image = np.asarray(values, dtype=np.float32)
    if channels == 1 and image.shape[0] != 1:
        image = image.sum(axis=0, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(image, dtype=dtype)


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


def _write_strings(group: zarr.Group, name: str, values: Sequence[str]) -> None:
    """A 1-D array of variable-length strings along the ``image`` dimension."""
    array = group.create_array(name, shape=(len(values),), chunks=(max(1, min(len(values), STRINGS_PER_CHUNK)),),
                               dtype=str, dimension_names=(MAP_DIMENSIONS[0],))
    if len(values):
        array[:] = np.asarray(list(values), dtype=object)


class ZarrReader:
    """The Zarr group of one OUT, read: its consolidated metadata, when a run wrote it, makes the open one read; maps
    written after it are found all the same (chunks are not metadata)."""

    folder = ZARR_NAME

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.out)
        self._arrays: dict[str, zarr.Array] = {}
        self._codecs: dict[str, Zstd | None] = {}

    @cached_property
    def group(self) -> zarr.Group | None:
        if not self.fs.exists(f"{self.root}/{ZARR_NAME}"):
            return None
        return zarr.open_group(store=f"{self.out}/{ZARR_NAME}", mode="r")

    def _array(self, name: str) -> zarr.Array:
        """Array ``name``, opened once (its metadata is fixed when the run lays it out; a page reads six arrays, and
        opening one costs milliseconds). A KeyError when it is not there."""
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self.group[name]
        return array

    def exists(self) -> bool:
        return self.group is not None

    def attrs(self) -> dict:
        return dict(self.group.attrs) if self.group is not None else {}

    def image_ids(self) -> list[str] | None:
        return stored_image_ids(self.group) if self.group is not None else None

    def has_array(self, name: str) -> bool:
        try:
            self._array(name)
        except (KeyError, TypeError):
            return False
        return True

    def read(self, name: str, index: int) -> np.ndarray:
        array = self._array(name)
        try:
            return np.asarray(array[index], dtype=np.float32)  # float16 maps are returned as float32
        except Exception as err:  # noqa: BLE001 - whatever the codecs raise on damaged bytes, the chunk is unreadable
            key = chunk_key(index, array.shards[0] if array.shards else 1, array.ndim)
            raise MapUnreadable(f"{self.out}/{ZARR_NAME}/{name}/{key}",
                                f"{type(err).__name__}: {first_line(err)}") from None

    def read_many(self, name: str, indices: Sequence[int]) -> np.ndarray:
        """The maps of several images, ``(len(indices), C, H, W)`` float32, fetched together: from a local OUT laid out
        as this module writes it, each object's wanted chunks in one read and decoded here (:meth:`_read_direct`);
        else through zarr, which reads the chunks concurrently. A damaged chunk: the :class:`MapUnreadable` that
        :meth:`read` names it with."""
        wanted = np.asarray(indices, dtype=np.int64)
        unique, where = np.unique(wanted, return_inverse=True)
        codec = self._direct_codec(name) if len(unique) else None
        if codec is not None:
            try:
                return self._read_direct(name, codec, unique)[where]
            except Exception:  # noqa: BLE001 - a damaged object: zarr reads it again, and the chunk read alone is named
                pass
        try:
            array = self._array(name)
            contiguous = len(unique) and unique[-1] - unique[0] == len(unique) - 1  # a page in index order
            values = array[int(unique[0]):int(unique[-1]) + 1] if contiguous else \
                array.get_orthogonal_selection((unique,))
        except Exception:  # noqa: BLE001 - which chunk: the one read alone says
            for index in unique:
                self.read(name, int(index))
            raise
        return np.asarray(values, dtype=np.float32)[where]

    def _direct_codec(self, name: str) -> Zstd | None:
        """The zstd codec of array ``name`` when its chunk files can be read here: a local OUT, laid out as
        :func:`_chunk_compressor` describes (what this module writes itself). None: read through zarr."""
        if name not in self._codecs:
            self._codecs[name] = (_chunk_compressor(self._array(name)) if isinstance(self.fs, LocalFileSystem)
                                  else None)
        return self._codecs[name]

    def _read_direct(self, name: str, codec: Zstd, indices: np.ndarray) -> np.ndarray:
        """The maps of ``indices`` (sorted, unique), read from their files. zarr's sharding codec reads an object's
        inner chunks one request after another, a thread hand-off each: most of the time of a page of small maps.
        Here an object's index is one read, and its wanted chunks one more for each run of them that lies back to
        back (no other image's bytes are read). NaN where nothing is stored (the fill value). Any damage raises (the
        caller reads through zarr, which names it)."""
        array = self._array(name)
        shape, dtype = tuple(array.shape[1:]), np.dtype(array.dtype).newbyteorder("<")
        per_object = array.shards[0] if array.shards else 1
        found = np.full((len(indices), *shape), np.nan, dtype=np.float32)
        objects = indices // per_object
        for obj in np.unique(objects):
            positions = np.flatnonzero(objects == obj)
            path = f"{self.root}/{ZARR_NAME}/{name}/{chunk_key(int(obj) * per_object, per_object, len(shape) + 1)}"
            try:
                fh = open(path, "rb")
            except FileNotFoundError:  # never written: the fill value
                continue
            inner = (indices[positions] - obj * per_object).tolist()  # the images' chunks within the object
            with fh:
                chunks = ({int(positions[0]): fh.read()} if per_object == 1 else
                          _object_chunks(fh, path, per_object, dict(zip(positions.tolist(), inner))))
            for position, chunk in chunks.items():
                found[position] = np.frombuffer(codec.decode(chunk), dtype=dtype).reshape(shape)
        return found

    def stored(self, name: str) -> StoredMaps:
        chunks = array_chunks(self.fs, self.root, name)
        return StoredMaps(chunks.written, {index: f"{self.out}/{ZARR_NAME}/{name}/{key} {chunks.broken[key]}"
                                           for index, key in chunks.broken_images.items()})
