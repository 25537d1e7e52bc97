"""Answers before heavy imports: a bad job, source or OUT is one line without torch or Ray ever imported; the start
line; ``run --dry-run``'s plan, pass counts and estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ray_helpers import JOB, write_job
from xcv_batch import cli
from xcv_batch.config import Job, dump_job, load_job
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.plan import Passes, method_passes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Runs each argument list through cli.main in one fresh interpreter; prints, per run, its exit code, its stderr and
#: which heavy modules were imported by then.
CHECKS = """
import contextlib, io, json, sys
from xcv_batch import cli
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(args)
    heavy = sorted(m for m in ("torch", "torchvision", "ray", "zarr", "PIL") if m in sys.modules)
    results.append([code, err.getvalue(), heavy])
print(json.dumps(results))
"""


def run_in_fresh_python(runs: list[list[str]]) -> list:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", CHECKS, json.dumps(runs)], cwd=REPO, env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def test_bad_jobs_sources_and_outs_are_answered_without_torch_or_ray(tmp_path, photo_folder):
    job = write_job(tmp_path / "job.yaml", photo_folder, compute__workers=2)  # a Ray run, were it to start
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "job.yaml").write_text(dump_job(load_job(job)))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out = str(tmp_path / "out")
    runs = {
        "methods.occlusion.windw: unknown key": ["run", job, "--out", out, "--set", "methods.occlusion.windw=3"],
        "data.source /no/such/folder does not exist": ["run", job, "--out", out, "--set", "data.source=/no/such/folder"],
        "already holds a run": ["run", job, "--out", str(taken)],
        "different job (fingerprint": ["run", job, "--out", str(taken), "--resume", "--set", "seed=6"],
        "is a file, not a folder": ["run", job, "--out", str(a_file)],
    }
    results = run_in_fresh_python(list(runs.values()))
    for words, (code, err, heavy) in zip(runs, results):
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and words in err, (words, err)
        assert heavy == [], (words, heavy)  # answered before torch, torchvision, Ray, zarr or PIL
    assert "differs: seed: 5 → 6)" in results[3][1]
    assert not os.path.exists(out)


def test_the_start_line_comes_before_the_model(tmp_path, photo_folder, capsys):
    job = write_job(tmp_path / "job.yaml", photo_folder)
    out = tmp_path / "out"
    code = cli.main(["run", job, "--out", str(out), "--set", "model.weights=/no/such/weights.pth"])
    start, error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error.startswith("error: model.weights:")
    assert start == f"run ray-tests: 5 images → {out}, 3 shards; loading model resnet18 (/no/such/weights.pth) at 32 px …"


def test_dry_run_prints_the_plan_and_an_estimate_and_writes_nothing(tmp_path, photo_folder, capsys):
    job = write_job(tmp_path / "job.yaml", photo_folder)
    out = tmp_path / "out"
    assert cli.main(["run", job, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1] == f"images: 5 from {photo_folder}; 3 shards of up to 2"
    assert lines[2] == "workers: 1, in this process"
    assert lines[3] == "passes per image at 32 px, each × 2 with Max-Sensitivity (n_perturb_samples 1):"
    # 32 px, window 8, stride 8: 4 × 4 windows and the clean image; IG 4 steps; LIME 16 samples; all × (1 + 1)
    passes = {line.split()[0]: line.split("≈")[0].split(None, 1)[1].strip() for line in lines[4:8]}
    assert passes == {"guided_gradcam": "2 forward+backward + 2 extra backward",
                      "integrated_gradients": "8 forward+backward", "lime": "32 forward", "occlusion": "34 forward"}
    assert lines[-2].startswith("probe: resnet18 on cpu, 16 rows a pass, median of ")
    assert lines[-1].startswith("estimate: ") and "for 5 images" in lines[-1]
    assert not out.exists()


def test_pass_counts_follow_the_methods_settings():
    job = Job(methods={name: settings() for name, settings in METHOD_SETTINGS.items()})  # the seed's settings
    passes = method_passes(job)  # 224 px, sensitivity n = 10
    assert passes["occlusion"] == Passes(forward=(28 * 28 + 1) * 11)  # windows 0, 8, …, 216 per side
    assert passes["integrated_gradients"] == Passes(forward_backward=200 * 11)
    assert passes["ig_smoothgrad"] == Passes(forward_backward=10 * 50 * 11)
    assert passes["guided_gradcam"] == Passes(forward_backward=11, extra_backward=11)
    assert passes["lime"] == Passes(forward=1000 * 11)
    no_sensitivity = method_passes(load_job_dict({**JOB, "sensitivity": None, "metrics": {"deletion": {"n_steps": 9}}}))
    assert no_sensitivity["lime"] == Passes(forward=16 + 10)  # deletion scores n_steps + 1 copies


def load_job_dict(raw: dict) -> Job:
    from xcv_batch.config import job_from_mapping

    return job_from_mapping(raw)
