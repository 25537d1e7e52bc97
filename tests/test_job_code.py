"""A job file's ``model.arch: package.module:callable`` runs the user's code: whatever that code raises (SystemExit and
KeyboardInterrupt included) or returns instead of a module is one line and exit 2 — never a run that ends with exit 0
having written nothing, and never, in the API, the end of the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from xcv_batch import cli
from xcv_batch.errors import ModelError

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SMOKE = os.path.join(REPO, "jobs", "smoke.yaml")


def job_with_arch(tmp_path, arch: str) -> str:
    job = yaml.safe_load(open(SMOKE))
    job["data"]["limit"] = 1
    job["model"]["arch"] = arch
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


@pytest.mark.parametrize("arch, cause", [
    ("sys:exit", "sys:exit() raised SystemExit(None)"),
    ("custom_models:exits", "custom_models:exits() raised SystemExit(0)"),
    ("custom_models:interrupted", "custom_models:interrupted() raised KeyboardInterrupt"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_factory_that_exits_or_is_interrupted_is_one_line_and_exit_2(tmp_path, capsys, arch, cause, dry_run):
    out = tmp_path / "out"
    argv = ["run", job_with_arch(tmp_path, arch), "--out", str(out)] + (["--dry-run"] if dry_run else [])
    assert cli.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: model.arch: {cause}"]
    assert not out.exists()  # nothing laid out


@pytest.mark.slow
def test_sys_exit_as_the_model_ends_the_process_with_2_not_0(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "xcv_batch", "run", job_with_arch(tmp_path, "sys:exit"),
                             "--out", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: model.arch: sys:exit() raised SystemExit(None)"
    assert "Traceback" not in result.stderr


def test_the_api_raises_instead_of_ending_the_interpreter():
    from xcv_batch import Explainer

    with pytest.raises(ModelError, match=r"^model.arch: sys:exit\(\) raised SystemExit\(None\)$"):
        Explainer("sys:exit", weights="none", methods=["occlusion"], resolution=32)
    with pytest.raises(ModelError, match=r"^model.arch: custom_models:interrupted\(\) raised KeyboardInterrupt$"):
        Explainer("custom_models:interrupted", weights="none", methods=["occlusion"], resolution=32)
