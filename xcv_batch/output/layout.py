"""The schema of an output directory, shared by the writer (store.py), the reader (results.py) and the early checks
(outdir.py): its file names, the Parquet row columns, the Zarr array names and dimensions, and the ImageNet
preprocessing that outputs predating the ``preprocessing`` attribute were made with.

Kept free of zarr, pyarrow and torch imports so that reading rows or listing an OUT stays light: the columns are
declared once as (name, kind) pairs, from which store.py derives the pyarrow schema and results.py the pandas dtypes.
"""

from __future__ import annotations

import json

ZARR_NAME = "attributions.zarr"
METRICS_DIR = "metrics"
JOB_FILE = "job.yaml"
#: Committed shards that ``--resume`` found broken are moved here: kept for inspection, no longer committed.
REJECTED_DIR = "_rejected"


#: The kinds of a row column: a (nullable) string, an integer, an integer that may be missing (pandas ``Int64``
#: when a table is empty), a float.
STRING, INT, OPTIONAL_INT, FLOAT = "string", "int", "optional_int", "float"

#: The Parquet row columns, in order (the README's Output section), as (name, kind). Extra metric columns (float) may follow.
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


def written_chunks(fs, out_root: str, array: str) -> set[int]:
    """The images whose data in ``array`` exists, from one listing of the array's chunk folder: no map is read.

    An object ``c/S/0/0/0`` holds images S·K … S·K+K−1, where K is the array's images per object (1 unless the
    output was sharded; read from the array's ``zarr.json``): every image of an existing object counts as written.
    """
    folder = f"{out_root}/{ZARR_NAME}/{array}/c"
    fs.invalidate_cache(folder)  # object stores cache listings; chunks may have been written since
    if not fs.exists(folder):
        return set()
    names = (path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False))
    objects = {int(name) for name in names if name.isdigit()}
    per_object, n_images = _object_layout(fs, out_root, array)
    if per_object == 1:
        return objects
    return {index for obj in objects for index in range(obj * per_object, min((obj + 1) * per_object, n_images))}


def _object_layout(fs, out_root: str, array: str) -> tuple[int, int]:
    """(images per object, images) of ``array``: the first axis of its chunk grid — the shard shape when sharded —
    and of its shape."""
    try:
        metadata = json.loads(fs.cat_file(f"{out_root}/{ZARR_NAME}/{array}/zarr.json"))
        return int(metadata["chunk_grid"]["configuration"]["chunk_shape"][0]), int(metadata["shape"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 1, 0  # no readable metadata: the one-image-an-object layout, whose listing needs no expanding


def stored_image_ids(group) -> list[str] | None:
    """The image ids of an open Zarr group, in index order: its ``image`` array, or the ``image_ids`` attribute of
    outputs written before that array existed; None when it has neither."""
    if IMAGE_ARRAY in group:
        return [str(image_id) for image_id in group[IMAGE_ARRAY][:]]
    ids = group.attrs.get("image_ids")
    return None if ids is None else [str(image_id) for image_id in ids]
