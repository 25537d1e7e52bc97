"""The Zarr group for data tools: xarray opens it indexed by image id, metadata is consolidated, and
``output.images_per_object`` stores K images an object (Zarr's sharding codec) with the same maps, fewer objects,
and the same resume guarantees."""

from __future__ import annotations

import io
import json
import os
import shutil

import fsspec
import numpy as np
import pytest
import zarr

from ray_helpers import IDS, rows_of, write_job
from test_s3 import s3_env, s3_server  # noqa: F401 - the real S3 server fixtures
from xcv_batch.config import job_from_mapping, load_job
from xcv_batch.data.sources import ImageRecord
from xcv_batch.driver import plan_shards, run_job
from xcv_batch.errors import ConfigError, OutputError
from xcv_batch.output.layout import written_chunks
from xcv_batch.output.results import open_results
from xcv_batch.output.store import RunStore
from xcv_batch.output.zarr_maps import _read_spans

# Two fast methods keep the runs short; the layout does not depend on which methods run.
FAST = {"methods": {"occlusion": {"window": 8, "stride": 8}, "guided_gradcam": {}}, "sensitivity": None}


def run(tmp_path, folder, out: str, resume: bool = False, **changes):
    job = load_job(write_job(tmp_path / "job.yaml", folder, **FAST, **changes), output=out)
    return run_job(job, resume=resume)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, photo_folder):
    """One image an object: OUT at TMP/results/demo, so the lines of docs/output.md run as they are written."""
    tmp = tmp_path_factory.mktemp("plain")
    run(tmp, photo_folder, str(tmp / "results" / "demo"), output__images_per_object=1)
    return tmp


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, photo_folder):
    """Two images an object, shards of two images (ray_helpers.JOB)."""
    tmp = tmp_path_factory.mktemp("sharded")
    out = str(tmp / "out")
    run(tmp, photo_folder, out, output__images_per_object=2)
    return out


def objects(out: str, array: str) -> list[str]:
    return sorted(os.listdir(os.path.join(out, "attributions.zarr", array, "c")))


def test_xarray_opens_a_finished_run_indexed_by_image_id(plain_run, monkeypatch):
    monkeypatch.chdir(plain_run)
    # --- docs/output.md, "Reading with xarray", verbatim
    import xarray as xr

    ds = xr.open_zarr("results/demo/attributions.zarr")        # one read: the metadata is consolidated
    occlusion = ds["occlusion"].sel(image="chelsea.png")       # (channel, y, x), read lazily
    path = ds["image_path"].sel(image="chelsea.png").item()
    per_method = ds[["occlusion", "guided_gradcam"]].sel(image=["camera.png", "coffee.png"]).load()
    # ---
    res = open_results("results/demo")
    assert list(ds.indexes["image"]) == IDS and ds.sizes == {"image": 5, "channel": 3, "y": 32, "x": 32}
    assert occlusion.dims == ("channel", "y", "x")
    np.testing.assert_array_equal(occlusion.values, res.attribution("chelsea.png", "occlusion"))
    np.testing.assert_array_equal(per_method["guided_gradcam"].sel(image="coffee.png").values,
                                  res.attribution("coffee.png", "guided_gradcam"))
    assert np.isfinite(occlusion.values).all() and np.isnan(ds["occlusion"].sel(image="notes.jpg").values).all()
    assert path == rows_of("results/demo").set_index("image_id").image_path["chelsea.png"].iloc[0]
    assert set(ds.data_vars) == {"inputs", "occlusion", "guided_gradcam"}
    assert ds.attrs["model"] == "resnet18" and "image_ids" not in ds.attrs  # the ids are the index, not an attribute


def test_arrays_name_their_dimensions_and_the_group_is_consolidated(plain_run):
    zarr_dir = os.path.join(plain_run, "results", "demo", "attributions.zarr")
    group_json = json.load(open(os.path.join(zarr_dir, "zarr.json")))
    consolidated = group_json["consolidated_metadata"]["metadata"]
    assert sorted(consolidated) == ["guided_gradcam", "image", "image_path", "inputs", "occlusion"]
    for name in ("inputs", "occlusion", "guided_gradcam"):
        assert consolidated[name]["dimension_names"] == ["image", "channel", "y", "x"]
        assert consolidated[name]["chunk_grid"]["configuration"]["chunk_shape"] == [1, 3, 32, 32]  # no sharding
    assert consolidated["image"]["dimension_names"] == consolidated["image_path"]["dimension_names"] == ["image"]
    group = zarr.open_group(zarr_dir, mode="r")
    assert group.metadata.consolidated_metadata is not None
    assert list(group["image"][:]) == IDS
    assert open_results(os.path.join(plain_run, "results", "demo")).image_ids == IDS


def test_sharded_layout_stores_k_images_an_object_with_the_same_maps(plain_run, sharded_run):
    plain = os.path.join(plain_run, "results", "demo")
    for array in ("inputs", "occlusion", "guided_gradcam"):
        # 4 usable images: one object each; or two a object — the third object would hold only notes.jpg, which has
        # no map, so it is never written
        assert objects(plain, array) == ["0", "1", "2", "3"]
        assert objects(sharded_run, array) == ["0", "1"]
        assert os.listdir(os.path.join(sharded_run, "attributions.zarr", array, "c", "1")) == ["0"]  # c/1/0/0/0
    group = zarr.open_group(os.path.join(sharded_run, "attributions.zarr"), mode="r")
    assert group["occlusion"].shards == (2, 3, 32, 32) and group["occlusion"].chunks == (1, 3, 32, 32)
    assert written_chunks(fsspec.filesystem("file"), sharded_run, "occlusion") == {0, 1, 2, 3}
    names = ["inputs", "occlusion", "guided_gradcam"]
    a, b = maps_of_arrays(plain, names), maps_of_arrays(sharded_run, names)
    for name in names:
        np.testing.assert_array_equal(a[name], b[name])  # NaN where the same images failed
    import xarray as xr

    ds = xr.open_zarr(os.path.join(sharded_run, "attributions.zarr"))
    np.testing.assert_array_equal(ds["occlusion"].sel(image="chelsea.png").values,
                                  open_results(plain).attribution("chelsea.png", "occlusion"))


def maps_of_arrays(out: str, names: list[str]) -> dict[str, np.ndarray]:
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    return {name: group[name][:] for name in names}


def test_resume_recomputes_a_shard_whose_object_was_deleted(sharded_run, tmp_path, photo_folder):
    out = str(tmp_path / "out")
    shutil.copytree(sharded_run, out)
    shutil.rmtree(os.path.join(out, "attributions.zarr", "occlusion", "c", "1"))  # images 2 and 3
    # the job file says 1 now: the layout in OUT decides
    report = run(tmp_path, photo_folder, out, resume=True, output__images_per_object=1)
    assert list(report.recomputed) == ["part-00000002-00000003.parquet"]
    assert "occlusion of image 2" in report.recomputed["part-00000002-00000003.parquet"]
    assert (report.n_skipped, report.n_processed) == (3, 2)
    assert objects(out, "occlusion") == ["0", "1"]
    assert zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")["occlusion"].shards[0] == 2
    rows = rows_of(out)
    assert len(rows) == 5 * 2 and rows.groupby(["image_id", "method"]).size().max() == 1
    names = ["inputs", "occlusion", "guided_gradcam"]
    a, b = maps_of_arrays(sharded_run, names), maps_of_arrays(out, names)
    for name in names:
        np.testing.assert_array_equal(a[name], b[name])


def test_resume_refuses_shards_that_would_split_the_outs_objects(sharded_run, tmp_path, photo_folder):
    with pytest.raises(OutputError, match="stores 2 images per object, which does not divide compute.shard_size"):
        run(tmp_path, photo_folder, sharded_run, resume=True, compute__shard_size=3)


def test_images_per_object_must_be_positive_and_divide_the_shard_size():
    with pytest.raises(ConfigError, match=r"^output.images_per_object: must be 'auto' or ≥ 1, got 0$"):
        job_from_mapping({"methods": {"lime": {}}, "output": {"images_per_object": 0}})
    with pytest.raises(ConfigError, match=r"^output.images_per_object: must divide compute.shard_size \(32\)"):
        job_from_mapping({"methods": {"lime": {}}, "output": {"images_per_object": 5}})
    job = job_from_mapping({"methods": {"lime": {}}, "output": {"images_per_object": 8}})
    assert job.output.images_per_object == 8
    assert job.fingerprint() == job_from_mapping({"methods": {"lime": {}}}).fingerprint()  # same maps either way


def test_auto_stores_the_most_images_an_object_that_divides_the_shard_size_within_its_limits():
    def auto(**output_and_compute) -> int:
        compute = {key: output_and_compute.pop(key) for key in ("shard_size",) if key in output_and_compute}
        resolution = output_and_compute.pop("resolution", 32)
        return job_from_mapping({"methods": {"lime": {}}, "model": {"resolution": resolution}, "compute": compute,
                                 "output": output_and_compute}).images_per_object()

    assert job_from_mapping({"methods": {"lime": {}}}).output.images_per_object == "auto"
    assert auto() == 32  # the default shard: one object a shard and array
    assert auto(shard_size=1000) == 250  # at most 256 images
    assert auto(shard_size=97) == 97 and auto(shard_size=257) == 1  # a prime above 256: one image an object
    # 224 px: an input is 602,112 bytes, so 16 MiB holds 27 of them; the most that divides the shard within that
    assert auto(resolution=224) == 16 and auto(resolution=224, shard_size=1000) == 25
    # without the inputs, float16 sums: 100,352 bytes an image, 167 in 16 MiB
    assert auto(resolution=224, shard_size=1000, inputs=False, dtype="float16", channels="sum") == 125
    assert auto(images_per_object=1, shard_size=1000) == 1  # a number is kept


def test_a_default_run_stores_a_shard_an_object_and_resumes_an_out_of_one_image_an_object_as_it_is(
        plain_run, tmp_path, photo_folder):
    out = str(tmp_path / "auto")
    run(tmp_path, photo_folder, out)  # shards of 2 images (ray_helpers.JOB): 2 images an object
    assert zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")["occlusion"].shards[0] == 2
    names = ["inputs", "occlusion", "guided_gradcam"]
    plain = os.path.join(plain_run, "results", "demo")
    a, b = maps_of_arrays(plain, names), maps_of_arrays(out, names)
    for name in names:
        np.testing.assert_array_equal(a[name], b[name])
    resumed = str(tmp_path / "resumed")
    shutil.copytree(plain, resumed)
    shutil.rmtree(os.path.join(resumed, "attributions.zarr", "occlusion", "c", "1"))  # image 1, one image an object
    report = run(tmp_path, photo_folder, resumed, resume=True)
    assert report.n_processed == 2 and objects(resumed, "occlusion") == ["0", "1", "2", "3"]
    assert zarr.open_group(os.path.join(resumed, "attributions.zarr"), mode="r")["occlusion"].shards is None


def shard_indices(n: int, shard_size: int, done: set[int], per_object: int) -> list[list[int]]:
    records = [ImageRecord(f"{i}.png", f"/x/{i}.png") for i in range(n)]
    return [[index for index, _ in shard.items] for shard in plan_shards(records, shard_size, done, per_object)]


def test_planned_shards_own_whole_objects():
    assert shard_indices(10, 8, set(), 4) == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]]
    # resumed after one-image shards committed 1, 4 and 5: image 0 and 2-3 share object 0, so they stay together
    assert shard_indices(10, 8, {1, 4, 5}, 4) == [[0, 2, 3], [6, 7, 8, 9]]
    assert shard_indices(10, 4, {2}, 2) == [[0, 1], [3, 4, 5], [6, 7, 8, 9]]
    # one image an object: shards end at committed images and after shard_size images, as always
    assert shard_indices(10, 4, {1, 4, 5}, 1) == [[0], [2, 3], [6, 7, 8, 9]]


def test_the_writer_writes_whole_objects_and_never_touches_images_it_did_not_write(tmp_path):
    store = RunStore(str(tmp_path / "out"))
    ids = [f"img{i}.png" for i in range(6)]
    store.prepare("name: t\n", "abc", ids, 4, ["lime"], {}, resume=False, images_per_object=4)
    image = lambda value: np.full((3, 4, 4), value, dtype=np.float32)  # noqa: E731
    writer = store.open_arrays()
    for index in range(4):
        writer.write("lime", index, image(index))
    assert objects(store.out, "lime") == ["0"]  # complete: written at once
    writer.write("lime", 5, image(5))
    assert objects(store.out, "lime") == ["0"]  # object 1 (images 4, 5) waits for image 4 or the flush
    writer.flush()
    other = store.open_arrays()  # image 4 alone, later: a read-merge-write of object 1
    other.write("lime", 4, image(4))
    other.flush()
    maps = zarr.open_group(f"{store.out}/attributions.zarr", mode="r")["lime"][:]
    assert [float(m[0, 0, 0]) for m in maps] == [0, 1, 2, 3, 4, 5]
    assert written_chunks(store.fs, store.root, "lime") == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("per_object", [1, 4])
@pytest.mark.parametrize("storage", [{}, {"dtype": "float16", "channels": "sum"}])
def test_several_maps_read_together_equal_zarrs_own_reads(tmp_path, per_object, storage):
    """The reader's own path (an object's wanted chunks in one read) gives zarr's values: missing images NaN, any
    order and repeats, float16 and summed channels; a damaged object is read through zarr, which names it."""
    store = RunStore(str(tmp_path / "out"))
    ids = [f"img{i}.png" for i in range(8)]
    store.prepare("name: t\n", "abc", ids, 4, ["lime"], {}, resume=False, images_per_object=per_object,
                  storage=storage)
    writer = store.open_arrays()
    rng = np.random.default_rng(0)
    for index in [0, 1, 2, 5, 6, 7]:  # images 3 and 4 never written
        writer.write("lime", index, rng.normal(size=(3, 4, 4)).astype(np.float32))
    writer.flush()
    reader = open_results(store.out).maps
    wanted = [6, 0, 3, 2, 2, 7, 4, 5]
    expected = zarr.open_group(f"{store.out}/attributions.zarr", mode="r")["lime"].get_orthogonal_selection(
        (np.array(wanted),)).astype(np.float32)
    assert reader._direct_codec("lime") is not None  # the layout this module writes: read without zarr
    got = reader.read_many("lime", wanted)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[2]).all() and np.isnan(got[6]).all()
    # the object holding image 5 damaged: the error names its chunk file, as a read of that image alone does
    path = os.path.join(store.out, "attributions.zarr", "lime", "c", str(5 // per_object), "0", "0", "0")
    with open(path, "r+b") as f:
        f.seek(2)
        f.write(b"\xff" * 6)
    with pytest.raises(OutputError, match=f"c/{5 // per_object}/0/0/0 cannot be decoded"):
        reader.read_many("lime", [0, 5])


def test_chunks_back_to_back_are_read_in_one_go_and_no_byte_between_them():
    class Counted(io.BytesIO):
        reads: list = []

        def read(self, n=-1):
            self.reads.append((self.tell(), n))
            return super().read(n)

    fh = Counted(bytes(range(100)))
    found = _read_spans(fh, {"a": (10, 5), "b": (15, 5), "c": (40, 3), "d": (20, 2)})
    assert found == {"a": bytes(range(10, 15)), "b": bytes(range(15, 20)), "d": bytes([20, 21]),
                     "c": bytes([40, 41, 42])}
    assert fh.reads == [(10, 12), (40, 3)]


def test_a_sharded_out_on_s3_reads_back_and_lists_its_objects(s3_env):  # noqa: F811
    fs = fsspec.filesystem("s3")
    fs.mkdir("layout-bucket")
    store = RunStore("s3://layout-bucket/run")
    ids = [f"img{i}.png" for i in range(5)]
    store.prepare("name: t\n", "abc", ids, 4, ["lime"], {"model": "resnet18"}, resume=False,
                  image_paths=[f"s3://data/{i}" for i in ids], images_per_object=2)
    writer = store.open_arrays()
    for index in (0, 1, 2, 4):
        writer.write("lime", index, np.full((3, 4, 4), index, dtype=np.float32))
    writer.flush()
    store.finish()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("layout-bucket/run/attributions.zarr/lime/c")) == ["0", "1", "2"]
    # object 1 is images 2 and 3; its shard index says that only image 2 was written
    assert written_chunks(fs, "layout-bucket/run", "lime") == {0, 1, 2, 4}
    assert store.layout_images_per_object() == 2
    res = open_results("s3://layout-bucket/run")
    assert res.image_ids == ids and res.maps.group.metadata.consolidated_metadata is not None
    assert float(res.attribution("img4.png", "lime")[0, 0, 0]) == 4.0
    assert np.isnan(res.attribution("img3.png", "lime")).all()
    import xarray as xr

    ds = xr.open_zarr("s3://layout-bucket/run/attributions.zarr")
    assert ds["image_path"].sel(image="img2.png").item() == "s3://data/img2.png"
    assert float(ds["lime"].sel(image="img2.png")[0, 0, 0]) == 2.0


def test_one_image_tasks_of_one_object_never_run_at_the_same_time():
    """A split shard's images go one by one to the Ray workers; with two images an object, the task of image 1 waits
    while image 0's runs (both would rewrite object 0), and other objects' tasks go ahead."""
    from collections import deque

    from xcv_batch.driver.actors import RayExecutor, _Slot, _Task
    from xcv_batch.work import Shard

    def task(*indices):
        return _Task(Shard(tuple((i, ImageRecord(f"{i}.png", f"/x/{i}.png")) for i in indices)))

    job = job_from_mapping({"methods": {"lime": {}}, "output": {"images_per_object": 2}, "compute": {"shard_size": 2}})
    executor = RayExecutor(job)
    running = _Slot(actor=None, ready_ref=None)
    executor.slots = [running, _Slot(actor=None, ready_ref=None)]
    executor._pending = deque([task(1), task(2, 3)])
    running.calls.append((None, task(0), 0.0))
    assert [i for i, _ in executor._next_task().shard.items] == [2, 3]
    assert executor._next_task() is None  # image 1 waits for image 0
    running.calls.clear()
    assert [i for i, _ in executor._next_task().shard.items] == [1]


def test_an_out_from_before_the_image_array_still_reads_and_resumes(plain_run, tmp_path, photo_folder):
    out = str(tmp_path / "old")
    shutil.copytree(os.path.join(plain_run, "results", "demo"), out)
    zarr_dir = os.path.join(out, "attributions.zarr")
    # as earlier versions wrote it: the ids in the group's attributes, no id or path arrays, nothing consolidated
    for name in ("image", "image_path"):
        shutil.rmtree(os.path.join(zarr_dir, name))
    with open(os.path.join(zarr_dir, "zarr.json")) as fh:
        group_json = json.load(fh)
    group_json.pop("consolidated_metadata")
    group_json["attributes"]["image_ids"] = IDS
    with open(os.path.join(zarr_dir, "zarr.json"), "w") as fh:
        json.dump(group_json, fh)

    res = open_results(out)
    assert res.image_ids == IDS and res.stored_image_ids == IDS
    np.testing.assert_array_equal(res.attribution("chelsea.png", "occlusion"),
                                  open_results(os.path.join(plain_run, "results", "demo")).attribution("chelsea.png",
                                                                                                       "occlusion"))
    report = run(tmp_path, photo_folder, out, resume=True)  # the id check reads the attribute
    assert (report.n_skipped, report.n_processed) == (5, 0)
    consolidated = zarr.open_group(zarr_dir, mode="r").metadata.consolidated_metadata
    assert consolidated is not None and sorted(consolidated.metadata) == ["guided_gradcam", "inputs", "occlusion"]


def test_summarize_counts_the_images_from_the_image_array(plain_run):
    from xcv_batch.report.summarize import summarize

    summary = summarize(os.path.join(plain_run, "results", "demo"), n_boot=20)
    assert summary.run.n_expected == 5 and summary.run.complete is True


def test_an_image_that_kills_its_workers_leaves_its_objects_neighbour_intact(ray_session, reference_run, tmp_path,
                                                                             photo_folder, monkeypatch):
    """camera.png and chelsea.png share object 0; chelsea kills every worker that computes it. The shard is split
    into one-image tasks (never two at once on one object: test_one_image_tasks_of_one_object_never_run_at_the_same_
    time), each of which merges its image into object 0: chelsea's error, its map reset to NaN, keeps camera's."""
    from ray_helpers import METHODS, assert_same_results, maps_of, ray_run
    from xcv_batch.driver.faults import ENV as FAULTS_ENV

    monkeypatch.setenv(FAULTS_ENV, "kill:chelsea.png:always")
    out, report = ray_run(tmp_path, photo_folder, compute__workers=2, output__images_per_object=2)
    rows = rows_of(out)
    assert rows[rows.image_id == "chelsea.png"].error.unique().tolist() == [
        "worker died 2 times while processing this image"]
    assert report.retries == 2 + 2 and report.n_failed == 2
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out), rows=[0, 2, 3, 4])
    assert np.isnan(maps_of(out)["occlusion"][1]).all()
    for name in ("inputs", *METHODS):
        assert objects(out, name) == ["0", "1"]
