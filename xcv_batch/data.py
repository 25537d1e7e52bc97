"""Image sources, decoding and preprocessing.

Three steps, each usable alone:

* :func:`list_images` turns ``data.source`` (a folder, a glob, a ``.txt``/``.csv``/``.parquet`` manifest, an
  ``s3://``-style URL of any of those, or ``builtin:skimage``) into :class:`ImageRecord` s sorted by id. It never
  opens the images: a file that cannot be decoded is listed and fails later, as that image's error rows.
* :func:`decode_image` reads one file into an 8-bit RGB ``PIL.Image`` (EXIF orientation applied, first frame,
  every pixel mode converted); any failure becomes an :class:`ImageError` that names the reason in plain words.
* :func:`preprocess` is torchvision's ``ImageClassification`` transform without its normalisation (the worker
  normalises on the device). :func:`load_image` chains the last two; :func:`decode_many` runs it on a thread pool
  so the next batch decodes while the model works.
* :func:`load_mask` reads a ground-truth object mask (a manifest's optional ``mask_path`` column) through the same
  resize and centre crop as its image, so mask pixels line up with attribution pixels.

Local paths go through ``os``/``open`` and never need fsspec; URLs (anything with ``://``) go through fsspec.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import importlib.util
import io
import math
import os
import posixpath
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from .errors import DataError, ImageError
from .model import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")

# The natural photographs among scikit-image's bundled files (no text, phantoms, chessboards, textures, silhouettes).
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")

# Resizing the short side of a very elongated image makes its long side huge (a 100000×2 strip at 256 px would be
# 3.3 G pixels) before the centre crop throws nearly all of it away; refuse instead of running out of memory.
MAX_RESIZED_PIXELS = 1 << 26

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset.

    ``image_id``: the path relative to the source folder (manifest folder, glob prefix), posix separators; stable
    across machines, so seeds and output rows derived from it are too. ``path``: absolute local path or URL.
    """

    image_id: str
    path: str
    label: int | None = None
    mask_path: str | None = None  # ground-truth object mask (manifest column ``mask_path``), absolute path or URL


def is_url(path: str) -> bool:
    return bool(_URL.match(path))


# ---------------------------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------------------------


def _skimage_photos() -> list[ImageRecord]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise DataError("data.source 'builtin:skimage' needs scikit-image: pip install scikit-image")
    folder = os.path.join(os.path.dirname(spec.origin), "data")
    records = [
        ImageRecord(name, os.path.join(folder, name))
        for name in SKIMAGE_PHOTOS
        if os.path.isfile(os.path.join(folder, name))
    ]
    if not records:
        raise DataError(f"data.source 'builtin:skimage': none of {', '.join(SKIMAGE_PHOTOS)} is in {folder}")
    return records


# Named datasets that ship with installed packages: handy for smoke runs without any data of one's own.
BUILTIN_SOURCES: Mapping[str, Callable[[], list[ImageRecord]]] = {"builtin:skimage": _skimage_photos}

_SOURCE_KINDS = "a folder, a glob pattern, a .txt/.csv/.parquet manifest, or " + ", ".join(BUILTIN_SOURCES)


def list_images(source: str, limit: int | None = None) -> list[ImageRecord]:
    """The images of ``source`` sorted by ``image_id``; ``limit`` keeps the first N of that order."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"data.limit must be a positive integer or null, not {limit!r}")
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise DataError(f"data.source '{source}' is not a builtin source; use one of {', '.join(BUILTIN_SOURCES)}")
        records = BUILTIN_SOURCES[source]()
    else:
        records = _list_path_source(source)
    records = sorted(records, key=lambda record: record.image_id)
    return records[:limit] if limit is not None else records


def _list_path_source(source: str) -> list[ImageRecord]:
    files = _RemoteFiles(source) if is_url(source) else _LocalFiles()
    location = source if is_url(source) else os.path.abspath(os.path.expanduser(source))

    if files.isdir(location):
        records = [
            ImageRecord(files.relative(path, location), path)
            for path in files.find(location)
            if _has_image_extension(path)
        ]
        if not records:
            raise DataError(
                f"data.source: no images found in folder {source} (searched recursively for "
                f"{' '.join(IMAGE_EXTENSIONS)}, hidden files skipped); point it at the folder that holds the images"
            )
        return records

    if files.exists(location):
        extension = _extension(location)
        if extension in MANIFEST_EXTENSIONS:
            return _read_manifest(files, location, extension)
        if extension in IMAGE_EXTENSIONS:
            return [ImageRecord(posixpath.basename(location.replace(os.sep, "/")), location)]
        raise DataError(f"data.source {source} is a file but not a manifest or an image; give {_SOURCE_KINDS}")

    if globlib.has_magic(location):
        prefix = _glob_prefix(location)
        if not files.isdir(prefix):
            raise DataError(f"data.source {source}: the pattern's folder {prefix} does not exist")
        records = [
            ImageRecord(files.relative(path, prefix), path)
            for path in files.glob(location)
            if _has_image_extension(path)
        ]
        if not records:
            raise DataError(f"data.source: the pattern {source} matched no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return records

    raise DataError(f"data.source {source} does not exist; give {_SOURCE_KINDS}")


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _has_image_extension(path: str) -> bool:
    return _extension(path) in IMAGE_EXTENSIONS


def _glob_prefix(pattern: str) -> str:
    """The folder made of the pattern's leading components without wildcards: ids are relative to it."""
    head, sep, rest = pattern.partition("://")
    if not sep:
        head, rest = "", pattern
    parts = rest.split("/")
    fixed = []
    for part in parts[:-1]:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    folder = "/".join(fixed) or ("/" if rest.startswith("/") else "")
    return f"{head}://{folder}" if sep else folder


def _read_manifest(files: "_LocalFiles | _RemoteFiles", manifest: str, extension: str) -> list[ImageRecord]:
    if extension == ".txt":
        entries = _txt_entries(files, manifest)
    else:
        entries = _table_entries(files, manifest, extension)
    folder = files.dirname(manifest)
    records: list[ImageRecord] = []
    seen: dict[str, str] = {}
    for where, entry, label, mask_entry in entries:
        path = files.resolve(entry, folder)
        image_id = files.relative(path, folder)
        if image_id in seen:
            raise DataError(
                f"data.source: manifest {manifest} lists image '{image_id}' twice ({seen[image_id]} and {where}); "
                "remove the duplicate"
            )
        seen[image_id] = where
        mask_path = files.resolve(mask_entry, folder) if mask_entry is not None else None
        records.append(ImageRecord(image_id, path, label, mask_path))
    if not records:
        raise DataError(f"data.source: manifest {manifest} lists no images; add one path a line (or a 'path' column)")
    return records


def _txt_entries(files, manifest: str) -> list[tuple[str, str, int | None, str | None]]:
    with files.open(manifest) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"data.source: manifest {manifest} is not UTF-8 text ({err}); save it as UTF-8") from err
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((f"line {number}", line, None, None))
    return entries


def _table_entries(files, manifest: str, extension: str) -> list[tuple[str, str, int | None, str | None]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        with files.open(manifest) as handle:
            if extension == ".csv":
                # Read paths as text even when every path looks like a number ("001").
                options = pa_csv.ConvertOptions(column_types={"path": pa.string(), "mask_path": pa.string()})
                table = pa_csv.read_csv(handle, convert_options=options)
            else:
                table = pq.read_table(handle)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"data.source: cannot read manifest {manifest}: {err}") from err
    if "path" not in table.column_names:
        raise DataError(
            f"data.source: manifest {manifest} has no 'path' column (it has: {', '.join(table.column_names)}); "
            "name the column of image paths 'path'"
        )
    paths = table.column("path").to_pylist()
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(paths)
    masks = table.column("mask_path").to_pylist() if "mask_path" in table.column_names else [None] * len(paths)
    entries = []
    for row, (path, label, mask) in enumerate(zip(paths, labels, masks), start=1):
        where = f"row {row}"
        if path is None or not str(path).strip():
            raise DataError(f"data.source: manifest {manifest} {where} has an empty path; fill it in or drop the row")
        mask_entry = str(mask).strip() if mask is not None and str(mask).strip() else None  # empty cell: no mask
        entries.append((where, str(path).strip(), _as_label(label, manifest, where), mask_entry))
    return entries


def _as_label(value: object, manifest: str, where: str) -> int | None:
    """Labels are class indices; whole floats are accepted because pandas turns an int column with gaps into floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise DataError(
        f"data.source: manifest {manifest} {where}: label {value!r} is not an integer; "
        "labels are class indices (leave the cell empty when unknown)"
    )


def _unique_files(paths: list[str]) -> list[str]:
    """``paths`` without the repeats of a file reached under several names (the first name is kept)."""
    seen: set[str] = set()
    unique = []
    for path in paths:
        resolved = os.path.realpath(path)
        if resolved not in seen:
            seen.add(resolved)
            unique.append(path)
    return unique


def _part_matches(pattern: str, name: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _glob_match(parts: list[str], names: list[str]) -> bool:
    """Whether the path ``names`` (its components) matches the pattern ``parts``, ``**`` matching any folders."""
    if not parts:
        return not names
    if parts[0] == "**":
        return _glob_match(parts[1:], names) or (
            bool(names) and not names[0].startswith(".") and _glob_match(parts, names[1:]))
    return bool(names) and _part_matches(parts[0], names[0]) and _glob_match(parts[1:], names[1:])


def _may_match_below(parts: list[str], folders: list[str]) -> bool:
    """Whether a file inside the folder path ``folders`` could match ``parts`` (so the walk must enter it)."""
    if not folders:
        return bool(parts)
    if not parts:
        return False
    if parts[0] == "**":
        return _may_match_below(parts[1:], folders) or (
            not folders[0].startswith(".") and _may_match_below(parts, folders[1:]))
    return _part_matches(parts[0], folders[0]) and _may_match_below(parts[1:], folders[1:])


class _LocalFiles:
    """What listing needs from a filesystem, for local paths: os and glob only."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def find(self, root: str) -> list[str]:
        """Every non-hidden file under ``root``. Symlinked folders are not entered (a link loop would list the same
        files forever); a file reached under two names is listed once."""
        found = []
        for folder, subfolders, names in os.walk(root):  # os.walk does not follow folder links
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            found.extend(os.path.join(folder, name) for name in sorted(names) if not name.startswith("."))
        return _unique_files(found)

    def glob(self, pattern: str) -> list[str]:
        """The files matching ``pattern`` (``**`` spans folders), found with :meth:`find`'s walk, so symlinked
        folders are not entered either; hidden names match only a pattern part that starts with '.'."""
        # Not isfile(): a dangling symlink is listed like any unreadable file and fails in load_image.
        root = _glob_prefix(pattern) or "."
        parts = [part for part in os.path.relpath(pattern, root).split(os.sep)]
        found = []
        for folder, subfolders, names in os.walk(root):
            relative = [] if folder == root else os.path.relpath(folder, root).split(os.sep)
            subfolders[:] = sorted(name for name in subfolders if _may_match_below(parts, [*relative, name]))
            found.extend(os.path.join(folder, name) for name in sorted(names) if _glob_match(parts, [*relative, name]))
        return _unique_files(found)

    def open(self, path: str):
        try:
            return open(path, "rb")
        except OSError as err:
            raise DataError(f"data.source: cannot read {path}: {err}") from err

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def resolve(self, entry: str, folder: str) -> str:
        if is_url(entry):
            return entry
        return os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))

    def relative(self, path: str, root: str) -> str:
        """``path`` relative to ``root`` with posix separators; the full path when it lies outside ``root``."""
        if is_url(path):
            return path
        relative = os.path.relpath(path, root)
        if relative == ".." or relative.startswith(".." + os.sep):
            return path.replace(os.sep, "/")
        return relative.replace(os.sep, "/")


class _RemoteFiles:
    """The same operations for URLs (s3://, gs://, memory://, …) through fsspec; paths stay full URLs."""

    def __init__(self, url: str):
        import fsspec

        try:
            self.fs, _ = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise DataError(
                f"data.source {url}: no filesystem for this URL ({err}); install its fsspec backend (e.g. s3fs)"
            ) from err

    def _strip(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def exists(self, url: str) -> bool:
        return self.fs.exists(self._strip(url))

    def isdir(self, url: str) -> bool:
        return self.fs.isdir(self._strip(url))

    def find(self, root: str) -> list[str]:
        return self._urls(root, self.fs.find(self._strip(root)))

    def glob(self, pattern: str) -> list[str]:
        prefix = _glob_prefix(pattern)
        matches = self.fs.glob(self._strip(pattern), detail=True)  # one listing, not a stat per match
        return self._urls(prefix, [p for p, info in matches.items() if info.get("type") != "directory"])

    def _urls(self, root: str, stripped: list[str]) -> list[str]:
        """Stripped paths under ``root`` → URLs spelled like ``root``, hidden files and folders left out."""
        base = self._strip(root).rstrip("/")
        urls = []
        for path in stripped:
            relative = posixpath.relpath(path, base)
            if not any(part.startswith(".") for part in relative.split("/")):
                urls.append(root.rstrip("/") + "/" + relative)
        return urls

    def open(self, url: str):
        try:
            return self.fs.open(self._strip(url), "rb")
        except OSError as err:
            raise DataError(f"data.source: cannot read {url}: {err}") from err

    def dirname(self, url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[0]

    def resolve(self, entry: str, folder: str) -> str:
        if is_url(entry) or entry.startswith("/"):
            return entry
        scheme, _, rest = folder.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, entry))}"

    def relative(self, url: str, root: str) -> str:
        root = root.rstrip("/") + "/"
        return url[len(root):] if url.startswith(root) else url


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def read_bytes(path: str) -> bytes:
    """The whole file; local paths with ``open``, URLs with fsspec."""
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, ImportError, ValueError) as err:
        raise ImageError(f"cannot read file: {err}") from err


def decode_image(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB: EXIF orientation applied, first frame only, see :func:`to_rgb`.

    PIL's decompression-bomb guard stays on (``Image.MAX_IMAGE_PIXELS``), and truncated files fail
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False).
    """
    data = read_bytes(path)
    if not data:
        raise ImageError("empty file: the file has 0 bytes")
    try:
        image = Image.open(io.BytesIO(data))  # an animated file opens on its first frame
        ImageOps.exif_transpose(image, in_place=True)  # loads the pixels, then rotates/flips as EXIF says
    except Image.DecompressionBombError as err:
        raise ImageError(_bomb_message(err)) from err
    except UnidentifiedImageError as err:
        kind = _signature(data)
        if kind is None:
            raise ImageError("not an image: PIL cannot identify the file's format") from err
        raise ImageError(f"corrupt header: the file starts like a {kind} but its header cannot be read") from err
    except MemoryError as err:
        raise ImageError("cannot decode: not enough memory for this image") from err
    except Exception as err:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, zlib.error, …
        raise ImageError(_decode_failure_message(err, data)) from err
    return to_rgb(image)


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _bomb_message(err: Exception) -> str:
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(err))
    if match is None:
        return f"decompression bomb: {err}"
    return (
        f"decompression bomb: {match[1]} pixels exceed the limit of {match[2]} "
        "(PIL.Image.MAX_IMAGE_PIXELS guards against malicious files; raise it only for images you trust)"
    )


def _decode_failure_message(err: Exception, data: bytes) -> str:
    text = str(err) or type(err).__name__
    lowered = text.lower()
    # WebP's decoder says only "could not create decoder object"; its RIFF header tells whether bytes are missing.
    riff_cut = data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)
    if "truncated" in lowered or isinstance(err, EOFError) or riff_cut:
        return f"truncated image: {text}"
    return f"corrupt image data: {text}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL pixel mode → 8-bit RGB.

    Transparency (alpha channels, palette or colour-key transparency) is composited onto a **white** background.
    16-bit modes are scaled by 255/65535 (not clipped at 255). Mode ``I`` with values in 0..65535 is treated as
    16-bit; mode ``F`` in [0, 1] as fractions; other ``I``/``F`` ranges are stretched min..max to 0..255.
    CMYK and YCbCr use PIL's conversions (embedded ICC profiles are ignored).
    """
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has zero size ({image.width}×{image.height} px)")
    mode = image.mode
    try:
        if mode in ("I", "F") or mode.startswith("I;"):
            gray = Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L")
            return gray.convert("RGB")
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image if mode == "RGB" else image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported pixel mode: PIL cannot convert {mode} to RGB ({err})") from err


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if is_float and low >= 0.0 and high <= 1.0:
        fraction = values
    elif not is_float and low >= 0 and high <= 65535:
        fraction = values / np.float32(65535)
    elif high > low:
        fraction = (values - low) / np.float32(high - low)
    else:
        fraction = np.zeros_like(values)
    return np.round(fraction * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB image → (3, crop, crop) float32 in [0, 1].

    torchvision's ``ImageClassification`` preset step for step (the same functional calls on the PIL image: resize
    the short side with antialiasing, centre-crop, scale to [0, 1]) but without ``normalize``: the worker
    normalises on the device, and the stored inputs stay in pixel space.
    """
    image = _resize_and_crop(image, preprocessing, InterpolationMode(preprocessing.interpolation))
    return TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float32).contiguous()


def _resize_and_crop(image: Image.Image, preprocessing: Preprocessing, interpolation: InterpolationMode):
    """The geometry of the preset, shared by images and their masks so that they stay aligned."""
    _check_resized_size(image.size, preprocessing.resize_size)
    image = TF.resize(image, [preprocessing.resize_size], interpolation=interpolation, antialias=True)
    return TF.center_crop(image, [preprocessing.crop_size])


def _check_resized_size(size: tuple[int, int], resize_size: int) -> None:
    width, height = size
    short, long = min(width, height), max(width, height)
    if short == 0:
        raise ImageError(f"image has zero size ({width}×{height} px)")
    new_long = int(resize_size * long / short)  # as torchvision computes it
    if new_long * resize_size > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image too elongated: resizing {width}×{height} px to a short side of {resize_size} px would make "
            f"{new_long * resize_size} pixels (limit {MAX_RESIZED_PIXELS}); crop it before processing"
        )


def load_image(path: str, preprocessing: Preprocessing) -> torch.Tensor:
    """The model input for one file, before normalisation: (3, R, R) float32 in [0, 1]; fails with ImageError.

    Transparent pixels come out as if the image lay on a white background (see :func:`to_rgb`).
    """
    return preprocess(decode_image(path), preprocessing)


def load_mask(path: str, preprocessing: Preprocessing) -> torch.Tensor:
    """A ground-truth mask as (R, R) bool, aligned with :func:`load_image` of its image; fails with ImageError.

    Any pixel mode is read as grey levels and a pixel is in the mask when it is at least half the full level (≥ 128
    of 255, ≥ 32768 of 65535), so 0/255 masks, mode ``1`` and anti-aliased masks all work; a mask whose only levels
    are 0 and 1 (a boolean array saved as integers) is read as such. EXIF orientation is applied as for images. The
    mask goes through the image's resize (short side) and centre crop with **nearest** interpolation, so it stays
    binary; it must have its image's aspect ratio to line up with it.
    """
    data = read_bytes(path)
    if not data:
        raise ImageError("empty mask file: the file has 0 bytes")
    try:
        mask = Image.open(io.BytesIO(data))
        ImageOps.exif_transpose(mask, in_place=True)  # loads the pixels; the image is turned the same way
    except Image.DecompressionBombError as err:
        raise ImageError(f"mask: {_bomb_message(err)}") from err
    except UnidentifiedImageError as err:
        raise ImageError("mask is not an image: PIL cannot identify the file's format") from err
    except Exception as err:  # PIL's decoders raise many types for damaged files
        raise ImageError(f"mask: {_decode_failure_message(err, data)}") from err
    if mask.width == 0 or mask.height == 0:
        raise ImageError(f"mask has zero size ({mask.width}×{mask.height} px)")
    if mask.mode in ("I", "F") or mask.mode.startswith("I;"):
        levels = np.asarray(mask)
        inside = levels >= 0.5 if levels.max(initial=0) <= 1 else _scale_to_uint8(levels) >= 128
    else:
        levels = np.asarray(mask.convert("L"))
        inside = levels >= 1 if levels.max(initial=0) == 1 else levels >= 128
    binary = Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), mode="L")
    binary = _resize_and_crop(binary, preprocessing, InterpolationMode.NEAREST)
    return torch.from_numpy(np.asarray(binary) >= 128)


def _load_or_error(path: str, preprocessing: Preprocessing) -> torch.Tensor | ImageError:
    try:
        return load_image(path, preprocessing)
    except ImageError as err:
        return err


def decode_many(
    records: Iterable[ImageRecord],
    preprocessing: Preprocessing,
    max_workers: int = 2,
    prefetch: int | None = None,
) -> Iterator[tuple[ImageRecord, torch.Tensor | ImageError]]:
    """``(record, tensor or ImageError)`` in the order of ``records``, decoded on ``max_workers`` threads.

    PIL releases the GIL while decoding and resampling, so threads overlap with each other and with the model.
    At most ``prefetch`` (default ``2 * max_workers``) images are decoded ahead of the consumer, which bounds
    memory; other exceptions (bugs, not bad images) propagate.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, not {max_workers}")
    ahead = max(1, prefetch if prefetch is not None else 2 * max_workers)
    return _decode_in_threads(iter(records), preprocessing, max_workers, ahead)


def _decode_in_threads(
    pending_records: Iterator[ImageRecord], preprocessing: Preprocessing, max_workers: int, ahead: int
) -> Iterator[tuple[ImageRecord, torch.Tensor | ImageError]]:
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="xcv-decode")
    pending: deque = deque()

    def submit_next() -> None:
        record = next(pending_records, None)
        if record is not None:
            pending.append((record, pool.submit(_load_or_error, record.path, preprocessing)))

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            record, future = pending.popleft()
            submit_next()
            yield record, future.result()
    finally:
        # A consumer that stops early (an exception, a closed generator) should not wait for queued decodes.
        pool.shutdown(wait=True, cancel_futures=True)
