"""The schema of an output directory, shared by the row ledger (store.py), the Zarr format (zarr_maps.py), the reader
(results.py) and the early checks (outdir.py): its file names, the Parquet row columns, the Zarr array names and
dimensions, and the ImageNet preprocessing that outputs predating the ``preprocessing`` attribute were made with.

Kept free of zarr, pyarrow and torch imports so that reading rows or listing an OUT stays light: the columns are
declared once as (name, kind) pairs, from which store.py derives the pyarrow schema and results.py the pandas dtypes.
"""

from __future__ import annotations

from .chunks import ArrayChunks, check_array

ZARR_NAME = "attributions.zarr"
METRICS_DIR = "metrics"
JOB_FILE = "job.yaml"
#: Committed shards that ``--resume`` found broken are moved here: kept for inspection, no longer committed.
REJECTED_DIR = "_rejected"

#: ``output.images_per_object: auto`` stores at most this many images an object, and at most this many bytes of one
#: array's maps (uncompressed): an object is gathered in the worker's memory before it is written, and a shard split
#: into one-image tasks rewrites its objects one image at a time.
AUTO_OBJECT_IMAGES = 256
AUTO_OBJECT_BYTES = 16 * 2**20


def auto_images_per_object(shard_size: int, image_bytes: int) -> int:
    """The images an object that ``output.images_per_object: auto`` stores: the most that divides ``shard_size`` (so
    that shards write whole objects) within :data:`AUTO_OBJECT_IMAGES` and :data:`AUTO_OBJECT_BYTES` (``image_bytes``:
    one image of the largest array). Each object is one file (in four folders) per array, so a local disk creates one
    file a shard or so per array instead of one file and three folders per image."""
    limit = max(1, min(AUTO_OBJECT_IMAGES, AUTO_OBJECT_BYTES // max(1, image_bytes), shard_size))
    return max(k for k in range(1, limit + 1) if shard_size % k == 0)


#: The kinds of a row column: a (nullable) string, an integer, an integer that may be missing (pandas ``Int64``
#: when a table is empty), a float.
STRING, INT, OPTIONAL_INT, FLOAT = "string", "int", "optional_int", "float"

#: The Parquet row columns, in order (docs/output.md), as (name, kind). Extra metric columns (float) may follow.
ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_id", STRING),
    ("image_path", STRING),
    ("index", INT),
    ("method", STRING),
    ("target", INT),
    ("target_name", STRING),
    ("target_prob", FLOAT),
    ("label", OPTIONAL_INT),
    ("sensitivity_max", FLOAT),
    ("attr_seconds", FLOAT),
    ("sensitivity_seconds", FLOAT),
    ("status", STRING),
    ("error", STRING),
    ("note", STRING),  # why an ok row has a missing value (e.g. sensitivity of an all-zero map)
    ("occlusion_path", STRING),  # Occlusion's rows: the path that ran, "incremental" or "full"; else null
    ("shard", STRING),
)
ROW_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in ROW_COLUMNS)
#: The kind of the extra metric columns that may follow the contract's.
EXTRA_COLUMN_KIND = FLOAT

_PANDAS_DTYPES = {STRING: "object", INT: "int64", OPTIONAL_INT: "Int64", FLOAT: "float64"}


def pandas_dtypes() -> dict[str, str]:
    """The contract's columns with the pandas dtypes an empty table gets."""
    return {name: _PANDAS_DTYPES[kind] for name, kind in ROW_COLUMNS}


#: The ImageNet normalisation (torchvision's weights; the model's default, and what outputs made before the
#: ``preprocessing`` attribute was stored were normalised with).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: The 1-D arrays beside the maps: the image ids (named as their dimension, so xarray makes them the index) and the
#: image paths.
IMAGE_ARRAY = "image"
IMAGE_PATH_ARRAY = "image_path"
#: The dimension names of every map array (and of ``inputs``).
MAP_DIMENSIONS = ("image", "channel", "y", "x")


def array_chunks(fs, out_root: str, array: str) -> ArrayChunks:
    """The chunk files of ``array`` in the OUT at ``out_root`` (a path of ``fs``): one recursive listing, and the
    index of each object when the array is sharded; no map is decoded (see :mod:`.chunks` for what is checked)."""
    return check_array(fs, f"{out_root}/{ZARR_NAME}/{array}")


def written_chunks(fs, out_root: str, array: str) -> set[int]:
    """The images whose data in ``array`` is stored in a chunk file that passed :func:`array_chunks`' checks.

    A file ``c/S/0/0/0`` holds image S, or — with K images per object (Zarr's sharding codec) — the images S·K …
    S·K+K−1 that its shard index lists.
    """
    return set(array_chunks(fs, out_root, array).written)


def stored_image_ids(group) -> list[str] | None:
    """The image ids of an open Zarr group, in index order: its ``image`` array, or the ``image_ids`` attribute of
    outputs written before that array existed; None when it has neither."""
    if IMAGE_ARRAY in group:
        return [str(image_id) for image_id in group[IMAGE_ARRAY][:]]
    ids = group.attrs.get("image_ids")
    return None if ids is None else [str(image_id) for image_id in ids]
