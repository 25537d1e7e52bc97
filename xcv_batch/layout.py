"""The layout of an output directory, shared by the writer (store.py) and the reader (results.py).

Kept free of zarr and pyarrow imports so that reading rows or listing an OUT stays light.
"""

from __future__ import annotations

ZARR_NAME = "attributions.zarr"
METRICS_DIR = "metrics"
JOB_FILE = "job.yaml"
#: Committed shards that ``--resume`` found broken are moved here: kept for inspection, no longer committed.
REJECTED_DIR = "_rejected"


def written_chunks(fs, out_root: str, array: str) -> set[int]:
    """The images whose chunk of ``array`` exists (one per image, Zarr v3 key ``c/INDEX/0/0/0``), from one listing
    of the array's chunk folder: nothing is read."""
    folder = f"{out_root}/{ZARR_NAME}/{array}/c"
    fs.invalidate_cache(folder)  # object stores cache listings; chunks may have been written since
    if not fs.exists(folder):
        return set()
    names = (path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False))
    return {int(name) for name in names if name.isdigit()}
