"""The dry run's estimate: a median over a time budget after a warm-up (one slow pass cannot move it), a range from the
repetitions' quartiles, and Occlusion's cost along the path its auto rule will take."""

from __future__ import annotations

import re

import pytest

from xcv_batch.config import job_from_mapping
from xcv_batch.driver.dry_run import plan_run
from xcv_batch.execution import probe
from xcv_batch.execution.probe import PassTimes, Timing, probe_pass_times
from xcv_batch.methods import build_method
from xcv_batch.models.classifier import build_classifier
from xcv_batch.plan import Passes, explanation_copies, method_passes


def tiny_job(incremental="auto", **changes):
    raw = {
        "seed": 0,
        "data": {"source": "builtin:skimage", "limit": 2},
        "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
        "methods": {"occlusion": {"window": 8, "stride": 4, "incremental": incremental},
                    "integrated_gradients": {"n_steps": 4}},
        "sensitivity": {"n_perturb_samples": 2, "perturb_radius": 0.02},
        "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16, "shard_size": 2},
    }
    raw.update(changes)
    return job_from_mapping(raw)


def test_the_median_ignores_one_descheduled_pass_and_the_range_comes_from_the_quartiles():
    timing = Timing((1.0, 1.1, 0.9, 1.0, 8.0, 1.05, 0.95))
    assert timing.median == 1.0  # the fastest (0.9) or the mean (2.0) would be far off
    q1, q3 = timing.quartiles()
    assert (q1, q3) == pytest.approx((0.975, 1.075))
    low, high = timing.bounds()
    assert low == pytest.approx(max(0.9, 0.975 - 1.5 * 0.1)) and high == pytest.approx(1.075 + 1.5 * 0.1)
    assert Timing((2.0,)).bounds() == (2.0, 2.0)


def test_the_probe_repeats_for_its_budget_after_a_warm_up(monkeypatch):
    clock = [0.0]
    calls = []

    def step():
        calls.append(clock[0])
        clock[0] += 0.25  # each pass takes 0.25 s of the fake clock

    monkeypatch.setattr(probe.time, "perf_counter", lambda: clock[0])
    timing = probe._timed(step, probe.torch.device("cpu"), rows=5, repeats=3, budget_s=2.0)
    # two warm-up passes, then passes until 2 s have gone by (at least 3): 8 timed passes of 0.05 s a row
    assert len(calls) == 2 + 8 and timing.samples == (0.05,) * 8
    few = probe._timed(step, probe.torch.device("cpu"), rows=5, repeats=3, budget_s=0.0)
    assert len(few.samples) == 3


def test_occlusion_copies_count_its_explanations_and_the_metrics_that_explain_again():
    job = tiny_job()
    # 32 px, window 8, stride 4: 7 × 7 windows + the clean image, × (1 + 2) with Max-Sensitivity
    assert explanation_copies(job)["occlusion"] == 50 * 3 == method_passes(job)["occlusion"].forward
    deletion = tiny_job(sensitivity=None, metrics={"deletion": {"n_steps": 9}})
    assert explanation_copies(deletion)["occlusion"] == 50  # deletion's 10 forwards are not explanations
    assert method_passes(deletion)["occlusion"].forward == 60


def test_the_estimate_uses_the_per_copy_time_of_the_path_occlusion_takes():
    times = PassTimes(0.010, 0.030, 16, "cpu", Timing((0.010,)), Timing((0.030,)),
                      own_rows={"occlusion": Timing((0.004,))}, own_paths={"occlusion": "incremental"})
    passes = Passes(forward=160)  # of which 150 are occluded copies, 10 a metric's forwards
    assert times.method_seconds("occlusion", passes, own_copies=150) == pytest.approx(150 * 0.004 + 10 * 0.010)
    assert times.method_seconds("integrated_gradients", Passes(forward_backward=4)) == pytest.approx(0.12)


@pytest.mark.parametrize("incremental", [True, False, "auto"])
def test_occlusions_row_probe_follows_its_own_choice_of_path(incremental):
    job = tiny_job(incremental)
    model = build_classifier("resnet18", "none", 32, seed=0)
    method = build_method("occlusion", model, job.methods["occlusion"], 4)
    chosen = method._chosen_plan((3, 32, 32))  # the rule attribute() itself follows
    path, step = method.row_probe(probe.torch.zeros(1, 3, 32, 32), 4)
    if incremental is True:
        assert chosen is not None
    if incremental is False:
        assert chosen is None
    assert path == ("full forwards" if chosen is None else "incremental")
    assert (step is None) == (chosen is None)
    if step is not None:
        step()  # runs 4 copies along the incremental path
    assert build_method("integrated_gradients", model, job.methods["integrated_gradients"], 4).row_probe(
        probe.torch.zeros(1, 3, 32, 32), 4) == ("forward passes", None)


def test_the_dry_run_probes_the_incremental_path_and_prints_a_range_around_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "CPU_PROBE_ROWS", 4)  # a short probe: only the repetitions' count matters here
    monkeypatch.setattr(probe.probe_pass_times, "__defaults__", (3, 0.0))  # 3 repetitions, no time budget
    job = tiny_job(True, output={"path": str(tmp_path / "out")})
    plan = plan_run(job)
    times = plan.times
    assert times.own_paths == {"occlusion": "incremental"} and times.repeats == 3
    assert len(times.forward_backward.samples) == 3 and len(times.own_rows["occlusion"].samples) == 3
    low, estimate, high = (plan.estimate_seconds(which) for which in ("low", "median", "high"))
    assert 0 < low <= estimate <= high
    per_image = plan.seconds_per_image()["occlusion"]
    assert per_image == pytest.approx(times.method_seconds("occlusion", plan.passes["occlusion"], 150))
    text = plan.describe()
    assert re.search(r"^  occlusion +150 forward +≈ [\d.]+ s/image \(incremental\)$", text, re.M), text
    assert re.search(r"^probe: resnet18 on cpu, 4 rows a pass, median of 3 passes: .* ms per occlusion copy "
                     r"\(incremental\)$", text, re.M), text
    assert re.search(r"^estimate: \d+:\d\d:\d\d for 2 images, likely \d+:\d\d:\d\d to \d+:\d\d:\d\d \(", text, re.M)
    assert not (tmp_path / "out").exists()
