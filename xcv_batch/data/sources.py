"""Listing image sources: ``data.source`` → :class:`ImageRecord` s sorted by id, without opening any image.

:func:`list_images` takes a folder, a glob, a ``.txt``/``.csv``/``.parquet`` manifest, an ``s3://``-style URL of any
of those, ``builtin:skimage``, tar shards and Parquet files of image bytes (:mod:`xcv_batch.data.packed`), or any
other kind registered in :mod:`xcv_batch.data.registry` (the built-in kinds register at the end of this module). A
file that cannot be decoded is listed and fails later, as that image's error rows.

Its own module, free of torch, torchvision and PIL, so that ``run`` checks the source (and ``--dry-run`` counts the
images) before any heavy import; :mod:`xcv_batch.data` decodes and preprocesses what is listed here.
Local paths go through ``os``/``open`` and never need fsspec; URLs (anything with ``://``) go through fsspec.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob as globlib
import importlib.util
import math
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from ..errors import DataError
from .registry import SourceSpec, register, source_kind, source_kinds_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")

# The natural photographs among scikit-image's bundled files (no text, phantoms, chessboards, textures, silhouettes).
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: The kernel's pseudo-filesystems: their files are process and device state, not images; listing /proc recursively
#: meets files that vanish or cannot be stat'ed (other processes' cwd, fd) and, through /proc/*/root, the whole tree
#: again. A source inside one is refused; a walk from above (data.source: /) does not enter them.
PSEUDO_FILESYSTEMS = ("/proc", "/sys")


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
    #: ``"module:function"`` returning the bytes of ``path`` and ``mask_path``, for a source whose images are not
    #: files (its spec's ``reader``); "" for files and URLs, which the decoder opens itself
    reader: str = ""


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


def list_images(source: str, limit: int | None = None) -> list[ImageRecord]:
    """The images of ``source`` sorted by ``image_id``; ``limit`` keeps the first N of that order."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"data.limit must be a positive integer or null, not {limit!r}")
    spec = source_kind(source)
    records = spec.list(source)
    if spec.reader:
        records = (record if record.reader else dataclasses.replace(record, reader=spec.reader) for record in records)
    records = sorted(records, key=lambda record: record.image_id)
    return records[:limit] if limit is not None else records


def list_builtin(source: str) -> list[ImageRecord]:
    """The images of a named dataset (``builtin:skimage``)."""
    if source not in BUILTIN_SOURCES:
        raise DataError(f"data.source '{source}' is not a builtin source; use one of {', '.join(BUILTIN_SOURCES)}")
    return BUILTIN_SOURCES[source]()


def list_files(source: str) -> list[ImageRecord]:
    """The images of a folder, glob, manifest or single image, local or at a URL."""
    files = _RemoteFiles(source) if is_url(source) else _LocalFiles()
    location = source if is_url(source) else os.path.abspath(os.path.expanduser(source))
    if not is_url(source):
        _refuse_pseudo_filesystem(source, _glob_prefix(location) if globlib.has_magic(location) else location)

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
        raise DataError(f"data.source {source} is a file but not a manifest or an image; give {source_kinds_text()}")

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

    raise DataError(f"data.source {source} does not exist; give {source_kinds_text()}")


def _refuse_pseudo_filesystem(source: str, folder: str) -> None:
    real = _real_path(folder)
    for root in PSEUDO_FILESYSTEMS:
        if real == root or real.startswith(root + os.sep):
            raise DataError(f"data.source {source}: {root} is the kernel's view of processes and devices, not a "
                            "folder of images; give the folder, glob or manifest of your images")


def _real_path(path: str) -> str:
    """``os.path.realpath``, or ``path`` itself where a link on the way cannot be read (/proc/1/cwd as non-owner)."""
    try:
        return os.path.realpath(path)
    except OSError:
        return path


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
        resolved = _real_path(path)
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
            subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                                   and os.path.join(folder, name) not in PSEUDO_FILESYSTEMS)
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
            subfolders[:] = sorted(name for name in subfolders if _may_match_below(parts, [*relative, name])
                                   and os.path.join(folder, name) not in PSEUDO_FILESYSTEMS)
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
# The built-in kinds (registered first, so that any other kind is asked before the folder/glob/manifest one)
# ---------------------------------------------------------------------------------------------------------------

register(SourceSpec(name="files", matches=lambda source: True, lister=".sources:list_files",
                    written="a folder, a glob pattern, a .txt/.csv/.parquet manifest"))
register(SourceSpec(name="builtin", matches=lambda source: source.startswith("builtin:"),
                    lister=".sources:list_builtin", written=", ".join(BUILTIN_SOURCES),
                    unlabelled="builtin images have no labels"))
# Images packed into bigger files (xcv_batch/data/packed.py, imported only when a job names one). A .parquet source
# is listed there too: its schema, not its name, tells images in an 'image' bytes column from a manifest of paths.
register(SourceSpec(name="tar", matches=lambda source: source.lower().endswith(".tar"), lister=".packed:list_tar",
                    reader=".packed:read_tar_member", written="WebDataset tar shards (shards/train-{000..099}.tar)"))
register(SourceSpec(name="parquet", matches=lambda source: source.lower().endswith(".parquet"),
                    lister=".packed:list_parquet", written="a .parquet file with an 'image' column of bytes"))
