"""Shards on Ray actors: where workers go, the same results as in-process, a SIGKILLed driver, start errors.

One Ray session (conftest ``ray_session``: 2 CPUs, 2 fake GPUs) serves every test here; dead and hung workers are
in test_ray_faults.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ray_helpers import assert_same_results, each_image_once, maps_of, ray_run, rows_of, write_job
from xcv_batch import cli
from xcv_batch.config import ComputeConfig, load_job
from xcv_batch.driver import run_job
from xcv_batch.driver.placement import Resources, plan_workers, resources_from_nodes
from xcv_batch.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------ placement (no Ray)


def test_auto_gives_one_worker_per_gpu_and_shares_the_gpu_nodes_cpus():
    plan = plan_workers(ComputeConfig(workers="auto"), Resources(cpus=32, gpus=4, cpus_per_gpu=8, cpus_per_node=16))
    assert (plan.count, plan.num_gpus, plan.num_cpus, plan.torch_threads) == (4, 1.0, 8.0, 8)
    shared = plan_workers(ComputeConfig(workers=8, device="cuda"), Resources(32, 4, 8, 16))
    assert (shared.count, shared.num_gpus, shared.num_cpus) == (8, 0.5, 4.0)
    # device: cuda asks for GPU workers even before an autoscaling cluster has a GPU node
    assert plan_workers(ComputeConfig(workers=2, device="cuda"), Resources(0, 0)).num_gpus == 1.0
    with pytest.raises(ConfigError, match="compute.workers: 'auto' found no GPU"):
        plan_workers(ComputeConfig(workers="auto", device="cuda"), Resources(8, 0))


def test_cpu_workers_split_the_cores_and_never_ask_for_more_than_there_is():
    plan = plan_workers(ComputeConfig(workers="auto"), Resources(cpus=8, gpus=0, cpus_per_node=8))
    assert (plan.count, plan.num_cpus, plan.torch_threads, plan.num_gpus) == (4, 2.0, 2, 0.0)
    # device: cpu with a number of workers means CPU workers, GPUs or not
    assert plan_workers(ComputeConfig(workers=2, device="cpu"), Resources(2, 2, 1, 2)).num_gpus == 0.0
    crowded = plan_workers(ComputeConfig(workers=3), Resources(cpus=2, gpus=0, cpus_per_node=2))
    assert crowded.count == 3 and crowded.torch_threads == 1 and crowded.num_cpus * 3 <= 2
    # never more workers than shards; the cores go to those there are
    few = plan_workers(ComputeConfig(workers="auto"), Resources(cpus=8, gpus=0, cpus_per_node=8), max_workers=1)
    assert (few.count, few.torch_threads) == (1, 8)


def test_cluster_resources_count_alive_nodes_only():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 0.0}},  # a head that takes no work
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    assert resources_from_nodes(nodes) == Resources(cpus=24.0, gpus=5.0, cpus_per_gpu=4.0, cpus_per_node=16.0)


# ------------------------------------------------------------------------------------------------ on Ray actors


@pytest.mark.slow  # starts the shared local Ray and runs shards on its actors
def test_two_cpu_workers_give_the_in_process_results(ray_session, reference_run, tmp_path, photo_folder, capsys):
    out, report = ray_run(tmp_path, photo_folder, compute__workers=2)
    assert "workers: 2 Ray workers (CPU, 1 CPU, 1 torch thread each)" in capsys.readouterr().err
    rows = rows_of(out)
    assert each_image_once(rows) and report.n_failed == 1 and report.retries == 0
    assert sorted(s.shard for s in report.shards) == ["00000000-00000001", "00000002-00000003", "00000004-00000004"]
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out))


@pytest.mark.slow  # starts the shared local Ray and runs shards on its actors
def test_auto_starts_one_worker_per_gpu_and_shard_size_does_not_matter(ray_session, reference_run, tmp_path,
                                                                          photo_folder, capsys):
    out, report = ray_run(tmp_path, photo_folder, compute__workers="auto", compute__shard_size=3)
    assert "workers: 2 Ray workers (1 GPU, 1 CPU, 1 torch thread each)" in capsys.readouterr().err
    rows = rows_of(out)
    assert each_image_once(rows) and len(report.shards) == 2
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out))


@pytest.mark.slow  # starts the shared local Ray and runs shards on its actors
def test_a_bad_model_in_the_workers_is_one_line_and_writes_nothing(ray_session, tmp_path, photo_folder, capsys):
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.yaml", photo_folder, compute__workers=2)
    code = cli.main(["run", job, "--out", str(out), "--set", "model.weights=/no/such/weights.pth"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: model.weights:") and "/no/such/weights.pth" in err[-1]
    assert not any(line.startswith(("Traceback", "ray.")) for line in err)
    assert not out.exists()


@pytest.mark.slow  # starts the shared local Ray and runs shards on its actors
def test_a_sigkilled_driver_resumes_to_the_uninterrupted_result(ray_session, reference_run, tmp_path, photo_folder):
    out = str(tmp_path / "out")
    job = write_job(tmp_path / "job.yaml", photo_folder, compute__workers=2, compute__shard_size=1)
    env = {**os.environ, "RAY_ADDRESS": ray_session, "XCV_PROGRESS_INTERVAL_S": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    driver = subprocess.Popen([sys.executable, "-m", "xcv_batch", "run", job, "--out", out], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in driver.stderr:  # plain progress lines, one per finished shard
            match = re.match(r"progress: (\d+)/5", line)
            if match and int(match[1]) >= 1:
                break
        driver.kill()  # SIGKILL: no clean-up of any kind
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == -9
    committed = os.listdir(os.path.join(out, "metrics"))
    assert 1 <= len([n for n in committed if n.startswith("part-")]) <= 5

    # resume with one worker in-process: how the rest is split does not change the result
    report = run_job(load_job(job, overrides=["compute.workers=1"], output=out), resume=True)
    assert report.n_skipped >= 1 and report.n_skipped + report.n_processed == 5
    rows = rows_of(out)
    assert each_image_once(rows)
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out))


# ------------------------------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_is_a_valid_ray_cluster_config_with_gpu_workers_and_an_idle_head():
    import json

    import jsonschema
    import ray.autoscaler
    import yaml

    schema = json.load(open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")))
    config = yaml.safe_load(open(os.path.join(REPO, "cluster.yaml")))
    jsonschema.validate(config, schema)

    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head takes no attribution work
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and 1 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py3") and image.endswith("-gpu")  # the pinned Ray
    assert config["file_mounts"] == {"/home/ray/xcv_batch": "."}
    assert "pip install --quiet -e /home/ray/xcv_batch" in config["setup_commands"]

    broken = {**config, "available_node_types": {**types, "gpu_worker": {**gpu, "resources": {"GPU": "one"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_driver_imports_ray_only_for_a_ray_run():
    code = "import sys, xcv_batch.cli, xcv_batch.driver; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
