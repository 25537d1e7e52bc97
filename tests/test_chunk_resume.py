"""``--resume`` checks the chunk files themselves, not their folders: a lost, empty or truncated chunk (and, with
``--verify``, one that cannot be decoded) makes its shard recompute, to the same maps bit for bit; readers name a
damaged chunk file instead of crashing on it; and a truncated Parquet file is named, not pyarrow's '<Buffer>'."""

from __future__ import annotations

import os
import shutil

import fsspec
import numpy as np
import pytest
import zarr

from ray_helpers import assert_same_results, rows_of, write_job
from test_s3 import s3_env, s3_server  # noqa: F401 - the real S3 server fixtures
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.output.results import open_results

# Two fast, deterministic methods over photo_folder (5 images, notes.jpg unusable), shards of two images.
FAST = {"methods": {"occlusion": {"window": 8, "stride": 8}, "guided_gradcam": {}}, "sensitivity": None}
ARRAYS = ["inputs", "occlusion", "guided_gradcam"]


def finished_run(tmp, folder, out: str, **changes) -> tuple[str, str]:
    job_file = write_job(tmp / "job.yaml", folder, **FAST, **changes)
    run_job(load_job(job_file, output=out))
    return job_file, out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, photo_folder):
    """One image a chunk file: (job file, OUT), never changed."""
    tmp = tmp_path_factory.mktemp("plain")
    return finished_run(tmp, photo_folder, str(tmp / "out"), output__images_per_object=1)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, photo_folder):
    """Two images an object (Zarr's sharding codec): (job file, OUT), never changed."""
    tmp = tmp_path_factory.mktemp("sharded")
    return finished_run(tmp, photo_folder, str(tmp / "out"), output__images_per_object=2)


def copy(run, tmp_path) -> tuple[str, str, str]:
    job_file, reference = run
    out = str(tmp_path / "out")
    shutil.copytree(reference, out)
    return job_file, reference, out


def chunk(out: str, array: str, obj: int) -> str:
    return os.path.join(out, "attributions.zarr", array, "c", str(obj), "0", "0", "0")


def maps(out: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(f"{out.rstrip('/')}/attributions.zarr", mode="r")
    return {name: group[name][:] for name in ARRAYS}


def assert_same_as(out: str, reference: str) -> None:
    """The same rows and, bit for bit, the same maps and inputs as the undisturbed run."""
    a, b = maps(out), maps(reference)
    assert_same_results(rows_of(out), rows_of(reference), a, b)
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name], b[name])


def cut(path: str, keep) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: keep(len(data))])


def flip_middle(path: str) -> None:
    """Overwrite 8 bytes in the middle of the file: same size, damaged content."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    middle = len(data) // 2
    data[middle - 4: middle + 4] = bytes(b ^ 0xFF for b in data[middle - 4: middle + 4])
    with open(path, "wb") as fh:
        fh.write(bytes(data))


def resume(job_file: str, out: str):
    return run_job(load_job(job_file, output=out), resume=True)


def cli_resume(job_file: str, out: str, capsys, *flags: str) -> list[str]:
    """``run --resume`` through the CLI; returns its warning lines."""
    capsys.readouterr()
    assert cli.main(["run", job_file, "--out", out, "--resume", *flags]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_a_lost_chunk_file_whose_folders_remain_is_recomputed(plain, tmp_path):
    job_file, reference, out = copy(plain, tmp_path)
    os.remove(chunk(out, "occlusion", 2))  # the file only: c/2/0/0/ stays behind, empty
    assert os.path.isdir(os.path.dirname(chunk(out, "occlusion", 2)))
    report = resume(job_file, out)
    assert list(report.recomputed) == ["part-00000002-00000003.parquet"]
    assert "occlusion of image 2" in report.recomputed["part-00000002-00000003.parquet"]
    assert (report.n_skipped, report.n_processed) == (3, 2)
    assert os.listdir(os.path.join(out, "metrics", "_rejected")) == ["part-00000002-00000003.parquet"]
    assert_same_as(out, reference)


def test_a_lost_object_recomputes_both_of_its_images(sharded, tmp_path):
    job_file, reference, out = copy(sharded, tmp_path)
    os.remove(chunk(out, "guided_gradcam", 0))  # images 0 and 1
    assert np.isnan(maps(out)["guided_gradcam"][:2]).all()
    report = resume(job_file, out)
    assert list(report.recomputed) == ["part-00000000-00000001.parquet"]
    assert "guided_gradcam of image 0" in report.recomputed["part-00000000-00000001.parquet"]
    assert (report.n_skipped, report.n_processed) == (3, 2)
    assert_same_as(out, reference)


def test_the_size_checks_catch_empty_short_and_truncated_chunks(plain, sharded, tmp_path):
    # One image a chunk (zstd): only what no zstd frame can be is certainly broken: empty, or under 9 bytes.
    job_file, reference, out = copy(plain, tmp_path / "plain")
    cut(chunk(out, "occlusion", 0), lambda n: 4)
    cut(chunk(out, "inputs", 3), lambda n: 0)
    report = resume(job_file, out)
    assert sorted(report.recomputed) == ["part-00000000-00000001.parquet", "part-00000002-00000003.parquet"]
    first, second = (report.recomputed[name] for name in sorted(report.recomputed))
    assert f"{out}/attributions.zarr/occlusion/c/0/0/0/0 has 4 bytes, fewer than the smallest zstd chunk" in first
    assert f"{out}/attributions.zarr/inputs/c/3/0/0/0 is empty (0 bytes)" in second
    assert all(reason.endswith("recomputing its shard") for reason in report.recomputed.values())
    assert_same_as(out, reference)

    # Sharded: the shard index at the object's end (with its crc32c) proves a truncated object broken.
    job_file, reference, out = copy(sharded, tmp_path / "sharded")
    cut(chunk(out, "occlusion", 1), lambda n: n // 2)  # images 2 and 3
    report = resume(job_file, out)
    assert list(report.recomputed) == ["part-00000002-00000003.parquet"]
    assert (f"{out}/attributions.zarr/occlusion/c/1/0/0/0 fails its shard index checksum"
            in report.recomputed["part-00000002-00000003.parquet"])
    assert report.n_processed == 2
    assert_same_as(out, reference)


def test_verify_decodes_every_committed_chunk_and_recomputes_what_does_not_decode(plain, tmp_path, capsys):
    job_file, reference, out = copy(plain, tmp_path)
    flip_middle(chunk(out, "occlusion", 1))  # same size: no listing can tell
    cut(chunk(out, "guided_gradcam", 2), lambda n: n // 2)  # still longer than any zstd frame's minimum
    assert os.path.getsize(chunk(out, "guided_gradcam", 2)) >= 9
    arrays = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    for array, index in (("occlusion", 1), ("guided_gradcam", 2)):
        with pytest.raises(Exception):  # the damage is one the decoder sees
            arrays[array][index]

    report = resume(job_file, out)  # the cheap check cannot see either: it claims no more than it does
    assert (report.recomputed, report.n_processed) == ({}, 0)

    warnings = cli_resume(job_file, out, capsys, "--verify")
    assert len(warnings) == 2
    assert f"{out}/attributions.zarr/occlusion/c/1/0/0/0 cannot be decoded" in warnings[0]
    assert "part-00000000-00000001.parquet" in warnings[0]
    assert f"{out}/attributions.zarr/guided_gradcam/c/2/0/0/0 cannot be decoded" in warnings[1]
    assert all(line.endswith("recomputing its shard") for line in warnings)
    assert sorted(os.listdir(os.path.join(out, "metrics", "_rejected"))) == [
        "part-00000000-00000001.parquet", "part-00000002-00000003.parquet"]
    assert_same_as(out, reference)
    assert cli_resume(job_file, out, capsys, "--verify") == []  # all whole again


def test_readers_name_a_damaged_chunk_file_instead_of_crashing(plain, sharded, tmp_path, capsys):
    # A truncated object: the rows of both its images are errors naming the file.
    _, _, out = copy(sharded, tmp_path / "sharded")
    damaged = f"{out}/attributions.zarr/occlusion/c/1/0/0/0"
    cut(damaged, lambda n: n // 2)
    rows = open_results(out).rows()
    lost = rows[(rows["method"] == "occlusion") & rows["index"].isin([2, 3])]
    assert list(lost.status) == ["error", "error"]
    assert all(f"map unreadable: {damaged} fails its shard index checksum" in error for error in lost.error)
    assert (rows[(rows["method"] == "guided_gradcam") & (rows["index"] < 4)].status == "ok").all()
    capsys.readouterr()
    assert cli.main(["summarize", out, "--bootstrap", "50"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and os.path.exists(os.path.join(out, "report.html"))
    assert cli.main(["show", out, "--image", "coffee.png", "--output", str(tmp_path / "coffee.png")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"warning: {damaged} cannot be decoded")

    # A chunk of the right size that does not decode: show draws the rest and names the file in one line.
    _, _, out = copy(plain, tmp_path / "plain")
    damaged = f"{out}/attributions.zarr/occlusion/c/0/0/0/0"
    flip_middle(damaged)
    capsys.readouterr()
    assert cli.main(["show", out, "--image", "camera.png", "--output", str(tmp_path / "camera.png")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"warning: {damaged} cannot be decoded")
    assert "--resume --verify" in err and os.path.getsize(tmp_path / "camera.png") > 0
    assert cli.main(["summarize", out, "--bootstrap", "50"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_truncated_parquet_file_is_named_and_said_recomputed_on_resume(plain, tmp_path, capsys):
    job_file, reference, out = copy(plain, tmp_path)
    cut(os.path.join(out, "metrics", "part-00000000-00000001.parquet"), lambda n: n // 2)
    warnings = cli_resume(job_file, out, capsys)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: {out}/metrics/part-00000000-00000001.parquet is not readable Parquet (")
    assert warnings[0].endswith("; recomputing its shard")
    assert "<Buffer>" not in warnings[0] and "run again" not in warnings[0]
    assert_same_as(out, reference)


@pytest.mark.slow  # starts moto's S3 server
def test_lost_and_truncated_objects_under_s3_are_found_on_resume(s3_env, tmp_path, photo_folder):  # noqa: F811
    fs = fsspec.filesystem("s3")
    fs.mkdir("chunks-bucket")
    out = "s3://chunks-bucket/run"
    job_file, _ = finished_run(tmp_path, photo_folder, out, output__images_per_object=2)
    before = maps(out)
    fs.rm("chunks-bucket/run/attributions.zarr/occlusion/c/0/0/0/0")  # images 0 and 1: lost
    truncated = "chunks-bucket/run/attributions.zarr/guided_gradcam/c/1/0/0/0"  # images 2 and 3
    fs.pipe(truncated, fs.cat_file(truncated)[:-10])
    report = resume(job_file, out)
    assert sorted(report.recomputed) == ["part-00000000-00000001.parquet", "part-00000002-00000003.parquet"]
    assert "occlusion of image 0" in report.recomputed["part-00000000-00000001.parquet"]
    assert f"s3://{truncated} " in report.recomputed["part-00000002-00000003.parquet"]
    assert report.n_processed == 4
    after = maps(out)
    for name in ARRAYS:
        np.testing.assert_array_equal(after[name], before[name])


def test_zstd_checksums_turn_damage_that_would_decode_into_an_error(plain, tmp_path, capsys):
    """Without zstd's checksum, a flipped byte among a frame's literals decodes to a wrong map; with it, a flip
    anywhere in the frame is an error (and --verify recomputes the shard)."""
    job_file, reference, out = copy(plain, tmp_path)
    arrays = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    assert all(array.compressors[0].checksum for _, array in arrays.arrays() if array.ndim == 4)
    path = chunk(out, "occlusion", 1)
    with open(path, "rb") as fh:
        whole = fh.read()
    for offset in range(8, len(whole), max(1, len(whole) // 24)):  # past the frame header, across the frame
        damaged = bytearray(whole)
        damaged[offset] ^= 0x01
        with open(path, "wb") as fh:
            fh.write(bytes(damaged))
        with pytest.raises(Exception):
            arrays["occlusion"][1]
    warnings = cli_resume(job_file, out, capsys, "--verify")
    assert len(warnings) == 1 and "occlusion/c/1/0/0/0 cannot be decoded" in warnings[0]
    assert_same_as(out, reference)
