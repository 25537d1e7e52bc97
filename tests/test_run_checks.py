"""What a run checks before its first image (one line, exit 2, no OUT left behind), and what it does with inputs
that are valid but degenerate: labels outside the model, all-zero maps, overflowing perturbations."""

from __future__ import annotations

import contextlib
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from ray_helpers import rows_of, write_job
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.output.results import open_results
from xcv_batch.report.summarize import summarize

SMALL = {"methods": {"occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 4}},
         "sensitivity": {"n_perturb_samples": 1, "perturb_radius": 0.02}}


def one_line_error(capsys) -> str:
    """The error, one line; only a run's start line ("run NAME: … loading model …") may come before it, for errors
    found once the job, the source and OUT have passed."""
    lines = capsys.readouterr().err.strip().splitlines()
    if len(lines) == 2 and lines[0].startswith("run ") and "loading model" in lines[0]:
        lines = lines[1:]
    assert len(lines) == 1, lines
    return lines[0]


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A small tmpfs at ``path`` (root can write into read-only folders, but not into a read-only or full mount)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        # A read-only or full file system cannot be made without a mount (root writes through permissions); where
        # mounting is not allowed (an unprivileged container) the case cannot be set up at all.
        pytest.skip(f"cannot mount a tmpfs here, so no read-only or full file system to write to: "
                    f"{mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------------------------------------- labels


def test_labels_outside_the_model_fail_only_their_images(tmp_path, photo_folder, capsys):
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"path": [str(photo_folder / n) for n in ("camera.png", "chelsea.png", "coffee.png")],
                  "label": [5000, 3, -1]}).to_csv(manifest, index=False)
    job_file = write_job(tmp_path / "job.yaml", manifest, target="label", **SMALL)
    out = str(tmp_path / "out")
    assert cli.main(["run", job_file, "--out", out]) == 0
    assert "3 images (3 processed), 2 failed" in capsys.readouterr().out
    rows = rows_of(out)
    chelsea = rows.image_id.str.endswith("chelsea.png")
    assert (rows[chelsea].status == "ok").all() and (rows[chelsea].target == 3).all()
    bad = rows[~chelsea]
    assert (bad.status == "error").all() and len(bad) == 4
    assert bad.error.str.contains(r"label (?:5000|-1) is not a class of this model \(0 … 999\)").all()
    # and a resume has nothing left to do
    assert cli.main(["run", job_file, "--out", out, "--resume"]) == 0


def test_target_label_without_any_label_stops_before_anything_is_written(tmp_path, photo_folder, capsys):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, target="label", **SMALL)
    out = tmp_path / "out"
    assert cli.main(["run", job_file, "--out", str(out)]) == 2
    assert one_line_error(capsys).startswith("error: target: is 'label' but no image of")
    assert not out.exists()


# ----------------------------------------------------------------------------------------- the output


def test_an_out_that_cannot_be_written_is_one_line_before_the_model_is_built(tmp_path, photo_folder, capsys):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **SMALL)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out, words in ((a_file, "is a file, not a folder"), (a_file / "below", "cannot write to"),
                       ("/proc/xcv-out", "cannot write to")):
        assert cli.main(["run", job_file, "--out", str(out)]) == 2
        assert words in one_line_error(capsys)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        assert cli.main(["run", job_file, "--out", str(read_only / "out")]) == 2
        assert "Read-only file system" in one_line_error(capsys)


def test_a_full_disk_while_writing_is_one_line(tmp_path, photo_folder, capsys):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **SMALL)
    with tmpfs(tmp_path / "small", "size=40k") as small:
        assert cli.main(["run", job_file, "--out", str(small / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # the start line, progress lines, then the error
    errors = [line for line in lines if not line.startswith(("run ", "progress:"))]
    assert len(errors) == 1 and lines[-1] == errors[0]
    err = errors[0]
    assert "No space left on device" in err and ("cannot write" in err or "cannot commit" in err)


# ------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("changes, words", [
    (["model.arch=vit_b_16"], "model.arch: vit_b_16 cannot take 32 px inputs"),
    (["model.resolution=100000"], "model.resolution: must be 16 … 2048 pixels"),
    (["seed=1180591620717411303424"], "seed: must be 0 … 2**63"),
])
def test_a_model_that_cannot_run_the_job_stops_it_with_no_out_left(tmp_path, photo_folder, capsys, changes, words):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **SMALL)
    out = tmp_path / "out"
    args = ["run", job_file, "--out", str(out)]
    for change in changes:
        args += ["--set", change]
    assert cli.main(args) == 2
    assert words in one_line_error(capsys)
    assert not out.exists()


def test_weights_files_that_are_not_a_state_dict_of_the_arch_are_one_line(tmp_path, photo_folder, capsys):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pt")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    data = (tmp_path / "resnet18.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **SMALL)
    for weights, arch, words in (("whole.pt", "resnet18", "holds pickled Python objects"),
                                 ("truncated.pt", "resnet18", "cannot load state_dict"),
                                 ("resnet18.pt", "vgg11", "does not fit vgg11: 22 parameters missing")):
        assert cli.main(["run", job_file, "--out", str(tmp_path / "out"), "--set", f"model.arch={arch}",
                         "--set", f"model.weights={tmp_path / weights}"]) == 2
        err = one_line_error(capsys)
        assert words in err and "weights_only=False" not in err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- degenerate values


def test_an_all_zero_map_has_no_sensitivity_and_is_not_ranked_most_stable(tmp_path, photo_folder):
    net = torchvision.models.resnet18()
    torch.nn.init.zeros_(net.fc.weight)  # every logit constant: every gradient and occlusion difference is 0
    torch.save(net.state_dict(), tmp_path / "flat.pt")
    job_file = write_job(tmp_path / "job.yaml", photo_folder, model__weights=str(tmp_path / "flat.pt"),
                         data__limit=2, **SMALL)
    out = str(tmp_path / "out")
    run_job(load_job(job_file, output=out))
    rows = rows_of(out)
    assert (rows.status == "ok").all()
    assert rows.sensitivity_max.isna().all()
    zero = "sensitivity_max undefined: the map is all zero"
    assert (rows[rows.method == "occlusion"].note == zero).all()
    # IG's completeness check has nothing to check either: the logit does not move from the baseline.
    ig = rows[rows.method == "integrated_gradients"]
    assert (ig.note == zero + "; ig_completeness_gap undefined: f(x) equals f(baseline)").all()
    assert ig.ig_completeness_gap.isna().all()
    summary = summarize(open_results(out), n_boot=20)
    assert summary.metrics_skipped["sensitivity_max"] == "no method has a value"
    assert "sensitivity_max" not in summary.metrics


def test_a_huge_perturbation_radius_gives_nan_with_its_reason(tmp_path, photo_folder):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, data__limit=1, methods={"occlusion": {"window": 8}},
                         sensitivity={"n_perturb_samples": 1, "perturb_radius": 1e38})
    out = str(tmp_path / "out")
    run_job(load_job(job_file, output=out))
    row = rows_of(out).iloc[0]
    assert row.status == "ok" and np.isnan(row.sensitivity_max)
    assert row.note.startswith("sensitivity_max not finite")
    ok = rows_of(out)
    assert not ok[(ok.status == "ok") & ok.note.isna()].sensitivity_max.isna().any()
