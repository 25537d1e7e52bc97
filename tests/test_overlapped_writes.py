"""Maps stored on a writer thread while the next batch is computed, and chunk files written without zarr's per-call
machinery: the same bytes, a bounded queue, and a failed write that fails its shard before the rows commit."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import zarr
from PIL import Image

from ray_helpers import rows_of, write_job
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import OutputError
from xcv_batch.execution import worker as worker_module
from xcv_batch.execution.tally import STAGES
from xcv_batch.output.background import BackgroundWriter
from xcv_batch.output.formats import MapLayout
from xcv_batch.output.store import RunStore
from xcv_batch.output.zarr_maps import ShardWriter, ZarrWriter
from waiting import wait_until

TINY = {
    "name": "overlap", "seed": 3,
    "model": {"arch": "custom_models:tiny_cnn", "weights": "none", "resolution": 16},
    "methods": {"guided_gradcam": {}, "integrated_gradients": {"n_steps": 2}},
    "sensitivity": None,
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16, "shard_size": 4},
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Nine random 20 px images and one file that is not an image (index 3 in id order)."""
    folder = tmp_path_factory.mktemp("overlap-images")
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    (folder / "im02x.png").write_bytes(b"not an image")
    return folder


def _job(tmp_path, folder, out):
    return load_job(write_job(tmp_path / "job.yaml", folder, TINY), output=str(out))


def _files(out) -> dict[str, bytes]:
    root = os.path.join(out, "attributions.zarr")
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


def _rows(out):
    rows = rows_of(str(out))
    return rows.drop(columns=[c for c in rows.columns if c.endswith("_seconds")])


# ------------------------------------------------------------------------------------------------ chunk files
@pytest.mark.parametrize("dtype,channels,per_object", [("float32", "all", 1), ("float16", "all", 1),
                                                     ("float32", "sum", 1), ("float32", "all", 3),
                                                     ("float16", "sum", 3)])
def test_chunk_files_written_directly_are_the_bytes_zarr_writes(tmp_path, dtype, channels, per_object):
    """Every file of the group equal: one image an object, and K = 3 (object 0 whole, written directly; object 1
    without image 4, merged by zarr); a map equal to the fill value, and a stored map overwritten by it."""
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    maps[2] = np.nan  # a map equal to the fill value: zarr stores no chunk for it
    written = [0, 1, 2, 3, 5] if per_object > 1 else range(6)
    outs = {}
    for way in ("zarr", "direct"):
        out = str(tmp_path / way)
        writer = ZarrWriter(out)
        writer.prepare(MapLayout("f", [f"i{i}" for i in range(6)], None, 8, ["m"], {}, per_object, dtype=dtype,
                                 channels=channels), resume=False)
        # the zarr way: the same writer without its chunk files, every map through zarr's array API
        shard = ShardWriter(writer._open_group("r+")) if way == "zarr" else writer.open_shard()
        assert (shard.files is None) == (way == "zarr")
        for index in written:
            shard.write("m", index, maps[index])
            shard.write("inputs", index, maps[index])
        shard.flush()
        assert (shard._array("m").codec is not None) == (way == "direct")
        again = ShardWriter(writer._open_group("r+")) if way == "zarr" else writer.open_shard()
        again.write("m", 1 if per_object == 1 else 5, np.full((3, 8, 8), np.nan, np.float32))  # overwritten by NaN
        again.flush()
        outs[way] = _files(out)
    if per_object == 1:
        assert "m/c/2/0/0/0" not in outs["zarr"] and "m/c/1/0/0/0" not in outs["zarr"]
        assert "m/c/5/0/0/0" in outs["zarr"]
    else:
        assert sorted(k for k in outs["zarr"] if k.startswith("m/c/")) == ["m/c/0/0/0/0", "m/c/1/0/0/0"]
    assert outs["direct"] == outs["zarr"]
    stored = zarr.open_group(str(tmp_path / "direct" / "attributions.zarr"), mode="r")
    expected = maps.astype(dtype).astype(np.float32) if channels == "all" else None
    if expected is not None:
        np.testing.assert_array_equal(stored["m"][0], expected[0])
        assert np.isnan(stored["m"][2]).all()


@pytest.mark.parametrize("per_object", [1, 2])
def test_chunk_files_on_a_store_that_is_not_local_are_zarr_s_too(per_object):
    """Elsewhere than on a local disk (fsspec's memory file system here, as s3fs) a file is put whole."""
    import fsspec

    maps = np.random.default_rng(2).normal(size=(4, 3, 8, 8)).astype(np.float32)
    maps[1] = np.nan
    fs, stored = fsspec.filesystem("memory"), {}
    for way in ("zarr", "direct"):
        writer = ZarrWriter(f"memory://overlap-{per_object}/{way}")
        writer.prepare(MapLayout("f", [f"i{i}" for i in range(4)], None, 8, ["m"], {}, per_object), resume=False)
        shard = ShardWriter(writer._open_group("r+")) if way == "zarr" else writer.open_shard()
        for index in range(4):
            shard.write("m", index, maps[index])
        shard.flush()
        root = f"/overlap-{per_object}/{way}"
        stored[way] = {path[len(root):]: fs.cat_file(path) for path in fs.find(root)}
    assert stored["direct"] == stored["zarr"]
    assert sum("/m/c/" in path for path in stored["zarr"]) == (3 if per_object == 1 else 2)


def test_the_local_chunk_listing_finds_what_the_file_systems_listing_finds(tmp_path):
    """--resume's listing of a local OUT (one listing of c/ and a stat per object) against fsspec's recursive one,
    with chunks, an empty one, stray files and folders, and a folder where a chunk file belongs."""
    import fsspec

    from xcv_batch.output.chunks import _listed_chunk_files, _local_chunk_files

    writer = ZarrWriter(str(tmp_path / "out"))
    writer.prepare(MapLayout("f", [f"i{i}" for i in range(12)], None, 8, ["m"], {}, 1), resume=False)
    shard = writer.open_shard()
    for index in (0, 1, 2, 5, 11):
        shard.write("m", index, np.ones((3, 8, 8), np.float32))
    prefix = str(tmp_path / "out" / "attributions.zarr" / "m" / "c")
    open(f"{prefix}/1/0/0/0", "wb").close()  # empty (broken)
    os.makedirs(f"{prefix}/7/0/0/0")  # a folder, not a file
    os.makedirs(f"{prefix}/8/0/0")  # a folder without its file
    open(f"{prefix}/2/0/0/stray", "wb").close()
    open(f"{prefix}/notes.txt", "wb").close()
    local = _local_chunk_files(prefix, 4)
    assert local == _listed_chunk_files(fsspec.filesystem("file"), prefix, 4)
    assert sorted(local) == [0, 1, 2, 5, 11] and local[1][1] == 0
    assert _local_chunk_files(str(tmp_path / "none" / "c"), 4) == {}


# ------------------------------------------------------------------------------------------------ the writer thread
class _Recording:
    """An ArrayWriter that records what it is given; ``gate`` (when set) holds each write until it is opened;
    ``fail_at``: the write (counted from 1) that raises."""

    def __init__(self, gate: threading.Event | None = None, fail_at: int | None = None):
        self.gate, self.fail_at = gate, fail_at
        self.written: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        self.flushed = False

    def write(self, name, index, values):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait()
        if self.fail_at is not None and len(self.written) + 1 == self.fail_at:
            raise OutputError(f"cannot write {name} of image {index}: disk full")
        self.written.append((name, index))

    def flush(self):
        self.flushed = True


def test_the_write_queue_is_bounded_and_keeps_the_order():
    gate = threading.Event()
    inner = _Recording(gate)
    writer = BackgroundWriter(inner, max_pending=3)
    accepted = []

    def produce():
        for i in range(10):
            writer.write("m", i, np.zeros(1))
            accepted.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    assert wait_until(lambda: writer._queue.full() and inner.threads, timeout_s=10)
    producer.join(0.2)  # room for a (wrong) fifth write to be accepted: the producer stays blocked instead
    assert producer.is_alive() and len(accepted) == 4  # one taken by the thread (held at the gate), three waiting
    gate.set()
    producer.join(10)
    writer.flush()
    assert inner.written == [("m", i) for i in range(10)] and inner.flushed
    assert inner.threads == {"xcv-writer"}


def test_a_failed_write_is_raised_by_the_next_write_and_by_flush_and_nothing_is_flushed():
    inner = _Recording(fail_at=2)
    writer = BackgroundWriter(inner, max_pending=2)
    writer.write("m", 0, np.zeros(1))
    writer.write("m", 1, np.zeros(1))  # fails on the thread
    assert wait_until(lambda: writer._error is not None, timeout_s=10)  # the thread has met the failure
    with pytest.raises(OutputError, match="image 1: disk full"):
        writer.write("m", 2, np.zeros(1))
    with pytest.raises(OutputError, match="image 1: disk full"):
        writer.flush()
    assert inner.written == [("m", 0)] and not inner.flushed
    writer.close()  # after flush: nothing left to stop


def test_close_drops_what_is_queued_and_stops_the_thread():
    gate = threading.Event()
    inner = _Recording(gate)
    writer = BackgroundWriter(inner, max_pending=5)
    for i in range(4):
        writer.write("m", i, np.zeros(1))
    gate.set()
    writer.close()
    assert not writer._thread.is_alive()
    assert len(inner.written) <= 4 and not inner.flushed
    with pytest.raises(RuntimeError, match="after flush or close"):
        writer.write("m", 9, np.zeros(1))


# ------------------------------------------------------------------------------------------------ whole runs
def test_a_write_error_on_the_writer_thread_fails_the_shard_before_it_commits(tmp_path, tiny_folder, monkeypatch):
    clean = tmp_path / "clean"
    run_job(_job(tmp_path, tiny_folder, clean))
    failing: list[_FailingMaps] = []

    def open_arrays(store):
        failing.append(_FailingMaps(store.maps.open_shard(), fail_at=3))
        return failing[-1]

    out = tmp_path / "crashed"
    monkeypatch.setattr(RunStore, "open_arrays", open_arrays)
    with pytest.raises(OutputError, match="cannot write .* disk full"):
        run_job(_job(tmp_path, tiny_folder, out))
    assert failing[0].threads == {"xcv-writer"}  # the write that failed ran on the writer thread
    assert RunStore(str(out)).committed_files() == []  # the shard did not commit
    monkeypatch.undo()
    report = run_job(_job(tmp_path, tiny_folder, out), resume=True)
    assert report.n_processed == 10
    assert _rows(out).equals(_rows(clean))
    assert _files(out) == _files(clean)


class _FailingMaps(_Recording):
    """The format's shard writer, failing at write ``fail_at``."""

    def __init__(self, inner, fail_at: int):
        super().__init__(fail_at=fail_at)
        self.inner = inner

    def write(self, name, index, values):
        super().write(name, index, values)
        self.inner.write(name, index, values)

    def flush(self):
        self.inner.flush()


class _Synchronous:
    """The writer without its thread: each map written when handed over (what a run did before the writer thread)."""

    def __init__(self, writer, max_pending: int):
        self.writer, self.cpu_seconds = writer, 0.0

    def write(self, name, index, values):
        self.writer.write(name, index, values)

    def flush(self):
        self.writer.flush()

    def close(self):
        pass


def test_results_are_the_same_with_and_without_the_writer_thread(tmp_path, tiny_folder, monkeypatch):
    overlapped = run_job(_job(tmp_path, tiny_folder, tmp_path / "overlapped"))
    monkeypatch.setattr(worker_module, "BackgroundWriter", _Synchronous)
    run_job(_job(tmp_path, tiny_folder, tmp_path / "synchronous"))
    assert _rows(tmp_path / "overlapped").equals(_rows(tmp_path / "synchronous"))
    assert _files(tmp_path / "overlapped") == _files(tmp_path / "synchronous")
    # 10 images, 4 an object (output.images_per_object auto: shards of 4), 3 arrays (inputs and two methods): three
    # objects each, besides the metadata (the object of the image that is not one is merged by zarr)
    assert sum(name.startswith(("inputs/c/", "guided_gradcam/c/", "integrated_gradients/c/"))
               for name in _files(tmp_path / "overlapped")) == 9
    # every stage of the shards' pipeline took CPU, and the report carries it per shard
    stages = {stage: sum(s.stage_seconds[stage] for s in overlapped.shards) for stage in STAGES}
    assert set(stages) == set(STAGES) and all(seconds > 0 for seconds in stages.values()), stages
