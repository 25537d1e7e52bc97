"""A ``pretrained`` timm model without network: one line, at once, with no retry noise. This machine cannot reach
huggingface.co, so the attempt below is a real one (the hub's own retries would take about a minute and print a line
each); the time is bounded only loosely, by the subprocess's timeout, since the machine is shared."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xcv_batch.errors import ModelError
from xcv_batch.models import timm_models

BUILD = """
from xcv_batch.errors import ModelError
from xcv_batch.models.classifier import build_classifier
try:
    build_classifier("timm:resnet18", "pretrained", 32, seed=0)
except ModelError as err:
    print(err)
else:
    print("built")
"""


def test_pretrained_timm_offline_is_one_line_and_quiet():
    env = {**os.environ, "HF_HOME": "/nonexistent-hf-home"}  # nothing cached: the hub would be asked
    done = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("model.weights: cannot reach huggingface.co for timm's "
                                                   "pretrained weights for resnet18 ("), done.stdout
    assert "set model.weights to 'none'" in lines[0]  # from Python: the key, not a --set flag
    assert "Retry" not in done.stderr and "huggingface" not in done.stderr, done.stderr  # no retry noise


def test_the_cli_says_it_in_one_line_with_its_own_hint(tmp_path):
    env = {**os.environ, "HF_HOME": "/nonexistent-hf-home"}
    done = subprocess.run([sys.executable, "-m", "xcv_batch", "run", "jobs/smoke.yaml", "--out", str(tmp_path / "o"),
                           "--set", "model.arch=timm:resnet18", "--set", "model.weights=pretrained",
                           "--set", "data.limit=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach huggingface.co" in errors[0] and "--set model.weights=none" in errors[0]
    assert "Retry" not in done.stderr


def test_an_unreachable_host_is_told_within_the_timeout():
    # 192.0.2.0/24 is reserved for documentation: nothing answers there
    why = timm_models._unreachable("192.0.2.1", 443, timeout=0.5)
    assert why is not None
    assert timm_models._unreachable("no-such-host.invalid", 443, timeout=2.0) is not None


def test_the_weights_host_follows_a_proxy_and_the_endpoint(monkeypatch):
    import timm

    cfg = timm.models.get_pretrained_cfg("resnet18")
    for name in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert timm_models._weights_host(cfg) == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert timm_models._weights_host(cfg) == ("mirror.example", 8080)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")
    assert timm_models._weights_host(cfg) == ("proxy.example", 3128)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert timm_models._weights_host(cfg) is None
