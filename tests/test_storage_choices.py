"""Storage chosen in the job: ``output.dtype: float16``, ``output.channels: sum`` and ``output.inputs: false`` store
the float32 run's maps converted (rounded to float16; summed over the colour channels) and no inputs, with the
same metrics; xarray, ``show``, ``summarize``, ``--resume`` and the dry run's byte count work on each."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import zarr

from map_checks import ROUNDING, assert_same_map
from ray_helpers import rows_of, write_job
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.driver.dry_run import plan_run, stored_bytes_per_image
from xcv_batch.errors import OutputError
from xcv_batch.output.results import open_results
from xcv_batch.report.panel import panel_figure, render_panel

METHODS = ["occlusion", "guided_gradcam"]
# Two fast methods, three images (two shards of up to two), one Max-Sensitivity sample (a metric of the maps): the
# storage does not depend on which.
FAST = {"methods": {"occlusion": {"window": 16, "stride": 16}, "guided_gradcam": {}},
        "sensitivity": {"n_perturb_samples": 1, "perturb_radius": 0.02}, "data__limit": 3}
CHOICES = {
    "float16": {"output__dtype": "float16"},
    "sum": {"output__channels": "sum"},
    "no_inputs": {"output__inputs": False},
    "all_three": {"output__dtype": "float16", "output__channels": "sum", "output__inputs": False},
}
#: The runs made (each costs seconds): float16 alone, the likeliest choice, and all three together (sum and no inputs
#: alone are converted and laid out by the same code, checked without a run by the dry run's test).
RUNS = ["float16", "all_three"]


def job_of(tmp_path, folder, out: str, **changes):
    return load_job(write_job(tmp_path / "job.yaml", folder, **FAST, **changes), output=out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photo_folder):
    """OUT of the float32 run (``base``) and of each choice in CHOICES."""
    outs = {}
    for name, changes in {"base": {}, **{name: CHOICES[name] for name in RUNS}}.items():
        tmp = tmp_path_factory.mktemp(name)
        outs[name] = str(tmp / "out")
        run_job(job_of(tmp, photo_folder, outs[name], **changes))
    return outs


def converted(maps: np.ndarray, changes: dict) -> np.ndarray:
    """The float32 run's ``(3, H, W)`` map as ``changes`` store it, read back as float32."""
    if changes.get("output__channels") == "sum":
        maps = maps.sum(axis=0, keepdims=True, dtype=np.float32)
    if changes.get("output__dtype") == "float16":
        maps = maps.astype(np.float16)
    return maps.astype(np.float32)


@pytest.mark.parametrize("name", RUNS)
def test_stored_maps_are_the_float32_maps_converted_and_metrics_unchanged(runs, name):
    changes = CHOICES[name]
    base, res = open_results(runs["base"]), open_results(runs[name])
    assert res.image_ids == base.image_ids
    for image_id in base.image_ids:
        for method in METHODS:
            got = res.attribution(image_id, method)
            assert got.dtype == np.float32
            # the two runs' float32 maps agree to rounding, which may round a float16 the other way: one step
            step = 2.0 ** -10 if changes.get("output__dtype") == "float16" else ROUNDING
            assert_same_map(got, converted(base.attribution(image_id, method), changes), f"{image_id} {method}",
                            rtol=step)
    # metrics are computed before storing: the same values whatever is stored (to the runs' rounding)
    columns = ["image_id", "method", "status", "target", "target_prob", "sensitivity_max"]
    a = rows_of(runs["base"])[columns].reset_index(drop=True)
    b = rows_of(runs[name])[columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4)
    group = zarr.open_group(os.path.join(runs[name], "attributions.zarr"), mode="r")
    channels = 1 if changes.get("output__channels") == "sum" else 3
    assert group["occlusion"].shape == (3, channels, 32, 32)
    assert str(group["occlusion"].dtype) == changes.get("output__dtype", "float32")
    assert ("inputs" in group) == changes.get("output__inputs", True)
    if "inputs" in group:  # the model's exact inputs, whatever the maps' dtype
        assert str(group["inputs"].dtype) == "float32"
        np.testing.assert_array_equal(group["inputs"][:], zarr.open_group(
            os.path.join(runs["base"], "attributions.zarr"), mode="r")["inputs"][:])


def test_xarray_opens_the_smallest_layout(runs):
    import xarray as xr

    ds = xr.open_zarr(os.path.join(runs["all_three"], "attributions.zarr"))
    assert set(ds.data_vars) == set(METHODS)
    assert ds.sizes == {"image": 3, "channel": 1, "y": 32, "x": 32}
    assert ds["occlusion"].dtype == np.float16
    np.testing.assert_array_equal(ds["occlusion"].sel(image="chelsea.png").values.astype(np.float32),
                                  open_results(runs["all_three"]).attribution("chelsea.png", "occlusion"))


def test_show_and_summarize_without_stored_inputs(runs, tmp_path):
    name = "all_three"
    res = open_results(runs[name])
    # the input is read again from the source file with the stored preprocessing: what the model saw
    np.testing.assert_allclose(res.input_image("chelsea.png"), open_results(runs["base"]).input_image("chelsea.png"),
                               atol=1e-6)
    with pytest.raises(OutputError, match=r"stores no inputs \(output.inputs: false\)"):
        res.model_input("chelsea.png")
    panel = render_panel(res, "chelsea.png", str(tmp_path / "panel.png"))
    assert os.path.getsize(panel) > 1000
    from xcv_batch.report.summarize import summarize

    summary = summarize(runs[name])
    assert summary.n_images == 3 and sorted(summary.methods) == sorted(METHODS)


def test_show_draws_the_maps_alone_when_the_source_file_is_gone(runs, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(runs["all_three"], out)
    res = open_results(out)
    moved = str(res.image_rows("chelsea.png")["image_path"].iloc[0])
    shutil.move(moved, moved + ".away")
    try:
        figure = panel_figure(open_results(out), "chelsea.png")
    finally:
        shutil.move(moved + ".away", moved)
    first = figure.axes[0]
    assert "image not shown (inputs not stored)" in first.get_title().replace("\n", " ")
    assert len(figure.axes) >= 1 + len(METHODS)  # the maps are drawn all the same


def test_resume_keeps_the_outs_storage_and_recomputes_only_the_deleted_shard(runs, tmp_path, photo_folder):
    out = str(tmp_path / "out")
    shutil.copytree(runs["all_three"], out)
    # image 2, the second shard: object 1 (output.images_per_object auto: the shard size, 2)
    shutil.rmtree(os.path.join(out, "attributions.zarr", "occlusion", "c", "1"))
    # the job file names the defaults: the storage OUT was laid out with decides
    report = run_job(job_of(tmp_path, photo_folder, out), resume=True)
    assert list(report.recomputed) == ["part-00000002-00000002.parquet"]
    assert (report.n_skipped, report.n_processed) == (2, 1)
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    assert "inputs" not in group and group["occlusion"].shape == (3, 1, 32, 32)
    assert str(group["occlusion"].dtype) == "float16"
    np.testing.assert_array_equal(group["occlusion"][:], zarr.open_group(
        os.path.join(runs["all_three"], "attributions.zarr"), mode="r")["occlusion"][:])


@pytest.mark.parametrize("name, per_image", [
    ("base", 2 * 3 * 32 * 32 * 4 + 3 * 32 * 32 * 4),
    ("float16", 2 * 3 * 32 * 32 * 2 + 3 * 32 * 32 * 4),
    ("sum", 2 * 1 * 32 * 32 * 4 + 3 * 32 * 32 * 4),
    ("no_inputs", 2 * 3 * 32 * 32 * 4),
    ("all_three", 2 * 1 * 32 * 32 * 2),
])
def test_dry_run_prints_the_bytes_per_image(tmp_path, photo_folder, name, per_image):
    job = job_of(tmp_path, photo_folder, str(tmp_path / "out"), **CHOICES.get(name, {}))
    assert stored_bytes_per_image(job) == per_image
    text = plan_run(job, probe=False).describe()
    assert f"storage: {per_image:,} bytes per image uncompressed" in text
