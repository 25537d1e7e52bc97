"""End to end on one machine: real photos and broken files in, Zarr + Parquet out, resume, atomic commits."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage
import yaml
import zarr

import ray_helpers
from ray_helpers import rows_of
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import OutputError
from xcv_batch.output.store import ROW_SCHEMA

METHODS = ["occlusion", "integrated_gradients", "ig_smoothgrad", "guided_gradcam", "lime"]
CONTROLS = ("random", "edges", "centre")  # the control maps a run adds by default
SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")

JOB = {
    "name": "e2e",
    "seed": 3,
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {
        "occlusion": {"window": 8, "stride": 4},
        "integrated_gradients": {"n_steps": 4},
        "ig_smoothgrad": {"nt_samples": 2, "n_steps": 3},
        "guided_gradcam": {},
        "lime": {"num_samples": 24},
    },
    "sensitivity": {"n_perturb_samples": 2, "perturb_radius": 0.02},
    "compute": {"workers": 1, "device": "cpu", "batch_size": 3, "forward_batch": 16, "shard_size": 3},
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Four real photos (one grayscale) and three files that cannot be used."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("chelsea.png", "coffee.png", "camera.png"):
        shutil.copy(os.path.join(SKIMAGE_DATA, name), folder / name)
    (folder / "nested").mkdir()
    shutil.copy(os.path.join(SKIMAGE_DATA, "rocket.jpg"), folder / "nested" / "rocket.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not a picture")
    data = open(os.path.join(SKIMAGE_DATA, "astronaut.png"), "rb").read()
    (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    return folder


def write_job(tmp_path, folder, **changes) -> str:
    return ray_helpers.write_job(tmp_path / "job.yaml", folder, job=JOB, **changes)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, image_folder):
    tmp = tmp_path_factory.mktemp("run")
    out = str(tmp / "out")
    job = load_job(write_job(tmp, image_folder), output=out)
    report = run_job(job)
    return out, report


def test_every_image_has_a_row_per_method_and_bad_files_say_why(finished_run):
    out, report = finished_run
    rows = rows_of(out)
    ids = ["camera.png", "chelsea.png", "coffee.png", "empty.png", "nested/rocket.jpg", "notes.jpg", "truncated.png"]
    assert sorted(rows.image_id.unique()) == ids
    explained = [*METHODS, *CONTROLS]  # the control maps come with every run (controls: true by default)
    assert len(rows) == len(ids) * len(explained)
    assert rows.groupby("image_id").method.apply(sorted).map(tuple).unique().tolist() == [tuple(sorted(explained))]
    # index is the image's row in the Zarr arrays, in sorted-id order
    assert rows.drop_duplicates("image_id").set_index("image_id")["index"].to_dict() == {i: n for n, i in enumerate(ids)}

    errors = rows[rows.status == "error"].drop_duplicates("image_id").set_index("image_id").error
    assert set(errors.index) == {"empty.png", "notes.jpg", "truncated.png"}
    assert "empty" in errors["empty.png"]
    assert "not an image" in errors["notes.jpg"]
    assert "truncated" in errors["truncated.png"]
    ok = rows[rows.status == "ok"]
    assert ok.error.isna().all() and len(ok) == 4 * (len(METHODS) + len(CONTROLS))
    assert (ok.attr_seconds > 0).all() and (ok.sensitivity_seconds > 0).all()
    # a control map that ignores the input (noise of the image's seed, a fixed Gaussian) is perfectly "stable"
    fixed = ok.method.isin(["random", "centre"])
    assert (ok[~fixed].sensitivity_max > 0).all() and (ok[fixed].sensitivity_max == 0).all()
    assert ((ok.target >= 0) & (ok.target < 1000)).all()
    assert ((ok.target_prob > 0) & (ok.target_prob <= 1)).all()
    assert ok.target_name.isna().all()  # random weights carry no class names
    assert report.n_failed == 3 and report.n_images == 7
    assert "3 failed" in report.final_line()


def test_parquet_columns_follow_the_contract(finished_run):
    out, _ = finished_run
    schema = pq.read_schema(os.path.join(out, "metrics", sorted(os.listdir(os.path.join(out, "metrics")))[0]))
    for field in ROW_SCHEMA:
        assert schema.field(field.name).type == field.type
    rows = rows_of(out)
    ok = rows[rows.status == "ok"]
    # Occlusion's rows name the path that ran (32 px: a short probe decides), the other methods' are null
    assert set(ok[ok.method == "occlusion"].occlusion_path) <= {"full", "incremental"}
    assert ok[ok.method == "occlusion"].occlusion_path.notna().all()
    assert ok[ok.method != "occlusion"].occlusion_path.isna().all()


def test_zarr_holds_inputs_and_raw_maps_per_image(finished_run):
    out, _ = finished_run
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    assert group["image"][1] == "chelsea.png" and "image_ids" not in group.attrs  # ids in an array, attrs small
    assert group["image_path"][1] == rows_of(out).set_index("image_id").image_path["chelsea.png"].iloc[0]
    assert group.attrs["model"] == "resnet18"
    assert group.attrs["fingerprint"] == yaml.safe_load(open(os.path.join(out, "job.yaml")))["fingerprint"]
    for name in ["inputs", *METHODS]:
        array = group[name]
        assert array.shape == (7, 3, 32, 32) and array.chunks == (1, 3, 32, 32) and array.dtype == np.float32
        values = array[:]
        for index in (0, 1, 2, 4):  # usable images
            assert np.isfinite(values[index]).all()
            assert np.abs(values[index]).max() > 0
        for index in (3, 5, 6):  # broken files stay unwritten
            assert np.isnan(values[index]).all()
    # the stored input is the normalised photo (not [0, 1] pixels)
    assert group["inputs"][1].min() < -0.5


def test_results_do_not_depend_on_batching_sharding_or_grouping(finished_run, tmp_path, image_folder):
    out, _ = finished_run
    other = str(tmp_path / "other")
    job = load_job(write_job(tmp_path, image_folder, compute__batch_size=1, compute__forward_batch=5,
                             compute__shard_size=2), output=other)
    run_job(job)
    a, b = rows_of(out), rows_of(other)
    assert a[["image_id", "method", "target", "status"]].equals(b[["image_id", "method", "target", "status"]])
    # Sensitivity is a norm of the *difference* of two nearly equal maps (‖Φ(x) − Φ(x+δ)‖ is ~1 % of ‖Φ(x)‖ for
    # occlusion), so the ~1e-6 float noise of batch-size-dependent conv kernels is amplified ~100×.
    np.testing.assert_allclose(a.sensitivity_max.to_numpy(float), b.sensitivity_max.to_numpy(float), rtol=2e-3)
    ga = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    gb = zarr.open_group(os.path.join(other, "attributions.zarr"), mode="r")
    for name in METHODS:
        x, y = ga[name][:], gb[name][:]
        scale = np.nanmax(np.abs(x))
        np.testing.assert_allclose(np.nan_to_num(x), np.nan_to_num(y), rtol=0, atol=1e-5 * scale)


def test_resume_after_a_finished_run_writes_nothing(finished_run, image_folder, tmp_path):
    out, _ = finished_run
    metrics = os.path.join(out, "metrics")
    before = {f: os.stat(os.path.join(metrics, f)).st_mtime_ns for f in os.listdir(metrics)}
    job = load_job(write_job(tmp_path, image_folder), output=out)
    report = run_job(job, resume=True)
    assert report.n_processed == 0 and report.n_skipped == 7
    assert {f: os.stat(os.path.join(metrics, f)).st_mtime_ns for f in os.listdir(metrics)} == before


def test_an_existing_out_is_never_overwritten(finished_run, image_folder, tmp_path):
    out, _ = finished_run
    with pytest.raises(OutputError, match="resume=True"):  # called from Python: the hint names the argument
        run_job(load_job(write_job(tmp_path, image_folder), output=out))
    changed = load_job(write_job(tmp_path, image_folder, methods__occlusion__window=6), output=out)
    with pytest.raises(OutputError, match="different job"):
        run_job(changed, resume=True)


def test_a_shard_killed_while_committing_leaves_no_file_and_resume_finishes(image_folder, tmp_path, monkeypatch,
                                                                            finished_run):
    out = str(tmp_path / "crashy")
    job = load_job(write_job(tmp_path, image_folder, compute__shard_size=2,
                             methods={"guided_gradcam": {}, "occlusion": {"window": 8, "stride": 4}}), output=out)
    real_write = pq.write_table
    calls = {"n": 0}

    def dying_write(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard dies half-way through its Parquet file
            where.write(b"PAR1 half a file")
            raise KeyboardInterrupt("killed")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_job(job)
    assert os.listdir(os.path.join(out, "metrics")) == ["part-00000000-00000001.parquet"]  # no partial, no temp
    monkeypatch.setattr(pq, "write_table", real_write)
    report = run_job(job, resume=True)
    assert report.n_skipped == 2 and report.n_processed == 5
    rows = rows_of(out)
    assert len(rows) == 7 * (2 + len(CONTROLS)) and rows.groupby(["image_id", "method"]).size().max() == 1
    # the same maps as the uninterrupted run of the full job
    full = zarr.open_group(os.path.join(finished_run[0], "attributions.zarr"), mode="r")
    resumed = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    for name in ("occlusion", "guided_gradcam"):
        np.testing.assert_allclose(np.nan_to_num(resumed[name][:]), np.nan_to_num(full[name][:]), rtol=1e-5,
                                   atol=1e-7)


def test_cli_runs_and_reports_bad_jobs_in_one_line(image_folder, tmp_path, capsys):
    out = str(tmp_path / "cli")
    path = write_job(tmp_path, image_folder, methods={"guided_gradcam": {}}, sensitivity=None)
    assert cli.main(["run", path, "--out", out, "--set", "data.limit=2"]) == 0
    assert "done: 2 images" in capsys.readouterr().out
    assert len(rows_of(out)) == 2 * (1 + len(CONTROLS))  # guided_gradcam and the control maps

    assert cli.main(["run", path, "--out", out + "-2", "--set", "methods.guided_gradcam.layer=layer9"]) == 2
    start, err = capsys.readouterr().err.strip().splitlines()  # found while the model loads: after the start line
    assert "loading model" in start and "methods.guided_gradcam.layer" in err and "layer4" in err

    assert cli.main(["run", path, "--set", "methods.occlusion.stride=99", "--set", "methods.occlusion.window=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: methods.occlusion.stride")

    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
