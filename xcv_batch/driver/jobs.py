"""``submit`` / ``status`` / ``logs`` / ``stop``: the same ``run`` as a Ray Job on a cluster, via the Ray Jobs API.

The job file is validated here first (a bad key fails on the laptop, not on the cluster). The job's ``working_dir``
is a staging copy of the job file and the paths named with ``--include``, nothing else from the current directory
(``upload.py`` says what is refused and left out); the package travels as a ``py_module`` of its ``.py`` files, so
the cluster runs the code that was validated. The submission id is derived from the job's fingerprint and output,
so repeating a ``submit`` re-attaches to the job instead of starting a twin; after a failed or stopped job it starts
``ID-2`` (``-3`` …) with ``--resume``, which finishes the committed shards' rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Sequence, TextIO

from ..config import Job, load_job
from ..errors import ConfigError, XcvError, first_line
from .upload import NEVER_UPLOADED, Staged, UploadPlan, describe, plan_upload, staged

#: Non-secret S3 settings the job needs as much as this shell; credentials belong to the cluster (instance roles,
#: or the nodes' environment), not in a runtime_env that the dashboard shows to everyone.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
#: Right after ``ray up`` the head's job agent may not be registered yet; how long to keep asking.
AGENT_WAIT_S = 120.0
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_id(job: Job) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", job.name.lower()).strip("-")[:40] or "job"
    digest = hashlib.sha256(f"{job.fingerprint()}|{job.output.path}".encode()).hexdigest()[:10]
    return f"xcv-{slug}-{digest}"


def _status_name(status) -> str:
    return getattr(status, "value", str(status))


def connect(address: str | None):
    """A JobSubmissionClient for ``address`` (or RAY_API_SERVER_ADDRESS / RAY_ADDRESS), with one-line errors."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Ray's client logs every upload at INFO; what was submitted is printed by submit() in one line instead
    for name in ("ray.dashboard.modules", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--address", "give the cluster's dashboard URL, e.g. http://HEAD:8265 (or set RAY_ADDRESS)")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise XcvError(_auth_hint(address)) from err
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise XcvError(f"cannot reach the Ray job server at {address}: {first_line(err)}") from err


def _auth_hint(address: str) -> str:
    return (f"the Ray cluster at {address} wants a token: export RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN "
            "(or ~/.ray/auth_token)")



def _call(address: str, fn, *args, **kwargs):
    """One Jobs API request; Ray's errors become one-line XcvErrors."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as err:
        raise XcvError(_auth_hint(address)) from err
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise XcvError(f"Ray job server at {address}: {first_line(err)}") from err


# -------------------------------------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class Submission:
    id: str
    new: bool  # False: re-attached to a job submitted before


def _choose_submission(base: str, statuses: dict[str, str]) -> Submission:
    """``base`` unless it exists; a live or succeeded attempt is re-attached, a failed or stopped one skipped."""
    attempt = 1
    while True:
        candidate = base if attempt == 1 else f"{base}-{attempt}"
        status = statuses.get(candidate)
        if status is None:
            return Submission(candidate, new=True)
        if status in ("PENDING", "RUNNING", "SUCCEEDED"):
            return Submission(candidate, new=False)
        attempt += 1


def _entrypoint(job_file: str, job: Job, overrides: Sequence[str], resume: bool, verify: bool = False) -> str:
    args = ["python", "-m", "xcv_batch", "run", job_file, "--out", job.output.path]
    for text in overrides:
        args += ["--set", text]
    if resume:
        args.append("--resume")
        if verify:
            args.append("--verify")
    return shlex.join(args)


def _runtime_env(upload: Staged) -> dict:
    # the staging dirs hold only planned files; the excludes are a second guard in Ray's own packaging
    env: dict = {"working_dir": upload.working_dir, "py_modules": [upload.package_dir],
                 "excludes": list(NEVER_UPLOADED)}
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if forwarded:
        env["env_vars"] = forwarded
    return env


def submit(job_file: str, address: str | None, overrides: Sequence[str] = (), out: str | None = None,
           resume: bool = False, wait: bool = True, stream: TextIO | None = None,
           includes: Sequence[str] = (), verify: bool = False) -> int:
    """Submit (or re-attach to) the job; with ``wait``, follow its logs and return its exit code, else 0.

    Uploaded: the job file, the ``includes`` (files or folders under the current directory) and the package.
    ``verify`` (with ``resume``) makes the run decode every committed map (``run --resume --verify``).
    """
    stream = stream or sys.stdout
    job = load_job(job_file, overrides=list(overrides), output=out)
    plan = plan_upload(job_file, includes)  # every path refused here, before any request
    _note_what_stays_behind(job, plan)
    client = connect(address)
    address = client.get_address()
    statuses = {info.submission_id: _status_name(info.status) for info in _call(address, client.list_jobs)}
    base_id = submission_id(job)
    chosen = _choose_submission(base_id, statuses)
    if chosen.new:
        # after a failed or stopped attempt, its committed shards are kept: finish them
        entrypoint = _entrypoint(plan.job_file, job, overrides, resume or chosen.id != base_id, verify)
        print(describe(plan), file=stream, flush=True)
        if job.model.user_callable:
            module, _, name = job.model.user_callable.partition(":")
            print(f"model.arch: the cluster will import {module} and call {name}() — a job file runs code: submit "
                  "only job files you trust", file=stream, flush=True)
        with staged(plan) as upload:
            _submit_with_retry(client, address, entrypoint, chosen.id, _runtime_env(upload))
        print(f"submitted {chosen.id}: {entrypoint}", file=stream, flush=True)
    else:
        print(f"re-attached to {chosen.id} ({statuses[chosen.id]})", file=stream, flush=True)
    if not wait:
        print(f"follow it with: python -m xcv_batch logs {chosen.id} --address {address} --follow", file=stream)
        return 0
    return follow(client, address, chosen.id, stream)


def _note_what_stays_behind(job: Job, plan: UploadPlan) -> None:
    """Warn about paths the job reads that will not exist on the cluster as they do here."""
    if "://" not in job.output.path:
        print(f"note: OUT {job.output.path} is a path on the cluster's nodes, which share no disk: with more than one "
              "node give --out s3://…", file=sys.stderr)
    for key, path in (("data.source", job.data.source), ("model.weights", job.model.weights),
                      ("model.categories", job.model.categories)):
        if isinstance(path, str) and path and not os.path.isabs(path) and os.path.exists(path) \
                and not _uploaded(path, plan):
            print(f"note: {key} {path} is not uploaded; the cluster reads its own {path} (add --include {path} to "
                  "send it)", file=sys.stderr)


def _uploaded(path: str, plan: UploadPlan) -> bool:
    relative = os.path.relpath(os.path.abspath(path), plan.root)
    return any(named == os.curdir or relative == named or relative.startswith(named + os.sep) for named in plan.named)


def _submit_with_retry(client, address: str, entrypoint: str, chosen: str, runtime_env: dict) -> None:
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=chosen, runtime_env=runtime_env,
                              metadata={"xcv_batch": "run"})
            return
        except RuntimeError as err:
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(2.0)  # the head's job agent registers a few seconds after the head is up
                continue
            if "already exists" in str(err):  # a twin submit won the race: attach to it
                return
            _call(address, _raise, err)


def _raise(err: BaseException):
    raise err


def follow(client, address: str, submission: str, stream: TextIO) -> int:
    """Print the job's logs as they come, then its outcome; the exit code is the job's."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission):
            stream.write(chunk)
            stream.flush()

    _call(address, asyncio.run, tail())
    info = _call(address, client.get_job_info, submission)
    status = _status_name(info.status)
    while status not in TERMINAL:  # the log stream can close a moment before the status is final
        time.sleep(0.5)
        info = _call(address, client.get_job_info, submission)
        status = _status_name(info.status)
    print(_describe(submission, info), file=stream, flush=True)
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def _describe(submission: str, info) -> str:
    status = _status_name(info.status)
    # Ray's message for a failed job appends the log's tail; its first line says what happened
    message = f": {info.message.strip().splitlines()[0]}" if status != "SUCCEEDED" and info.message else ""
    return f"job {submission} {status}{message}"


# ----------------------------------------------------------------------------------------- status / logs / stop


def _target_job(target: str, overrides: Sequence[str], out: str | None) -> Job | None:
    """The job a job-file ``target`` names (checked before any connection); None when ``target`` is an id."""
    if not (os.path.isfile(target) and target.endswith((".yaml", ".yml"))):
        return None
    return load_job(target, overrides=list(overrides), output=out)


def resolve(client, address: str, target: str, job: Job | None) -> str:
    """A submission id, or a job file's ``job`` → its latest submission's id."""
    if job is None:
        return target
    base = submission_id(job)
    ids = [info.submission_id for info in _call(address, client.list_jobs)]
    ours = [i for i in ids if i == base or re.fullmatch(re.escape(base) + r"-\d+", i or "")]
    if not ours:
        raise XcvError(f"no submission of {target} on this cluster (its id would be {base}); submit it first")
    return max(ours, key=lambda i: 1 if i == base else int(i.rsplit("-", 1)[1]))


def _connect_to_submission(address: str | None, target: str, overrides: Sequence[str], out: str | None):
    """(client, the cluster's address, the submission id ``target`` names): what status, logs and stop start from.
    A job file is read and validated first, so a bad one fails here without a request."""
    job = _target_job(target, overrides, out)
    client = connect(address)
    address = client.get_address()
    return client, address, resolve(client, address, target, job)


def status(target: str, address: str | None, overrides: Sequence[str] = (), out: str | None = None) -> str:
    client, address, submission = _connect_to_submission(address, target, overrides, out)
    return _describe(submission, _call(address, client.get_job_info, submission))


def logs(target: str, address: str | None, follow_logs: bool = False, overrides: Sequence[str] = (),
         out: str | None = None, stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    client, address, submission = _connect_to_submission(address, target, overrides, out)
    if follow_logs:
        return follow(client, address, submission, stream)
    stream.write(_call(address, client.get_job_logs, submission))
    stream.flush()
    return 0


def stop(target: str, address: str | None, overrides: Sequence[str] = (), out: str | None = None) -> str:
    client, address, submission = _connect_to_submission(address, target, overrides, out)
    if _call(address, client.stop_job, submission):
        return f"stopping {submission}; committed shards are kept (submit again to resume)"
    return f"{submission} was not running ({_status_name(_call(address, client.get_job_status, submission))})"
