"""Provenance: every Parquet part file says what wrote it (read back by open_results), and a refused --resume names
the job keys that differ."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow.parquet as pq
import pytest

import xcv_batch
from ray_helpers import JOB
from xcv_batch.config import dump_job, job_from_mapping
from xcv_batch.errors import OutputError
from xcv_batch.output.outdir import check_out
from xcv_batch.output.provenance import run_provenance
from xcv_batch.output.results import open_results
from xcv_batch.output.store import RunStore

STARTED = dt.datetime(2026, 11, 30, 9, 15, 2, tzinfo=dt.timezone.utc)


def job_with(out, **changes):
    raw = {**JOB, "output": {"path": str(out)}, **changes}
    return job_from_mapping(raw)


def row(index: int, method: str) -> dict:
    return {"image_id": f"img{index}.png", "image_path": f"/data/img{index}.png", "index": index, "method": method,
            "status": "ok", "attr_seconds": 0.5, "shard": f"{index:08d}-{index:08d}"}


def commit(out, job, started, index: int) -> str:
    store = RunStore(str(out), provenance=run_provenance(job, started))
    store.fs.makedirs(f"{store.root}/metrics", exist_ok=True)
    return store.commit_rows(index, index, [row(index, "occlusion"), row(index, "lime")])


def test_part_files_carry_the_runs_provenance_and_open_results_reads_it_back(tmp_path):
    job = job_with(tmp_path, name="first")
    first = commit(tmp_path, job, STARTED, 0)
    later = STARTED + dt.timedelta(hours=2)
    second = commit(tmp_path, job_with(tmp_path, name="second", seed=6), later, 1)  # e.g. rows of another run

    metadata = pq.read_metadata(tmp_path / "metrics" / first).metadata  # plain Parquet key-value metadata
    assert metadata[b"xcv_batch.fingerprint"] == job.fingerprint().encode()
    provenance = open_results(str(tmp_path)).provenance
    assert provenance[f"metrics/{first}"] == {
        "job": "first", "fingerprint": job.fingerprint(), "model": "resnet18", "weights": "none",
        "version": xcv_batch.__version__, "torch": provenance[f"metrics/{first}"]["torch"],
        "started": "2026-11-30T09:15:02Z",
    }
    assert provenance[f"metrics/{second}"]["started"] == "2026-11-30T11:15:02Z"
    assert provenance[f"metrics/{second}"]["fingerprint"] != job.fingerprint()
    rows = open_results(str(tmp_path)).rows()  # the rows of both files still read as one table
    assert sorted(rows.image_id) == ["img0.png", "img0.png", "img1.png", "img1.png"]


def test_a_weights_file_is_named_with_its_sha256(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    provenance = run_provenance(job_with(tmp_path, model={**JOB["model"], "weights": str(weights)}), STARTED)
    assert provenance["xcv_batch.weights"] == str(weights)
    assert provenance["xcv_batch.weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert "xcv_batch.weights_sha256" not in run_provenance(job_with(tmp_path), STARTED)  # a name, or none


def refusal(out, previous_job, job) -> str:
    (out / "job.yaml").write_text(dump_job(previous_job))
    with pytest.raises(OutputError) as info:
        check_out(str(out), job, resume=True)
    return str(info.value)


def test_a_refused_resume_names_the_keys_that_differ(tmp_path):
    before = job_with(tmp_path, methods={**JOB["methods"], "occlusion": {"window": 8, "stride": 4}})
    after = job_with(tmp_path, seed=6, methods={**JOB["methods"], "occlusion": {"window": 4, "stride": 4}},
                     sensitivity=None, compute={**JOB["compute"], "batch_size": 7})  # batching: not a difference
    message = refusal(tmp_path, before, after)
    assert (f"(fingerprint {before.fingerprint()}, this job {after.fingerprint()}; differs: seed: 5 → 6, "
            "methods.occlusion.window: 8 → 4, sensitivity: {n_perturb_samples: 1, perturb_radius: 0.02} → null)"
            ) in message


def test_a_refused_resume_names_a_weights_file_whose_content_changed(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"old weights")
    job = job_with(tmp_path, model={**JOB["model"], "weights": str(weights)})
    (tmp_path / "job.yaml").write_text(dump_job(job))
    old_digest = hashlib.sha256(b"old weights").hexdigest()
    weights.write_bytes(b"new weights!")
    with pytest.raises(OutputError, match=rf"differs: model.weights_sha256: {old_digest} → [0-9a-f]{{64}}\)"):
        check_out(str(tmp_path), job, resume=True)


def test_the_same_job_resumes_and_a_job_yaml_with_its_weights_digest_runs_again(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    job = job_with(tmp_path, model={**JOB["model"], "weights": str(weights)})
    (tmp_path / "job.yaml").write_text(dump_job(job))
    check_out(str(tmp_path), job, resume=True)  # no error
    from xcv_batch.config import load_job

    assert load_job(str(tmp_path / "job.yaml")).fingerprint() == job.fingerprint()  # OUT/job.yaml is a job file
