"""scripts/gpu_suite.py, in pieces (the whole CPU smoke takes minutes here): a step under its own timeout, the
suite's budget, the idle-share arithmetic and the summary's goals, ≤ 8 JSON files."""

from __future__ import annotations

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "scripts"), os.path.join(REPO, "scripts", "bench")]

import gpu_suite  # noqa: E402
import idle  # noqa: E402


def test_a_step_writes_its_json_with_status_log_and_results(tmp_path):
    step = gpu_suite.Step("hello", [sys.executable, "-c", "print('hi there')"], 30, collect=lambda: {"answer": 42})
    record = gpu_suite.run_step(step, str(tmp_path), deadline=float("inf"))
    written = json.loads((tmp_path / "hello.json").read_text())
    assert written == record
    assert record["status"] == "ok" and record["returncode"] == 0 and record["timeout_s"] == 30
    assert "hi there" in record["log_tail"] and record["results"] == {"answer": 42}


def test_a_step_past_its_timeout_is_killed_and_the_suite_goes_on(tmp_path):
    # an event never set: the child waits until the step's timeout kills it
    step = gpu_suite.Step("slow", [sys.executable, "-c", "import threading; threading.Event().wait(60)"], 1)
    record = gpu_suite.run_step(step, str(tmp_path), deadline=float("inf"))
    assert record["status"] == "timed out" and record["returncode"] == 124 and record["seconds"] < 30


def test_a_step_gets_only_what_is_left_of_the_budget(tmp_path):
    now = [100.0]
    step = gpu_suite.Step("late", [sys.executable, "-c", "pass"], 300)
    record = gpu_suite.run_step(step, str(tmp_path), deadline=100.0 + gpu_suite.RESERVE_S + 20, clock=lambda: now[0])
    assert record["timeout_s"] == 20
    skipped = gpu_suite.run_step(step, str(tmp_path), deadline=100.0 + gpu_suite.RESERVE_S, clock=lambda: now[0])
    assert skipped["status"] == "skipped" and "budget" in skipped["why"]


def test_the_suite_has_at_most_eight_json_files_and_the_gpu_budget_is_eight_minutes(tmp_path):
    names = [step.name for step in gpu_suite.steps(str(tmp_path), str(tmp_path), smoke=False, n_images=32)]
    assert len(set(names) | {"summary"}) <= 8
    assert gpu_suite.BUDGET_S <= 8 * 60
    assert all(step.timeout_s < gpu_suite.BUDGET_S for step in gpu_suite.steps(str(tmp_path), str(tmp_path), False, 32))


def test_busy_time_is_the_union_of_intervals_within_the_call():
    # (0, 2) and (1, 3) overlap: 3; (5, 6): 1; (-1, 0.5) starts before the call: only its part inside
    assert idle.busy_seconds([(0, 2), (1, 3), (5, 6), (-1, 0.5)], 0, 10) == pytest.approx(4.0)
    assert idle.busy_seconds([(8, 12)], 0, 10) == pytest.approx(2.0)
    assert idle.busy_seconds([], 0, 10) == 0.0


def bench_results(efficiency: float, seconds: float) -> dict:
    entry = {"method": {"efficiency": efficiency, "seconds_per_image": seconds},
             "sensitivity": {"efficiency": efficiency + 0.1, "seconds_per_image": 10 * seconds},
             "device_idle": {"idle_share": 0.25}}
    return {"engine": {"occlusion": entry, "lime": {**entry, "method": {"efficiency": 0.5,
                                                                         "seconds_per_image": seconds}}}}


def test_the_summary_reads_the_goals_off_the_steps():
    records = {
        "bench_fp32": {"status": "ok", "seconds": 100, "results": bench_results(0.9, 0.1)},
        "run_1_actor": {"status": "ok", "seconds": 32 * 0.22, "results": {"rows": 64}},
        "run_2_actors": {"status": "timed out", "seconds": 90, "results": None},
    }
    summary = gpu_suite.summarise(records, 32, smoke=False)
    fp32 = summary["fp32"]
    assert fp32["lowest_efficiency"] == 0.5 and fp32["every_efficiency_at_least_goal"] is False
    assert fp32["suite_seconds_per_image"] == pytest.approx(0.2)
    assert fp32["suite_with_sensitivity_seconds_per_image"] == pytest.approx(2.2)
    assert fp32["per_method"]["occlusion"]["device_idle_share"] == 0.25
    assert summary["run_1_actor"]["ratio_to_bench"] == pytest.approx(1.1)
    assert summary["run_1_actor"]["within_goal"] is True
    assert "run_2_actors" not in summary and summary["steps"]["run_2_actors"]["status"] == "timed out"
