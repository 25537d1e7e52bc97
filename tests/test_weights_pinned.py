"""A weights file is pinned per run (issue #21): the driver reads it once and checks it against the SHA-256 the run
records (fingerprint, job.yaml, every Parquet file); every worker, a restarted Ray actor included, loads exactly those
bytes. A file replaced mid-run changes nothing; one replaced before the workers have loaded it stops the run with one
line naming the file and both digests. And a pickled model is refused with that one line only, no torch warning first.

The behavioural tests import only what existed before the pinning; the unit tests import its names inside.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import ray  # noqa: F401 - puts the psutil that Ray ships on sys.path
import torch
import torchvision
import yaml

import psutil  # noqa: E402
from ray_helpers import rows_of, write_job
from waiting import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTOR_TITLE = "ray::ShardActor"  # Ray renames an actor's process after its class
METHODS = {"occlusion": {"window": 16, "stride": 16}}  # one cheap method: the targets are what is compared
N_CLASSES = 3


def save_weights(path, seed: int, favoured: int) -> str:
    """A seeded resnet18 state_dict whose head leans to class ``favoured``: two such files give other targets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.resnet18(num_classes=N_CLASSES)
    with torch.no_grad():
        net.fc.bias.zero_()
        net.fc.bias[favoured] = 8.0
    torch.save(net.state_dict(), path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def replace_file(path, seed: int, favoured: int) -> str:
    """Replace ``path`` as a training loop does: written beside it, then renamed over it."""
    fresh = f"{path}.new"
    digest = save_weights(fresh, seed, favoured)
    os.replace(fresh, path)
    return digest


def weights_job(tmp_path, source, weights, **changes) -> str:
    return write_job(tmp_path / "job.yaml", source, model={"arch": "resnet18", "weights": str(weights),
                                                           "resolution": 32}, methods=METHODS, **changes)


def recorded_digests(out: str) -> set:
    """The weights_sha256 of job.yaml and of every Parquet file in ``out``."""
    digests = {yaml.safe_load(open(os.path.join(out, "job.yaml")))["weights_sha256"]}
    metrics = os.path.join(out, "metrics")
    for name in os.listdir(metrics):
        if name.startswith("part-"):
            digests.add(pq.read_metadata(os.path.join(metrics, name)).metadata[b"xcv_batch.weights_sha256"].decode())
    return digests


def targets(rows) -> dict:
    ok = rows[rows.status == "ok"]
    return dict(zip(zip(ok.image_id, ok.method), ok.target))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text.strip(), text
    return text


# ------------------------------------------------------------------------------------- a Ray run, file replaced


def process_tree(pid: int) -> list:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def shard_actors(pid: int) -> list:
    found = []
    for process in process_tree(pid):
        try:
            if " ".join([process.name(), *process.cmdline()]).startswith(ACTOR_TITLE):
                found.append(process)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_a_ray_run_whose_weights_file_is_replaced_and_whose_workers_restart_computes_every_row_from_the_original(
        tmp_path, photo_folder):
    from xcv_batch.config import load_job
    from xcv_batch.driver import run_job

    weights = tmp_path / "latest.pt"
    original = save_weights(weights, seed=1, favoured=0)
    job = weights_job(tmp_path, photo_folder, weights, compute__max_attempts=3)
    reference = str(tmp_path / "reference")
    run_job(load_job(job, output=reference))  # undisturbed, in-process, from the original file
    expected = targets(rows_of(reference))
    assert set(expected.values()) == {0} and len(expected) == 4  # four photos; notes.jpg is not an image

    # Two Ray workers; coffee.png's first attempt hangs, so the run cannot end before its workers are killed.
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
               XCV_TEST_FAULTS="hang:coffee.png:once", XCV_PROGRESS_INTERVAL_S="0")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "xcv_batch", "run", job, "--out", str(out),
               "--set", "compute.workers=2", "--set", "compute.device=cpu"]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # job.yaml is written once both workers have built their models from the original file
        started = wait_until(lambda: (out / "job.yaml").exists() or driver.poll() is not None, 240, poll_s=0.1)
        assert started and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        replaced = replace_file(weights, seed=2, favoured=2)  # training overwrites latest.pt
        actors = wait_until(lambda: shard_actors(driver.pid) if len(shard_actors(driver.pid)) == 2 else [], 60)
        assert len(actors) == 2
        for actor in actors:  # as the OOM killer would: the replacements start after the file was replaced
            actor.kill()
        rc = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    log = (tmp_path / "driver.log").read_text()
    assert replaced != original
    assert rc == 0, log[-3000:]
    done = next(line for line in log.splitlines() if line.startswith("done: "))
    assert int(re.search(r", (\d+) retries", done).group(1)) >= 1  # the killed workers' shards were retried
    rows = rows_of(str(out))
    assert targets(rows) == expected  # every row from the original weights, the retried ones included
    assert recorded_digests(str(out)) == {original}


# ------------------------------------------------------------------------ the driver's read and the records


def test_a_file_replaced_after_the_run_recorded_its_digest_stops_the_run_naming_both_digests(
        tmp_path, photo_folder, monkeypatch):
    import xcv_batch.driver.run as run_module
    from xcv_batch.config import load_job
    from xcv_batch.driver import run_job
    from xcv_batch.errors import XcvError

    weights = tmp_path / "latest.pt"
    original = save_weights(weights, seed=1, favoured=0)
    recorded = run_module.run_provenance
    replaced = []

    def record_then_replace(job, *args, **kwargs):
        provenance = recorded(job, *args, **kwargs)
        replaced.append(replace_file(weights, seed=2, favoured=2))  # between the record and the driver's read
        return provenance

    monkeypatch.setattr(run_module, "run_provenance", record_then_replace)
    out = tmp_path / "out"
    with pytest.raises(XcvError) as info:
        run_job(load_job(weights_job(tmp_path, photo_folder, weights, data__limit=1), output=str(out)))
    message = one_line(info.value)
    assert str(weights) in message and original in message and replaced[0] in message
    assert not (out / "job.yaml").exists()  # stopped before OUT was laid out


def test_a_file_replaced_while_the_workers_load_it_stops_the_run_before_job_yaml_records_it(
        tmp_path, photo_folder, monkeypatch):
    from xcv_batch.config import load_job
    from xcv_batch.driver import run_job
    from xcv_batch.driver.local import InProcessExecutor
    from xcv_batch.errors import XcvError

    weights = tmp_path / "latest.pt"
    original = save_weights(weights, seed=1, favoured=0)
    enter = InProcessExecutor.__enter__
    replaced = []

    def load_then_replace(self):
        entered = enter(self)  # the model is built from the original
        replaced.append(replace_file(weights, seed=2, favoured=2))
        return entered

    monkeypatch.setattr(InProcessExecutor, "__enter__", load_then_replace)
    out = tmp_path / "out"
    with pytest.raises(XcvError) as info:
        run_job(load_job(weights_job(tmp_path, photo_folder, weights, data__limit=1), output=str(out)))
    message = one_line(info.value)
    assert str(weights) in message and original in message and replaced[0] in message
    assert not (out / "job.yaml").exists()  # job.yaml never records weights the workers did not load


# ----------------------------------------------------------------------------------- pinned bytes (unit level)


def test_a_classifier_built_from_pinned_bytes_equals_one_built_from_the_file_even_once_the_file_is_replaced(tmp_path):
    from xcv_batch.config import weights_file_digest
    from xcv_batch.models.classifier import build_classifier
    from xcv_batch.models.pinned import pin_weights

    weights = tmp_path / "latest.pt"
    save_weights(weights, seed=1, favoured=0)
    from_file = build_classifier("resnet18", str(weights), 32, seed=0).net.state_dict()
    pinned = pin_weights(str(weights), weights_file_digest(str(weights)))
    assert pinned.path == str(weights) and pinned.data == weights.read_bytes()
    replace_file(weights, seed=2, favoured=2)
    from_bytes = build_classifier("resnet18", str(weights), 32, seed=5, pinned=pinned).net.state_dict()
    assert from_bytes.keys() == from_file.keys()
    assert all(torch.equal(from_bytes[key], from_file[key]) for key in from_file)
    weights.unlink()  # a worker on another machine may not have the file at all: the bytes are enough
    again = build_classifier("resnet18", str(weights), 32, seed=0, pinned=pinned).net.state_dict()
    assert all(torch.equal(again[key], from_file[key]) for key in from_file)
    assert pin_weights("none", None) is None and pin_weights("IMAGENET1K_V1", None) is None  # names: nothing to pin


def test_a_factorys_weights_file_is_pinned_too(tmp_path):
    import custom_models
    from xcv_batch.config import weights_file_digest
    from xcv_batch.models.classifier import build_classifier
    from xcv_batch.models.pinned import pin_weights

    weights = tmp_path / "cnn.pt"
    torch.manual_seed(3)
    original = custom_models.tiny_cnn().state_dict()
    torch.save(original, weights)
    pinned = pin_weights(str(weights), weights_file_digest(str(weights)))
    torch.save(custom_models.tiny_cnn().state_dict(), weights)  # replaced
    built = build_classifier("custom_models:tiny_cnn", str(weights), 32, seed=0, pinned=pinned).net.state_dict()
    assert all(torch.equal(built[key], original[key]) for key in original)


def test_the_driver_and_a_worker_refuse_bytes_whose_digest_is_not_the_recorded_one(tmp_path, photo_folder):
    from xcv_batch.config import load_job
    from xcv_batch.errors import ModelError
    from xcv_batch.execution.worker import ShardWorker
    from xcv_batch.models.pinned import PinnedWeights, pin_weights

    weights = tmp_path / "latest.pt"
    original = save_weights(weights, seed=1, favoured=0)
    replaced = replace_file(weights, seed=2, favoured=2)
    with pytest.raises(ModelError) as info:  # the driver's read, against the digest the run recorded
        pin_weights(str(weights), original)
    message = one_line(info.value)
    assert message.startswith(f"model.weights: {weights} changed") and original in message and replaced in message

    job = load_job(weights_job(tmp_path, photo_folder, weights), output=str(tmp_path / "out"))
    tampered = PinnedWeights(str(weights), original, weights.read_bytes())  # bytes of another file than recorded
    with pytest.raises(ModelError) as info:
        ShardWorker(job, device="cpu", weights=tampered)
    message = one_line(info.value)
    assert str(weights) in message and original in message and replaced in message and "refusing" in message


# ------------------------------------------------------------------------------ a pickled model: one line only


def pickled_model(path) -> None:
    with open(path, "wb") as fh:  # a whole model pickled as plain Python objects (pickle protocol 4)
        pickle.dump(torchvision.models.resnet18(num_classes=N_CLASSES), fh)


def torchscript_model(path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated: saving one still works
        torch.jit.save(torch.jit.script(torchvision.models.resnet18(num_classes=N_CLASSES)), str(path))


@pytest.mark.slow
@pytest.mark.parametrize("save, words", [(pickled_model, "holds pickled Python objects (a whole saved model?)"),
                                         (torchscript_model, "is a TorchScript archive (torch.jit.save)")])
def test_a_pickled_model_is_refused_with_one_line_and_no_torch_warning(tmp_path, photo_folder, save, words):
    weights = tmp_path / "model.pt"
    save(weights)
    job = weights_job(tmp_path, photo_folder, weights, data__limit=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "xcv_batch", "run", job, "--out", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    # the start line, then the refusal alone
    assert len(lines) == 2 and lines[0].startswith("run "), result.stderr
    assert lines[1] == (f"error: model.weights: {weights} {words}, not a state_dict; save model.state_dict() with "
                        "torch.save and point at that file")
