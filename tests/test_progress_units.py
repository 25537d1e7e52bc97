"""Progress counts the work done whichever path runs: incremental Occlusion (no forward of the whole network) reports
its copies as they finish, a method may report its own rows, and the ETA stays pending until a rate is measured and
then stays bounded while work arrives."""

from __future__ import annotations

import io
import re

import pytest
import torch

from xcv_batch.driver.progress import RunProgress
from xcv_batch.execution import tally as tally_module
from xcv_batch.execution.tally import ShardTally
from xcv_batch.methods import build_method
from xcv_batch.methods.settings import OcclusionSettings
from xcv_batch.models.classifier import build_classifier
from xcv_batch.plan import explanation_passes
from xcv_batch.work import Forwarded, MethodDone

SETTINGS = OcclusionSettings(window=8, stride=4, incremental=True)
RESOLUTION = 32
N_WINDOWS = ((RESOLUTION - 8) // 4 + 1) ** 2  # 7 × 7 windows, each one copy


@pytest.fixture
def every_chunk_reported(monkeypatch):
    """Every report goes out at once (the heartbeat otherwise batches them per half second)."""
    monkeypatch.setattr(tally_module, "HEARTBEAT_S", 0.0)


def occlusion(incremental=True):
    model = build_classifier("resnet18", "none", RESOLUTION, seed=0)
    return model, build_method("occlusion", model, OcclusionSettings(window=8, stride=4, incremental=incremental), 16)


def test_incremental_occlusion_moves_the_progress_while_it_runs(every_chunk_reported):
    model, method = occlusion()
    inputs = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    passes = explanation_passes("occlusion", SETTINGS, RESOLUTION)
    run = RunProgress(2, {"occlusion": passes}, interval_s=0.0, stream=io.StringIO())
    seen: list[tuple[object, float]] = []  # each event and the work the run showed right after it

    def send(event):
        run.record(event, key="shard")
        seen.append((event, run.snapshot().work))

    tally = ShardTally(["occlusion"], send)
    assert method.plan((3, RESOLUTION, RESOLUTION)) is not None  # planned beforehand: its FLOP count runs a forward
    with run:
        assert run.line().endswith("eta pending (measuring)")
        with tally.counting_forwards(model.net, "occlusion", images=2, runner=method):
            method.attribute(inputs, torch.tensor([1, 2]), [0, 1])
        assert method.last_path == "incremental"
        assert method.rows_listener is None  # the tally let go of the method
        during = [(e, work) for e, work in seen if isinstance(e, Forwarded)]
        # per image (49 windows do not fit two images in a forward batch of 16): its clean pass, then its copies
        # in balanced chunks of at most 16
        assert [e.rows for e, _ in during] == [1, 13, 12, 12, 12] * 2
        assert sum(e.rows for e, _ in during) == 2 * (N_WINDOWS + 1) == passes.rows * 2
        works = [work for _, work in during]
        assert works == sorted(works) and works[0] > 0  # it moved before the method ended, and only forward
        assert works[-1] == pytest.approx(2 * passes.work)  # all the method's work, before its MethodDone
        assert run.snapshot().rate is not None and re.search(r"eta \d+:\d\d:\d\d$", run.line())
        tally(MethodDone("occlusion", 2, 0.1))
        assert run.snapshot().work == pytest.approx(2 * passes.work)  # the closing event adds nothing twice


def test_the_full_path_is_counted_by_the_forward_hook_and_not_twice(every_chunk_reported):
    model, method = occlusion(incremental=False)
    inputs = torch.randn(1, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    events = []
    tally = ShardTally(["occlusion"], events.append)
    with tally.counting_forwards(model.net, "occlusion", images=1, runner=method):
        method.attribute(inputs, torch.tensor([3]), [0])
    assert method.last_path == "full"
    assert sum(e.rows for e in events) == N_WINDOWS + 1


def test_a_method_reports_its_own_rows_only_while_a_tally_listens(every_chunk_reported):
    _, method = occlusion()
    method.report_rows(5)  # nobody listening: nothing happens, nothing fails
    events = []
    tally = ShardTally(["occlusion"], events.append)
    with tally.counting_forwards(torch.nn.Identity(), "occlusion", images=1, runner=method):
        method.report_rows(3)
        method.report_rows(0)
    method.report_rows(4)
    assert events == [Forwarded("occlusion", 3, 1)]


def test_the_eta_is_bounded_while_work_keeps_arriving(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("xcv_batch.driver.progress.time.monotonic", lambda: clock[0])
    passes = explanation_passes("occlusion", SETTINGS, RESOLUTION)
    run = RunProgress(10, {"occlusion": passes}, interval_s=3600, stream=io.StringIO())
    with run:
        clock[0] = 30.0  # a slow start (model loading): still no rate, so no number
        assert run.snapshot().eta_seconds is None and run.line().endswith("eta pending (measuring)")
        etas = []
        for second in range(1, 20):  # one image's copies every 2 s, in small reports
            clock[0] = 30.0 + 2 * second
            run.record(Forwarded("occlusion", passes.rows // 2, 1), key=second)
            run.record(Forwarded("occlusion", passes.rows - passes.rows // 2, 1), key=second)
            if second < 10:
                run.record(MethodDone("occlusion", 1, 2.0), key=second)
            etas.append(run.snapshot().eta_seconds)
        assert all(eta is not None for eta in etas)
        assert max(etas) <= etas[0]  # never grows while work arrives at a steady pace
        assert etas[0] == pytest.approx(9 * 32.0) and etas[9:] == [0.0] * 10  # all ten images' work is done
