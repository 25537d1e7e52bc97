"""Two runs of different jobs into one OUT (issue #21): the second is refused with one line naming the first, and OUT
holds the first run whole. Real CLI processes, as a user would start them; nothing but the command line is used to
take the lock, so the test fails on a tree without one by what the runs do, not by an import."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from waiting import wait_until
from xcv_batch import cli
from xcv_batch.config import load_job

pytestmark = pytest.mark.slow  # two CLI runs in fresh interpreters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "jobs", "smoke.yaml")
WINNER = ["--set", "compute.shard_size=1", "--set", "data.limit=2"]
OTHER_JOB = [*WINNER, "--set", "seed=7", "--set", "methods.occlusion.window=4", "--set", "methods.occlusion.stride=4"]


def cli_run(out, changes: list[str]) -> list[str]:
    return [sys.executable, "-m", "xcv_batch", "run", SMOKE, "--out", str(out), *changes]


def test_a_second_run_into_a_live_out_is_refused_and_the_first_one_is_kept(tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    first = subprocess.Popen(cli_run(out, WINNER), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        # The first run has put something into OUT (its lock, before anything else) and is still going.
        assert wait_until(lambda: first.poll() is not None or (out.is_dir() and any(out.iterdir())), 120)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(cli_run(out, OTHER_JOB), cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
        first_out, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    assert first.returncode == 0, first_err
    assert "done: 2 images (2 processed), 0 failed" in first_out
    assert second.returncode == 2 and second.stdout == ""
    [line] = second.stderr.splitlines()
    assert line.startswith(f"error: {out} is in use by another run (job smoke, PID {first.pid} on ")
    assert "wait for it to end or choose another --out" in line

    # OUT is the first run's, whole: its layout and rows only (no lock left), every file of its fingerprint
    assert sorted(os.listdir(out)) == ["attributions.zarr", "job.yaml", "metrics"]
    winner = load_job(SMOKE, overrides=[change for change in WINNER if change != "--set"], output=str(out))
    loser = load_job(SMOKE, overrides=[change for change in OTHER_JOB if change != "--set"], output=str(out))
    assert winner.fingerprint() != loser.fingerprint()
    assert f"fingerprint: {winner.fingerprint()}" in (out / "job.yaml").read_text()
    parts = sorted((out / "metrics").glob("part-*.parquet"))
    assert [part.name for part in parts] == ["part-00000000-00000000.parquet", "part-00000001-00000001.parquet"]
    for part in parts:
        assert pq.read_metadata(part).metadata[b"xcv_batch.fingerprint"] == winner.fingerprint().encode()
        assert pq.read_table(part).num_rows == len(winner.methods)

    assert cli.main(["summarize", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["run", SMOKE, "--out", str(out), *WINNER, "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == f"run smoke: 2 images (2 already done) → {out}, nothing left to do"
    assert captured.out.startswith("done: 2 images (0 processed, 2 already done), 0 failed")
