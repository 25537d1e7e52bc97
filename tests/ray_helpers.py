"""Helpers for the Ray, S3 and submit tests: one small job, and reading a run's rows and maps (local or s3://)."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
import zarr

IDS = ["camera.png", "chelsea.png", "coffee.png", "nested/rocket.jpg", "notes.jpg"]  # photo_folder, sorted
METHODS = ["occlusion", "integrated_gradients", "guided_gradcam", "lime"]

JOB = {
    "name": "ray-tests",
    "seed": 5,
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {
        "occlusion": {"window": 8, "stride": 8},
        "integrated_gradients": {"n_steps": 4},
        "guided_gradcam": {},
        "lime": {"num_samples": 16},
    },
    "sensitivity": {"n_perturb_samples": 1, "perturb_radius": 0.02},
    # these tests compare the methods' results across workers, faults and stores; the control maps have their own
    "controls": False,
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16, "shard_size": 2,
                "max_attempts": 2},
}


def write_job(path, source, job: dict = JOB, **changes) -> str:
    """``job`` (default JOB) with ``data.source`` and dotted-key changes (``compute__workers=2``) written to ``path``."""
    job = yaml.safe_load(yaml.safe_dump(job))
    job["data"] = {"source": str(source)}
    for dotted, value in changes.items():
        node = job
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(job))
    return str(path)


def rows_of(out: str) -> pd.DataFrame:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    files = sorted(p for p in fs.ls(f"{root}/metrics", detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    frames = []
    for path in files:
        with fs.open(path, "rb") as fh:
            frames.append(pq.read_table(fh).to_pandas())
    return pd.concat(frames, ignore_index=True).sort_values(["index", "method"]).reset_index(drop=True)


def maps_of(out: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(f"{out.rstrip('/')}/attributions.zarr", mode="r")
    return {name: group[name][:] for name in ["inputs", *METHODS]}


def assert_same_results(a: pd.DataFrame, b: pd.DataFrame, maps_a: dict, maps_b: dict, rows=None) -> None:
    """Same rows (ids, targets, statuses, sensitivities) and the same maps, for the given Zarr rows (default all)."""
    keys = ["image_id", "index", "method", "target", "status"]
    if rows is not None:
        a, b = a[a["index"].isin(rows)], b[b["index"].isin(rows)]
    # check_dtype off: a run with error rows stores 'target' as nulls among ints, which pandas reads as floats
    pd.testing.assert_frame_equal(a[keys].reset_index(drop=True), b[keys].reset_index(drop=True), check_dtype=False)
    np.testing.assert_allclose(a.target_prob.to_numpy(float), b.target_prob.to_numpy(float), rtol=1e-5)
    np.testing.assert_allclose(a.sensitivity_max.to_numpy(float), b.sensitivity_max.to_numpy(float), rtol=1e-3)
    for name, x in maps_a.items():
        y = maps_b[name]
        if rows is not None:
            x, y = x[list(rows)], y[list(rows)]
        scale = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 1.0
        np.testing.assert_allclose(np.nan_to_num(x, nan=7.0), np.nan_to_num(y, nan=7.0), rtol=0, atol=1e-5 * scale)


def ray_run(tmp_path, source, out: str | None = None, **changes):
    """Run JOB (with changes) into ``out`` (default ``tmp_path/out``); returns (out, RunReport)."""
    from xcv_batch.config import load_job
    from xcv_batch.driver import run_job

    out = out or str(tmp_path / "out")
    job = load_job(write_job(tmp_path / "job.yaml", source, **changes), output=out)
    return out, run_job(job)


def each_image_once(rows: pd.DataFrame) -> bool:
    return (sorted(rows.image_id.unique()) == IDS and len(rows) == len(IDS) * len(METHODS)
            and rows.groupby(["image_id", "method"]).size().max() == 1)
