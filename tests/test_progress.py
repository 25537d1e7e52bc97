"""Progress at the grain of the work: events per method and batch (in-process and from Ray workers), lines on a
timer, an ETA from the measured rate (never NaN), a lost attempt taken back, the last line printed once, and the
closing per-method summary."""

from __future__ import annotations

import io
import re

import pytest

from ray_helpers import METHODS, write_job
from waiting import wait_until
from xcv_batch.config import load_job
from xcv_batch.driver.progress import RunProgress
from xcv_batch.execution.tally import ShardTally
from xcv_batch.output.results import open_results
from xcv_batch.plan import Passes, method_passes
from xcv_batch.work import Forwarded, ImagesDone, MethodDone, ShardReport, Skipped

WORK = {"cheap": Passes(forward=10), "dear": Passes(forward_backward=30)}  # work 10 and 90 per image
LINE = re.compile(r"progress: (\d+)/(\d+) images, (\d+)/(\d+) image-methods \((\d+)%\), (\d+) failed")


def progress(total=4, interval_s=0.0, **kwargs) -> tuple[RunProgress, io.StringIO]:
    stream = io.StringIO()
    return RunProgress(total, WORK, interval_s=interval_s, stream=stream, **kwargs), stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# ---------------------------------------------------------------------------------------------- RunProgress


def test_lines_advance_per_method_and_images_count_when_a_shard_commits():
    run, stream = progress()
    with run:
        run.record(MethodDone("cheap", 2, 0.5), key="a")
        run.record(MethodDone("dear", 2, 1.5), key="a")
        run.settle("a", ShardReport("a", 2, 1, 2.0, {"cheap": 0.5, "dear": 1.5}, {"cheap": 2, "dear": 2}))
    counts = [tuple(map(int, m.groups())) for m in map(LINE.match, lines(stream)) if m]
    # images, total, image-methods, total, percent of the work, failed
    assert counts == [(0, 4, 0, 8, 0, 0), (0, 4, 2, 8, 5, 0), (0, 4, 4, 8, 50, 0), (2, 4, 4, 8, 50, 1)]
    summary = lines(stream)[-1]
    assert summary.startswith("time by method") and "cheap 4 images/s (25%)" in summary and "dear 1.33 images/s (75%)" in summary


def test_the_eta_is_pending_until_work_is_measured_then_a_duration_never_nan():
    run, _ = progress()
    with run:
        assert run.line().endswith("eta pending (measuring)")
        run.record(MethodDone("dear", 1, 1.0), key="a")  # 90 of 400 forward-equivalents
        snap = run.snapshot()
        assert snap.rate > 0 and snap.eta_seconds == pytest.approx(310 / snap.rate)
        assert re.search(r"eta \d+:\d\d:\d\d$", run.line()) and "nan" not in run.line()


def test_forwards_count_within_a_running_call_but_never_beyond_it():
    run, _ = progress()
    with run:
        run.record(Forwarded("dear", 15, images=2), key="a")  # half of one image's rows
        assert run.snapshot().work == pytest.approx(45) and run.snapshot().units == 0
        run.record(Forwarded("dear", 500, images=2), key="a")  # more than the call can hold: capped at its 2 images
        assert run.snapshot().work == pytest.approx(180)
        run.record(MethodDone("dear", 2, 1.0), key="a")  # the finished call replaces its partial credit
        assert run.snapshot().work == pytest.approx(180) and run.snapshot().units == 2


def test_a_lost_attempt_is_taken_back_and_late_events_are_ignored():
    run, _ = progress()
    with run:
        run.record(MethodDone("cheap", 2, 0.1), key=("s", 1))
        run.discard(("s", 1))
        run.retry()
        run.record(MethodDone("dear", 2, 0.1), key=("s", 1))  # from the dead worker, drained late
        snap = run.snapshot()
        assert (snap.units, snap.work, snap.retries) == (0, 0.0, 1)
        run.settle(("s", 2), ShardReport("s", 2, 0, 1.0))
        run.record(MethodDone("dear", 2, 0.1), key=("s", 2))  # after its report: already counted
        assert (run.snapshot().images, run.snapshot().units, run.snapshot().work) == (2, 4, 200.0)


def test_the_last_line_is_printed_once():
    run, stream = progress(total=1)
    with run:
        run.record(MethodDone("cheap", 1, 0.1), key="a")
        run.record(MethodDone("dear", 1, 0.1), key="a")
        run.settle("a", ShardReport("a", 1, 0, 0.2))
    progress_lines = [line for line in lines(stream) if line.startswith("progress:")]
    assert len(progress_lines) == len(set(progress_lines)) == 4
    assert progress_lines[-1].startswith("progress: 1/1 images, 2/2 image-methods (100%)")


def test_a_timer_prints_lines_between_events():
    run, stream = progress(interval_s=0.05)
    with run:
        run.record(MethodDone("cheap", 1, 0.1), key="a")
        wait_until(lambda: len(lines(stream)) >= 4, timeout_s=20)  # nothing else happens meanwhile
    assert len(lines(stream)) >= 4
    states = {LINE.match(line).groups() for line in lines(stream)[1:4]}
    assert states == {("0", "4", "1", "8", "2", "0")}  # the same state, repeated: the run is alive


def test_resumed_images_count_as_done_but_not_as_measured_speed():
    run, _ = progress(already_done=2)
    with run:
        snap = run.snapshot()
        assert (snap.images, snap.units, snap.fraction, snap.rate) == (2, 4, 0.5, None)


# ------------------------------------------------------------------------------------------------- ShardTally


def test_the_tally_fills_in_skipped_methods_and_keeps_each_methods_time():
    events = []
    tally = ShardTally(["cheap", "dear"], events.append)
    tally(MethodDone("cheap", 3, 0.3))
    tally(MethodDone("dear", 2, 0.4))  # one image failed its forward before 'dear'
    tally.end_batch(4, failed=2)  # and one could not be decoded
    assert events[2:] == [Skipped("cheap", 1), Skipped("dear", 2), ImagesDone(4, 2)]
    assert dict(tally.seconds) == {"cheap": 0.3, "dear": 0.4} and dict(tally.images) == {"cheap": 3, "dear": 2}


def test_the_tally_reports_forwards_of_the_running_method_and_stops_after_it():
    import torch

    net = torch.nn.Linear(4, 2)
    events = []
    tally = ShardTally(["dear"], events.append)
    with tally.counting_forwards(net, "dear", images=3):
        net(torch.zeros(5, 4))  # the first forward is reported at once
    net(torch.zeros(7, 4))  # after the method: not counted
    assert events == [Forwarded("dear", 5, 3)]


# ------------------------------------------------------------------------------------- from a real worker


class RecordingProgress(RunProgress):
    """A RunProgress that keeps every event it is given, with its key."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list = []

    def record(self, event, key=None) -> None:
        self.events.append((key, event))
        super().record(event, key)


def run_shards(tmp_path, photo_folder, executor_type, **changes) -> RecordingProgress:
    """ray_helpers.JOB's shards (2 images each; notes.jpg is not an image) through ``executor_type``."""
    from xcv_batch.driver.run import plan_shards, prepare_store
    from xcv_batch.data.sources import list_images
    from xcv_batch.output.store import RunStore

    job = load_job(write_job(tmp_path / "job.yaml", photo_folder, **changes), output=str(tmp_path / "out"))
    records = list_images(job.data.source)
    shards = plan_shards(records, job.compute.shard_size)
    store = RunStore(job.output.path, provenance={"xcv_batch.job": job.name})
    with executor_type(job) as executor:
        prepare_store(job, store, records, resume=False)
        with RecordingProgress(len(records), method_passes(job), interval_s=3600, stream=io.StringIO()) as run:
            executor.run(shards, store, run)
    # every part file, wherever its shard ran, carries the driver's provenance
    assert list(open_results(job.output.path).provenance.values()) == [{"job": "ray-tests"}] * len(shards)
    return run


def assert_per_method_events(run: RecordingProgress, keys: set) -> None:
    done = [(key, event) for key, event in run.events if isinstance(event, MethodDone)]
    assert {key for key, _ in done} == keys  # the two shards of photos, each in its own attempt
    for method in METHODS:  # every method reported each batch of 2 photos, before the shard committed
        assert sorted(e.images for _, e in done if e.method == method) == [2, 2]
    skipped = sorted(e.method for _, e in run.events if isinstance(e, Skipped))
    assert skipped == sorted(METHODS)  # notes.jpg ran no method
    snap = run.snapshot()
    assert (snap.images, snap.units, snap.total_units, snap.failed) == (5, 20, 20, 1)
    summary = run.method_summary()
    assert all(re.search(rf"{method} [\d.]+ images/s \(\d+%\)", summary) for method in METHODS), summary


def test_an_in_process_worker_reports_every_method_of_every_batch(tmp_path, photo_folder):
    from xcv_batch.driver.local import InProcessExecutor

    run = run_shards(tmp_path, photo_folder, InProcessExecutor, sensitivity=None)
    assert_per_method_events(run, {"00000000-00000001", "00000002-00000003"})


def test_ray_workers_report_every_method_of_every_batch(ray_session, tmp_path, photo_folder):
    from xcv_batch.driver.actors import RayExecutor

    run = run_shards(tmp_path, photo_folder, RayExecutor, compute__workers=2, sensitivity=None)
    assert_per_method_events(run, {("00000000-00000001", 1), ("00000002-00000003", 1)})
