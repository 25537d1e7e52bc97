"""The bring-your-own-model examples of docs/models.md run as written: the timm job (offline, so with ``model.weights=none``)
and the ``package.module:callable`` job with its module, each in a fresh folder through ``python -m xcv_batch``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from xcv_batch import open_results

PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "models.md")


def _block(name: str, language: str) -> str:
    text = open(PAGE, encoding="utf-8").read()
    found = re.findall(rf"<!-- {name}:begin -->\s*```{language}\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert len(found) == 1, f"docs/models.md has one marked {name} block"
    return found[0]


def _run(folder, job: str, out: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XCV_PROGRESS_INTERVAL_S": "0"}
    return subprocess.run([sys.executable, "-m", "xcv_batch", "run", job, "--out", out, *extra], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_timm_job_runs_as_written_offline(tmp_path):
    (tmp_path / "timm.yaml").write_text(_block("timm-job", "yaml"))
    done = _run(tmp_path, "timm.yaml", "results/timm-offline", "--set", "model.weights=none")
    assert done.returncode == 0, done.stderr
    rows = open_results(str(tmp_path / "results" / "timm-offline")).rows()
    # the job's methods and the control maps (controls: true by default)
    assert sorted(rows.method.unique()) == ["centre", "edges", "guided_gradcam", "integrated_gradients", "occlusion",
                                            "random"]
    assert (rows.status == "ok").all(), rows[rows.status != "ok"].error.tolist()
    assert len(rows) == 2 * (3 + 3)  # 2 images × (3 methods + 3 control maps)


def test_the_custom_module_job_runs_as_written(tmp_path):
    (tmp_path / "my_models.py").write_text(_block("custom-module", "python"))
    (tmp_path / "custom.yaml").write_text(_block("custom-job", "yaml"))
    done = _run(tmp_path, "custom.yaml", "results/my-cnn")
    assert done.returncode == 0, done.stderr
    results = open_results(str(tmp_path / "results" / "my-cnn"))
    rows = results.rows()
    assert (rows.status == "ok").all(), rows[rows.status != "ok"].error.tolist()
    # the job's methods and the control maps (controls: true by default)
    assert sorted(rows.method.unique()) == ["centre", "edges", "guided_gradcam", "integrated_gradients", "occlusion",
                                            "random"]
    # the job's class names and preprocessing reach the results
    assert results.categories[:3] == ["airplane", "automobile", "bird"]
    assert set(rows.target_name) <= set(results.categories)
    assert results.job["model"]["preprocessing"]["mean"] == [0.49, 0.48, 0.45]
