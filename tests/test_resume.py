"""``--resume`` trusts nothing it can check cheaply: committed shards whose maps are gone, unreadable Parquet files
and a deleted Zarr group are recomputed, and readers never present a missing map as ``ok``."""

from __future__ import annotations

import os
import shutil

import pytest

from ray_helpers import assert_same_results, maps_of, rows_of, write_job
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import OutputError
from xcv_batch.output.results import open_results
from xcv_batch.report.summarize import summarize


@pytest.fixture(scope="module")
def finished(tmp_path_factory, photo_folder):
    """ray_helpers.JOB over the photo folder (5 images, shards of 2, notes.jpg unusable), one image an object (so a
    map's chunk file is one image's), run once, never changed."""
    tmp = tmp_path_factory.mktemp("resume")
    job_file = write_job(tmp / "job.yaml", photo_folder, output__images_per_object=1)
    out = str(tmp / "out")
    run_job(load_job(job_file, output=out))
    return job_file, out


@pytest.fixture
def copy_of(finished, tmp_path):
    job_file, out = finished
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    return job_file, out, copy


def chunk_path(out: str, method: str, index: int) -> str:
    return os.path.join(out, "attributions.zarr", method, "c", str(index))


def resume(job_file: str, out: str):
    return run_job(load_job(job_file, output=out), resume=True)


def test_a_deleted_map_chunk_makes_resume_recompute_its_shard(copy_of):
    job_file, reference, out = copy_of
    shutil.rmtree(chunk_path(out, "lime", 2))  # image 2 (coffee.png) lies in shard 2-3
    report = resume(job_file, out)
    assert list(report.recomputed) == ["part-00000002-00000003.parquet"]
    assert "lime of image 2" in report.recomputed["part-00000002-00000003.parquet"]
    assert (report.n_skipped, report.n_processed) == (3, 2)
    assert os.listdir(os.path.join(out, "metrics", "_rejected")) == ["part-00000002-00000003.parquet"]
    assert_same_results(rows_of(out), rows_of(reference), maps_of(out), maps_of(reference))


def test_readers_show_a_missing_map_as_an_error_never_as_ok(copy_of, capsys):
    _, _, out = copy_of
    shutil.rmtree(chunk_path(out, "occlusion", 0))
    rows = open_results(out).rows()
    lost = rows[(rows["index"] == 0) & (rows["method"] == "occlusion")].iloc[0]
    assert lost.status == "error" and "map missing from attributions.zarr" in lost.error
    assert (rows[rows["index"] == 1].status == "ok").all()  # the other images keep their rows
    summary = summarize(open_results(out), n_boot=50)
    assert summary.methods["occlusion"].n_error == 2  # notes.jpg and the lost map
    assert cli.main(["show", out, "--image", "camera.png", "--output", os.path.join(out, "camera.png")]) == 0


def test_resume_after_the_zarr_group_was_deleted_recomputes_every_map(copy_of):
    job_file, reference, out = copy_of
    shutil.rmtree(os.path.join(out, "attributions.zarr"))
    report = resume(job_file, out)
    # shard 4-4 holds only notes.jpg, an error row with no map: it stays committed
    assert sorted(report.recomputed) == ["part-00000000-00000001.parquet", "part-00000002-00000003.parquet"]
    assert (report.n_skipped, report.n_processed) == (1, 4)
    assert_same_results(rows_of(out), rows_of(reference), maps_of(out), maps_of(reference))


def test_a_truncated_parquet_file_is_named_then_recomputed_on_resume(copy_of, capsys):
    job_file, reference, out = copy_of
    broken = os.path.join(out, "metrics", "part-00000000-00000001.parquet")
    with open(broken, "rb") as fh:
        data = fh.read()
    with open(broken, "wb") as fh:
        fh.write(data[: len(data) // 2])

    assert cli.main(["summarize", out, "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "part-00000000-00000001.parquet is not readable Parquet" in err

    report = resume(job_file, out)
    assert list(report.recomputed) == ["part-00000000-00000001.parquet"]
    assert report.n_processed == 2
    assert_same_results(rows_of(out), rows_of(reference), maps_of(out), maps_of(reference))


def test_resume_refuses_other_weights_under_the_same_path(tmp_path, photo_folder):
    import torch
    import torchvision

    weights = tmp_path / "net.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    job_file = write_job(tmp_path / "job.yaml", photo_folder, model__weights=str(weights), data__limit=1,
                         methods={"guided_gradcam": {}}, sensitivity=None)
    out = str(tmp_path / "out")
    run_job(load_job(job_file, output=out))
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # another model, same path
    with pytest.raises(OutputError, match="different job"):
        resume(job_file, out)
