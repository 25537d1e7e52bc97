"""``submit`` / ``status`` / ``logs`` / ``stop`` against a real Ray head with its job server on 127.0.0.1.

The head is ``ray start --head --block`` in its own process group (its own temp dir, so no other ``ray.init()`` on
this machine attaches to it), killed as a group at the end. The job's working dir holds only the job file and the
package travels as a ``py_module`` (what exactly is uploaded is checked against a fake job server in
test_submit_upload.py); the job reads its images from an absolute path, which this one-node cluster shares.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from ray_helpers import METHODS, rows_of, write_job
from xcv_batch import cli

pytestmark = pytest.mark.slow  # starts a Ray head with its job server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="xcvh", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway head on 127.0.0.1; token auth is Ray's to test
    env.pop("RAY_ADDRESS", None)
    # The submitted job's entrypoint runs `python` from the head's PATH: this interpreter's, also from a virtual
    # environment that was never activated (its bin/ is not on PATH then).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={free_port()}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}",  # the default (52365) may be taken by another head
         "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=true",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines = []
    for line in head.stdout:  # blocks until ray start reports the head up (or exits)
        lines.append(line)
        if "block forever" in line:
            break
    else:
        raise RuntimeError("ray start --head failed:\n" + "".join(lines))
    threading.Thread(target=head.stdout.read, daemon=True).start()  # keep draining so the head never blocks
    yield f"http://127.0.0.1:{dashboard}"
    os.killpg(head.pid, signal.SIGKILL)  # the head, its raylet, dashboard and workers: this group only
    head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, photo_folder):
    folder = tmp_path_factory.mktemp("submit")
    write_job(folder / "job.yaml", photo_folder, name="submit test", data__limit=2)
    write_job(folder / "missing.yaml", folder / "no-such-images", name="missing")
    return folder


@pytest.fixture(scope="module")
def first_submit(ray_head, workdir):
    """Submit job.yaml once, following its logs (the module's one real run on the head)."""
    here = os.getcwd()
    os.chdir(workdir)
    try:
        from io import StringIO

        from xcv_batch.driver.jobs import submit

        stream = StringIO()
        code = submit("job.yaml", ray_head, out=str(workdir / "out"), stream=stream)
    finally:
        os.chdir(here)
    return code, stream.getvalue()


def test_submit_runs_the_job_on_the_cluster_and_follows_it(first_submit, workdir):
    code, printed = first_submit
    assert code == 0
    assert "uploading 1 file, " in printed and " (job.yaml) + package xcv_batch (" in printed  # the staged upload
    assert "submitted xcv-submit-test-" in printed
    assert "done: 2 images (2 processed), 0 failed" in printed  # the job's own log, followed
    assert printed.rstrip().splitlines()[-1].endswith("SUCCEEDED")
    rows = rows_of(str(workdir / "out"))
    assert sorted(rows.image_id.unique()) == ["camera.png", "chelsea.png"]
    assert len(rows) == 2 * len(METHODS) and (rows.status == "ok").all()


def test_submitting_again_reattaches_instead_of_starting_a_twin(first_submit, ray_head, workdir, monkeypatch,
                                                                 capsys):
    from ray.job_submission import JobSubmissionClient

    monkeypatch.chdir(workdir)
    assert cli.main(["submit", "job.yaml", "--address", ray_head, "--out", str(workdir / "out")]) == 0
    printed = capsys.readouterr().out
    assert "re-attached to xcv-submit-test-" in printed and "SUCCEEDED" in printed
    ids = [job.submission_id for job in JobSubmissionClient(ray_head).list_jobs()]
    assert len([i for i in ids if i.startswith("xcv-submit-test-")]) == 1

    # status / logs / stop find the submission from the job file (or take its id)
    assert cli.main(["status", "job.yaml", "--address", ray_head, "--out", str(workdir / "out")]) == 0
    status_line = capsys.readouterr().out.strip()
    assert status_line.startswith("job xcv-submit-test-") and status_line.endswith("SUCCEEDED")
    submission = status_line.split()[1]
    assert cli.main(["logs", submission, "--address", ray_head]) == 0
    assert "done: 2 images" in capsys.readouterr().out
    assert cli.main(["stop", submission, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == f"{submission} was not running (SUCCEEDED)"


def test_a_failing_job_gives_its_exit_code_and_a_new_submit_resumes_under_a_new_id(ray_head, workdir, monkeypatch,
                                                                                   capsys):
    monkeypatch.chdir(workdir)
    out = str(workdir / "missing-out")
    assert cli.main(["submit", "missing.yaml", "--address", ray_head, "--out", out]) == 2  # the run's own code
    printed = capsys.readouterr().out
    assert "no-such-images does not exist" in printed and "FAILED" in printed.strip().splitlines()[-1]

    # the failed id is not reused: the next submit is ID-2, resuming, and --no-wait returns at once
    assert cli.main(["submit", "missing.yaml", "--address", ray_head, "--out", out, "--no-wait"]) == 0
    uploading, submitted = capsys.readouterr().out.splitlines()[:2]
    assert uploading.startswith("uploading 1 file, ") and "(missing.yaml) + package xcv_batch (" in uploading
    assert submitted.startswith("submitted xcv-missing-") and "-2: python -m xcv_batch run" in submitted
    assert submitted.endswith("--resume")
    assert cli.main(["logs", "missing.yaml", "--address", ray_head, "--out", out, "--follow"]) == 2


def test_bad_jobs_and_unreachable_clusters_are_one_line_errors(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert cli.main(["submit", "job.yaml", "--address", "http://127.0.0.1:1",
                     "--set", "methods.occlusion.stride=99"]) == 2  # checked here, before any request
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: methods.occlusion.stride")
    assert cli.main(["status", "some-id", "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: cannot reach the Ray job server at http://127.0.0.1:")
