"""A map format is one file and one registration: a toy format (one ``.npy`` file per image and array), defined and
registered here as the docs' "A new map format" recipe says, gets a run, a resume, ``open_results`` and a ``show``
panel equal to the Zarr run's."""

from __future__ import annotations

import json
import os
import shutil

import fsspec
import numpy as np
import pytest

from ray_helpers import rows_of, write_job
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import OutputError
from xcv_batch.output.formats import MapFormatSpec, MapUnreadable, StoredMaps, registered
from xcv_batch.output.results import open_results


# --------------------------------------------------------------------------------------------- the toy format


class NpyWriter:
    """``OUT/maps/<array>/<index>.npy``, one file per image and array, and ``OUT/maps/layout.json``."""

    folder = "maps"

    def __init__(self, out: str):
        self.fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
        self.dir = f"{root}/{self.folder}"

    def prepare(self, layout, resume: bool) -> None:
        if resume and self.fs.exists(f"{self.dir}/layout.json"):
            if json.loads(self.fs.cat_file(f"{self.dir}/layout.json"))["image_ids"] != list(layout.image_ids):
                raise OutputError("OUT was made from a different image list")
            return
        if self.fs.exists(self.dir):
            self.fs.rm(self.dir, recursive=True)
        for array in layout.arrays:
            self.fs.makedirs(f"{self.dir}/{array}", exist_ok=True)
        description = {"image_ids": list(layout.image_ids), "resolution": layout.resolution,
                       "arrays": list(layout.arrays), "attrs": {"fingerprint": layout.fingerprint, **layout.attrs}}
        self.fs.pipe_file(f"{self.dir}/layout.json", json.dumps(description).encode())

    def images_per_object(self) -> int | None:
        return 1 if self.fs.exists(f"{self.dir}/layout.json") else None

    def open_shard(self) -> "NpyWriter":  # each map is written as it comes: nothing to flush
        return self

    def write(self, name: str, index: int, values: np.ndarray) -> None:
        with self.fs.open(f"{self.dir}/{name}/{index}.npy", "wb") as fh:
            np.save(fh, np.asarray(values, dtype=np.float32))

    def flush(self) -> None:
        pass

    def check(self, arrays) -> "NpyCheck":
        return NpyCheck(self, arrays)

    def finish(self) -> None:
        pass


class NpyCheck:
    def __init__(self, writer: NpyWriter, arrays):
        self.writer = writer
        self.stored = {array: _indices(writer.fs, f"{writer.dir}/{array}") for array in arrays}
        self.failed: set[tuple[int, str]] = set()

    def problem(self, maps) -> str | None:
        missing = [(index, array) for index, array in maps if index not in self.stored.get(array, ())]
        return f"{len(missing)} maps that are missing (first: {missing[0][1]} of image {missing[0][0]})" if missing \
            else None

    def decode(self, maps) -> None:
        for index, array in maps:
            try:
                np.load(self.writer.fs.open(f"{self.writer.dir}/{array}/{index}.npy", "rb"))
            except (OSError, ValueError):
                self.failed.add((index, array))

    def decode_problem(self, maps) -> str | None:
        bad = [pair for pair in maps if pair in self.failed]
        return f"{len(bad)} maps that cannot be decoded" if bad else None

    def clean(self) -> None:
        pass


class NpyReader:
    folder = "maps"

    def __init__(self, out: str):
        self.fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
        self.dir = f"{root}/{self.folder}"
        path = f"{self.dir}/layout.json"
        self.layout = json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def exists(self) -> bool:
        return self.layout is not None

    def attrs(self) -> dict:
        return self.layout["attrs"] if self.layout else {}

    def image_ids(self) -> list[str] | None:
        return self.layout["image_ids"] if self.layout else None

    def has_array(self, name: str) -> bool:
        return name in self.layout["arrays"]

    def read(self, name: str, index: int) -> np.ndarray:
        path = f"{self.dir}/{name}/{index}.npy"
        if not self.fs.exists(path):
            resolution = self.layout["resolution"]
            return np.full((3, resolution, resolution), np.nan, dtype=np.float32)
        try:
            with self.fs.open(path, "rb") as fh:
                return np.load(fh)
        except (OSError, ValueError) as err:
            raise MapUnreadable(path, str(err)) from None

    def stored(self, name: str) -> StoredMaps:
        return StoredMaps(frozenset(_indices(self.fs, f"{self.dir}/{name}")), {})


def _indices(fs, folder: str) -> set[int]:
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return set()
    return {int(path.rsplit("/", 1)[-1][:-4]) for path in fs.ls(folder, detail=False) if path.endswith(".npy")}


NPY = MapFormatSpec(name="npy", writer=f"{__name__}:NpyWriter", reader=f"{__name__}:NpyReader")


# --------------------------------------------------------------------------------------------- the tests

JOB = {
    "name": "formats",
    "seed": 3,
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 4}},
    "sensitivity": None,
    "controls": False,  # the formats store what the methods give; the control maps have tests of their own
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "shard_size": 2},
}
METHODS = ["occlusion", "integrated_gradients"]


@pytest.fixture(scope="module")
def npy_format():
    with registered(NPY):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photo_folder, npy_format):
    """The same job run into Zarr (the default) and into the toy format."""
    tmp = tmp_path_factory.mktemp("formats")
    zarr_job = write_job(tmp / "zarr.yaml", photo_folder, job=JOB)
    npy_job = write_job(tmp / "npy.yaml", photo_folder, job=JOB, output__format="npy")
    run_job(load_job(zarr_job, output=str(tmp / "zarr")))
    run_job(load_job(npy_job, output=str(tmp / "npy")))
    return zarr_job, str(tmp / "zarr"), str(tmp / "npy")


def assert_same_maps(out_a: str, out_b: str) -> None:
    a, b = open_results(out_a), open_results(out_b)
    assert a.image_ids == b.image_ids and a.methods == b.methods and sorted(a.methods) == sorted(METHODS)
    for image_id in a.image_ids:
        for method in METHODS:
            np.testing.assert_array_equal(a.attribution(image_id, method), b.attribution(image_id, method))
        np.testing.assert_array_equal(a.input_image(image_id), b.input_image(image_id))


def test_a_registered_format_runs_and_reads_back_what_zarr_does(runs):
    _, zarr_out, npy_out = runs
    assert sorted(os.listdir(npy_out)) == ["job.yaml", "maps", "metrics"]
    assert sorted(os.listdir(os.path.join(npy_out, "maps", "occlusion"))) == ["0.npy", "1.npy", "2.npy", "3.npy"]
    assert open_results(npy_out).job["output"]["format"] == "npy"
    keys = ["image_id", "index", "method", "target", "target_prob", "status", "error"]
    assert rows_of(npy_out)[keys].equals(rows_of(zarr_out)[keys])
    assert open_results(npy_out).rows()[keys].equals(open_results(zarr_out).rows()[keys])
    assert open_results(npy_out).attrs == json.loads(json.dumps(open_results(zarr_out).attrs))
    assert_same_maps(zarr_out, npy_out)


def test_a_resume_keeps_the_format_out_was_laid_out_with_and_recomputes_a_shard_whose_maps_are_gone(runs, tmp_path):
    zarr_job, zarr_out, npy_out = runs
    out = str(tmp_path / "npy")
    shutil.copytree(npy_out, out)
    os.remove(os.path.join(out, "maps", "occlusion", "2.npy"))  # image 2 (coffee.png) lies in shard 2-3
    report = run_job(load_job(zarr_job, output=out), resume=True)  # the job names no format: OUT's is kept
    assert list(report.recomputed) == ["part-00000002-00000003.parquet"]
    assert "occlusion of image 2" in report.recomputed["part-00000002-00000003.parquet"]
    assert (report.n_skipped, report.n_processed) == (3, 2)
    assert not os.path.exists(os.path.join(out, "attributions.zarr"))
    assert_same_maps(zarr_out, out)


def test_show_draws_the_same_panel_from_either_format(runs, tmp_path):
    _, zarr_out, npy_out = runs
    panels = []
    for out in (zarr_out, npy_out):
        path = str(tmp_path / f"{os.path.basename(out)}.png")
        assert cli.main(["show", out, "--image", "chelsea.png", "--output", path]) == 0
        panels.append(open(path, "rb").read())
    assert panels[0] == panels[1]


def test_an_out_of_a_format_no_longer_registered_is_named(runs):
    _, _, npy_out = runs
    from xcv_batch.output import formats

    formats.unregister("npy")
    try:
        with pytest.raises(OutputError, match="laid out with map format 'npy', which is not registered"):
            open_results(npy_out).attribution("camera.png", "occlusion")
    finally:
        formats.register(NPY)
