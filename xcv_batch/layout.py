"""The layout of an output directory, shared by the writer (store.py) and the reader (results.py).

Kept free of zarr and pyarrow imports so that reading rows or listing an OUT stays light.
"""

from __future__ import annotations

import json

ZARR_NAME = "attributions.zarr"
METRICS_DIR = "metrics"
JOB_FILE = "job.yaml"
#: Committed shards that ``--resume`` found broken are moved here: kept for inspection, no longer committed.
REJECTED_DIR = "_rejected"


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
