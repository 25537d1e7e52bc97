"""The run lock (OUT/.lock, xcv_batch.output.lock): taken before OUT is laid out, released however the run ends,
stale locks taken over (a dead process on this host, a lease run out on any host), contenders decided by the file
system or the store — locally and on S3 (moto's real server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import fsspec
import pytest

from ray_helpers import write_job
from test_s3 import s3_env, s3_server  # noqa: F401 - the real S3 server fixtures
from waiting import wait_until
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.driver.dry_run import plan_run
from xcv_batch.errors import ModelError, OutputError
from xcv_batch.output.lock import LEASE_ENV, LOCK_FILE, SETTLE_ENV, RunLock, read_holder

ONE_IMAGE = {"data__limit": 1, "methods": {"occlusion": {"window": 16, "stride": 16}},
             "sensitivity": {"n_perturb_samples": 1, "perturb_radius": 0.02}}
ANOTHER_HOST = "elsewhere.example"


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def lock_of(host: str, pid: int, renewed: float, lease_s: float = 600.0) -> bytes:
    """A lock as another run writes it (the format is docs/reliability.md's)."""
    return json.dumps({"tool": "xcv_batch", "token": uuid.uuid4().hex, "host": host, "pid": pid,
                       "started": iso(renewed - 60), "renewed": iso(renewed), "lease_s": lease_s, "job": "other",
                       "pid_started": None}).encode()


def dead_pid() -> int:
    """The PID of a process of this host that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------------------- runs and the lock


def test_a_dead_processs_lock_is_taken_over_with_a_warning_and_the_run_succeeds(tmp_path, photo_folder, capsys):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **ONE_IMAGE)
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_FILE).write_bytes(lock_of(socket.gethostname(), pid, time.time()))  # renewed now: only the PID is dead

    assert cli.main(["run", job_file, "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: took over the lock of a stale run in {out} (job other, PID {pid} on "
                             f"{socket.gethostname()}, started ")
    assert err[0].endswith("): its process is gone")
    assert sorted(os.listdir(out)) == ["attributions.zarr", "job.yaml", "metrics"]  # released, nothing left over


def test_another_hosts_lock_is_judged_by_its_lease(tmp_path, photo_folder, capsys):
    job_file = write_job(tmp_path / "job.yaml", photo_folder, **ONE_IMAGE)
    out = tmp_path / "out"
    out.mkdir()
    # a PID that is dead here says nothing about another host: its lease (renewed now) decides
    pid = dead_pid()
    renewed = int(time.time())
    fresh = lock_of(ANOTHER_HOST, pid, renewed)
    (out / LOCK_FILE).write_bytes(fresh)
    for resume in ([], ["--resume"]):
        assert cli.main(["run", job_file, "--out", str(out), *resume]) == 2
        line = one_line(capsys)
        assert line.startswith(f"error: {out} is in use by another run (job other, PID {pid} on "
                               f"{ANOTHER_HOST}, started ")
        assert line.endswith(f"wait for it to end or choose another --out (if that run is gone, its lock "
                             f"{out}/{LOCK_FILE} expires at {iso(renewed + 600)})")
        assert os.listdir(out) == [LOCK_FILE] and (out / LOCK_FILE).read_bytes() == fresh  # untouched

    (out / LOCK_FILE).write_bytes(lock_of(ANOTHER_HOST, pid, time.time() - 3600))  # lease ran out an hour ago
    lock = RunLock(str(out), job="mine").acquire()
    try:
        warning = one_line(capsys)
        assert warning.startswith(f"warning: took over the lock of a stale run in {out} (job other, PID {pid} on "
                                  f"{ANOTHER_HOST}, ")
        assert re.search(r"\): its lease of 600 s ran out \(last renewed 36\d\d s ago\)$", warning), warning
        holder = read_holder(str(out))
        assert (holder.host, holder.pid, holder.job) == (socket.gethostname(), os.getpid(), "mine")
    finally:
        lock.release()
    assert os.listdir(out) == []


def test_a_pid_of_another_container_on_this_host_name_is_not_judged(tmp_path, monkeypatch):
    # This process's namespace as Linux names it, also where /proc has none, so the test runs everywhere.
    monkeypatch.setattr("xcv_batch.output.lock._pid_namespace", lambda: "pid:[4026531836]")
    out = tmp_path / "out"
    out.mkdir()
    theirs = json.loads(lock_of(socket.gethostname(), dead_pid(), time.time()))
    (out / LOCK_FILE).write_text(json.dumps({**theirs, "pid_namespace": "pid:[1]"}))  # a PID namespace not ours
    with pytest.raises(OutputError, match="is in use by another run"):
        RunLock(str(out)).acquire()


def test_the_lock_is_held_while_the_run_works_and_released_when_it_fails(tmp_path, photo_folder):
    job = load_job(write_job(tmp_path / "job.yaml", photo_folder, **ONE_IMAGE), output=str(tmp_path / "new" / "out"))
    seen = []

    class FailingModel:  # an executor whose model cannot be built
        def __enter__(self):
            seen.append(read_holder(job.output.path))
            raise ModelError("model.weights: cannot load")

        def __exit__(self, *exc):
            pass

    with pytest.raises(ModelError):
        run_job(job, executor=FailingModel(), stream=open(os.devnull, "w"))
    [holder] = seen
    assert holder is not None and (holder.pid, holder.host, holder.job) == (os.getpid(), socket.gethostname(),
                                                                             "ray-tests")
    assert not (tmp_path / "new").exists()  # the lock is gone, and so are the folders made for it
    # and the next run takes it
    RunLock(job.output.path).acquire().release()


def test_a_run_ends_with_an_error_when_another_run_took_its_lock_over(tmp_path):
    out = tmp_path / "out"
    lock = RunLock(str(out)).acquire()
    theirs = lock_of(ANOTHER_HOST, 1, time.time())
    (out / LOCK_FILE).write_bytes(theirs)  # as a run that judged ours stale would
    lock.renew()
    lock.release()
    assert (out / LOCK_FILE).read_bytes() == theirs  # not ours to remove
    with pytest.raises(OutputError, match="another run took over the lock of this OUT while this run held it"):
        lock.check_kept()


def test_the_heartbeat_renews_the_lease(tmp_path, monkeypatch):
    monkeypatch.setenv(LEASE_ENV, "4")  # renewed every second
    out = str(tmp_path / "out")
    lock = RunLock(out).acquire()
    try:
        first = read_holder(out)
        renewed = wait_until(lambda: (read_holder(out).renewed != first.renewed) and read_holder(out), 20)
        assert renewed and (renewed.token, renewed.started, renewed.lease_s) == (first.token, first.started, 4.0)
        with pytest.raises(OutputError, match="is in use by another run"):
            RunLock(out).acquire()
    finally:
        lock.release()


@pytest.mark.parametrize("existing", ["none", "stale"])
def test_of_many_contenders_exactly_one_takes_the_lock(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "stale":
        out.mkdir()
        (out / LOCK_FILE).write_bytes(lock_of(ANOTHER_HOST, 1, time.time() - 3600))
    assert contend(str(out)) == 1
    assert not out.exists() or os.listdir(out) == []  # the winner released it, and nothing set aside is left


def contend(out: str, n: int = 8) -> int:
    """How many of ``n`` threads that try to take OUT's lock at once get it."""
    start = threading.Barrier(n)
    won, refused = [], []

    def one():
        lock = RunLock(out, stream=open(os.devnull, "w"))
        start.wait()
        try:
            won.append(lock.acquire())
        except OutputError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) + len(refused) == n and all("is in use by another run" in err for err in refused), refused
    for lock in won:
        lock.release()
    return len(won)


def test_dry_run_neither_takes_nor_minds_the_lock(tmp_path, photo_folder):
    job = load_job(write_job(tmp_path / "job.yaml", photo_folder, **ONE_IMAGE), output=str(tmp_path / "out"))
    lock = RunLock(job.output.path).acquire()
    try:
        before = (tmp_path / "out" / LOCK_FILE).read_bytes()
        assert plan_run(job, probe=False).n_shards == 1
        assert os.listdir(tmp_path / "out") == [LOCK_FILE] and (tmp_path / "out" / LOCK_FILE).read_bytes() == before
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------------------- S3


@pytest.fixture
def s3_out(s3_env, monkeypatch):
    monkeypatch.setenv(SETTLE_ENV, "0.2")
    fs = fsspec.filesystem("s3")
    bucket = f"lock-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, f"s3://{bucket}/run"


@pytest.mark.slow  # starts moto's S3 server
def test_on_s3_a_held_lock_refuses_a_second_run_until_released(s3_out, capsys):
    fs, out = s3_out
    path = f"{out[5:]}/{LOCK_FILE}"
    lock = RunLock(out, job="first").acquire()
    assert json.loads(fs.cat_file(path))["job"] == "first"
    with pytest.raises(OutputError, match=rf"^{out} is in use by another run \(job first, PID {os.getpid()} on "):
        RunLock(out, job="second").acquire()
    lock.renew()  # a conditional overwrite of our own version
    assert read_holder(out).token == lock.holder.token and lock.lost is None
    lock.release()
    fs.invalidate_cache()
    assert not fs.exists(path)
    second = RunLock(out, job="second").acquire()
    second.release()
    assert capsys.readouterr().err == ""  # no warning: nothing was stale


@pytest.mark.slow
def test_on_s3_a_stale_lock_is_taken_over_once_and_a_taken_lock_is_noticed(s3_out):
    fs, out = s3_out
    path = f"{out[5:]}/{LOCK_FILE}"
    fs.pipe_file(path, lock_of(ANOTHER_HOST, 1, time.time() - 3600))
    assert contend(out, n=4) == 1
    fs.invalidate_cache()
    assert not fs.exists(path)

    lock = RunLock(out).acquire()
    theirs = lock_of(ANOTHER_HOST, 1, time.time())
    fs.pipe_file(path, theirs)  # another run took it over
    lock.renew()
    lock.release()
    assert fs.cat_file(path) == theirs
    with pytest.raises(OutputError, match="another run took over the lock"):
        lock.check_kept()
