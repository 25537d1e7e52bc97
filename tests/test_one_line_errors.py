"""Issue #21, items 7–13: what used to be a traceback (or a row that named no cause) is one line naming the key, file
or option — exit 2 from the CLI, an ``xcv_batch.errors`` exception from the API — or, for a model in another dtype,
a cast with one warning line.

CLI cases that need no model run ``python -m xcv_batch`` in a subprocess from this checkout, so the interpreter's
own last-resort handling (a traceback, exit 1) is what would show if an error escaped; those that read an OUT call
``cli.main`` in this process (an escaping exception fails the test just the same), sparing the imports.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from custom_models import tiny_cnn
from test_summarize import seed_like_rows, write_out
from xcv_batch import Explainer, cli
from xcv_batch.errors import ConfigError, ModelError, OutputError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "jobs" / "smoke.yaml")
OCCLUSION = {"occlusion": {"window": 8, "stride": 8}}

#: A factory module for ``model.arch: r21_models:…`` (written to a temporary folder put on PYTHONPATH).
FACTORIES = '''
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))

def tiny_double():
    return tiny().double()
'''


def xcv(*args: str, tmp_path: Path | None = None, timeout: float = 120,
        memory_gib: float | None = None) -> subprocess.CompletedProcess:
    """``python -m xcv_batch ARGS`` from this checkout; ``memory_gib`` caps its address space (a refused huge
    allocation is then a MemoryError there, not this machine's out-of-memory killer)."""
    env = dict(os.environ)
    if tmp_path is not None:
        (tmp_path / "r21_models.py").write_text(FACTORIES)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    def limit() -> None:
        import resource

        cap = int(memory_gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-m", "xcv_batch", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout, preexec_fn=limit if memory_gib else None)


def one_error_line(done: subprocess.CompletedProcess, *, after_start_line: bool = False) -> str:
    """The only non-empty stderr line (after a run's start line, when the error comes once the model is built),
    with exit 2."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if after_start_line and lines and lines[0].startswith("run "):
        lines = lines[1:]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def main_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``cli.main(args)`` in this process, as a finished subprocess would report it."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def explainer(module: nn.Module, **kwargs) -> Explainer:
    return Explainer(module, methods=OCCLUSION, sensitivity=None, resolution=32, device="cpu", **kwargs)


# --- 7: models in other dtypes are cast to float32 with one warning line; 12: meta is one ModelError ---------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_module_in_another_dtype_is_cast_to_float32_with_one_warning(dtype, caplog):
    model = tiny_cnn().to(dtype)
    with caplog.at_level(logging.WARNING):
        explained = explainer(model).explain(torch.randn(2, 3, 32, 32))
    assert list(explained.rows.status) == ["ok", "ok"]
    assert explained.maps["occlusion"].dtype == torch.float32 and torch.isfinite(explained.maps["occlusion"]).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(dtype).removeprefix("torch.") in warnings[0] and "float32" in warnings[0]
    assert next(model.parameters()).dtype == dtype  # the caller's module is left as it is


@pytest.mark.slow
def test_a_factory_returning_a_double_model_runs_with_one_warning_line(tmp_path):
    done = xcv("run", SMOKE, "--set", "model.arch=r21_models:tiny_double", "--set", "data.limit=1",
               "--set", "methods={occlusion: {window: 8, stride: 8}}", "--set", "sensitivity=null",
               "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = [line for line in done.stderr.splitlines() if "float64" in line]
    assert len(warned) == 1 and "cast to float32" in warned[0]
    assert "Traceback" not in done.stderr
    assert "0 failed" in done.stderr


def test_a_module_on_the_meta_device_is_one_model_error():
    with torch.device("meta"):
        model = tiny_cnn()
    with pytest.raises(ModelError, match="meta device") as info:
        explainer(model)
    assert "\n" not in str(info.value)


# --- 8: a categories file that is not UTF-8 ---------------------------------------------------------------------


@pytest.fixture
def latin1_categories(tmp_path) -> Path:
    path = tmp_path / "categories.txt"
    path.write_bytes("café\nthé\nlait\npain\nbeurre\n".encode("latin-1"))
    return path


def test_a_categories_file_that_is_not_utf8_is_one_config_error(latin1_categories):
    with pytest.raises(ConfigError) as info:
        explainer(tiny_cnn(), categories=str(latin1_categories))
    assert info.value.key == "model.categories" and "UTF-8" in info.value.message
    assert str(latin1_categories) in info.value.message


@pytest.mark.slow
def test_a_run_with_a_latin1_categories_file_is_one_line(tmp_path, latin1_categories):
    done = xcv("run", SMOKE, "--set", "model.arch=r21_models:tiny", "--set", f"model.categories={latin1_categories}",
               "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    line = one_error_line(done, after_start_line=True)
    assert "model.categories" in line and "UTF-8" in line


# --- 9: outputs that cannot be written --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return write_out(tmp_path_factory.mktemp("r21") / "out", seed_like_rows(4), n_images=4)


def test_show_to_an_unwritable_place_is_one_line(out_dir, capsys):
    target = "/proc/no/such/folder/x.png"
    line = one_error_line(main_in_process(capsys, "show", str(out_dir), "--image", "img1", "--output", target))
    assert f"cannot write {target}" in line


def test_plot_to_an_unwritable_place_is_an_output_error():
    explained = explainer(tiny_cnn()).explain(torch.randn(1, 3, 32, 32))
    with pytest.raises(OutputError, match="cannot write /proc/xcv-panel.png"):
        explained.plot(0, "/proc/xcv-panel.png")


def test_summarize_of_an_out_it_cannot_write_prints_its_table_and_one_warning(tmp_path, capsys):
    # Running as root, a read-only folder stays writable: folders in the files' places make every write fail alike.
    readonly = tmp_path / "copy"
    write_out(readonly, seed_like_rows(4), n_images=4)
    for name in ("summary.json", "summary.md", "report.html", "map_agreement.parquet"):
        (readonly / name).mkdir()
    done = main_in_process(capsys, "summarize", str(readonly), "--bootstrap", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Method ranking" in done.stdout and "wrote" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: summary.json, summary.md, report.html, map_agreement.parquet "
                                                   "not written")
    assert f"{readonly}/summary.json" in lines[0]


# --- 10: deeply nested YAML ---------------------------------------------------------------------------------------


def test_deeply_nested_yaml_in_a_job_file_is_one_line(tmp_path):
    depth = 50_000  # 100 KB: under the 1 MiB cap
    job = tmp_path / "nested.yaml"
    job.write_text("name: x\nseed: " + "[" * depth + "]" * depth + "\n")
    line = one_error_line(xcv("run", str(job), "--dry-run"))
    assert str(job) in line and "nested deeper than" in line


@pytest.mark.parametrize("value", ["[" * 50_000 + "]" * 50_000, "{a: " * 3000 + "1" + "}" * 3000],
                         ids=["lists", "mappings"])
def test_deeply_nested_yaml_in_a_set_value_is_one_line_naming_the_key(value):
    line = one_error_line(xcv("run", SMOKE, "--dry-run", "--set", f"seed={value}"))
    assert line.startswith("error: seed: nested deeper than")


# --- 11: --bootstrap out of range -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "1000000000"])
def test_bootstrap_out_of_range_is_one_line_with_the_range(out_dir, value):
    # capped: before the check, 10**9 resamples tried to allocate tens of GB
    line = one_error_line(xcv("summarize", str(out_dir), "--bootstrap", value, "--no-report", memory_gib=4))
    assert "--bootstrap" in line and "1 … 100,000" in line and value in line


# --- 13: data.source on a pseudo-filesystem ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["/proc", "/proc/self", "/sys"])
def test_a_source_in_proc_or_sys_is_one_line(tmp_path, source):
    line = one_error_line(xcv("run", SMOKE, "--dry-run", "--set", f"data.source={source}", "--out",
                              str(tmp_path / "out"), timeout=60))
    assert line.startswith(f"error: data.source {source}")


# --- poor cases: non-finite values named where they come from ------------------------------------------------------


@pytest.mark.parametrize("key, value", [("std", "[.nan, 0.2, 0.2]"), ("std", "[1.0e-300, 0.2, 0.2]"),
                                        ("mean", "[.inf, 0.4, 0.4]")])
def test_non_finite_or_tiny_preprocessing_values_are_one_line(tmp_path, key, value):
    line = one_error_line(xcv("run", SMOKE, "--dry-run", "--set", f"model.preprocessing.{key}={value}",
                              "--out", str(tmp_path / "out")))
    assert line.startswith(f"error: model.preprocessing.{key}: must be three finite numbers")


def test_tiny_preprocessing_std_from_the_api_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        explainer(tiny_cnn(), preprocessing={"std": [1e-300, 0.2, 0.2]})
    assert info.value.key == "model.preprocessing.std"


def test_non_finite_pixels_give_that_image_error_rows_naming_the_cause():
    inputs = torch.randn(3, 3, 32, 32)
    inputs[1, 0, 2, 2] = float("nan")
    inputs[1, 2, 5, 5] = float("inf")
    explained = explainer(tiny_cnn()).explain(inputs)
    rows = explained.rows.set_index("image_id")
    assert rows.loc["image-1", "status"] == "error"
    assert rows.loc["image-1", "error"] == "input has 2 non-finite pixel values (NaN or ±inf)"
    assert rows.loc["image-1", "target"] is None or np.isnan(rows.loc["image-1", "target"])
    assert list(rows.loc[["image-0", "image-2"], "status"]) == ["ok", "ok"]
    assert torch.isnan(explained.maps["occlusion"][1]).all() and torch.isfinite(explained.maps["occlusion"][0]).all()


def test_a_float_image_file_with_nan_pixels_is_that_image_error_rows(tmp_path):
    values = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "fine.tif")
    values[3, 4], values[5, 5], values[6, 6] = np.nan, np.inf, -np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "holes.tif")
    explained = explainer(tiny_cnn(), preprocessing={"resize": 32}).explain(
        [str(tmp_path / "holes.tif"), str(tmp_path / "fine.tif")], image_ids=["holes", "fine"])
    rows = explained.rows.set_index("image_id")
    assert rows.loc["holes", "status"] == "error" and "input has 3 non-finite pixels" in rows.loc["holes", "error"]
    assert rows.loc["fine", "status"] == "ok"


@pytest.mark.parametrize("resolution, crop", [(32, 64), (64, 32)])
def test_a_crop_that_differs_from_the_resolution_is_named_as_such(resolution, crop):
    with pytest.raises(ConfigError) as info:
        Explainer(tiny_cnn(), methods=OCCLUSION, sensitivity=None, device="cpu", resolution=resolution,
                  preprocessing={"crop": crop})
    assert info.value.key == "preprocessing.crop"
    assert f"is {crop} but resolution is {resolution}" in info.value.message
