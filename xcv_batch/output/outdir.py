"""The checks of OUT that come before any work: it can be written, it holds no other run, or — on ``--resume`` — this
job's run, and when it does not, which job keys differ.

fsspec and yaml only (no zarr, pyarrow, torch or Ray), so a wrong ``--out`` is answered as fast as a typo in the job.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

from ..config import Job, job_from_mapping
from ..errors import ConfigError, OutputError, cli_or_python, first_line
from .layout import JOB_FILE, METRICS_DIR  # light: names and kinds only
from ..yaml_io import load_yaml

#: Differing keys named in a refusal; the rest are counted.
MAX_KEYS_SHOWN = 8


def check_out(out: str, job: Job, resume: bool) -> None:
    """Before any work: OUT can be written, and holds no other run (or, on resume, this job's run)."""
    check_out_writable(out)
    check_out_contents(out, job, resume)


def check_out_writable(out: str) -> None:
    """OUT is a folder (or prefix) that can be written: a probe file is written and removed."""
    out = out.rstrip("/")
    fs, root = fsspec.core.url_to_fs(out)
    _check_writable(fs, root, out)


def check_out_contents(out: str, job: Job, resume: bool) -> None:
    """OUT holds no other run (or, on resume, this job's run). A run asks this holding OUT's lock
    (:mod:`xcv_batch.output.lock`), so no other run can lay OUT out between the answer and its own layout."""
    out = out.rstrip("/")
    fs, root = fsspec.core.url_to_fs(out)
    job_path = f"{root}/{JOB_FILE}"
    if resume and fs.exists(job_path):
        previous = _read_job_file(fs, job_path, out)
        found = previous.get("fingerprint")
        fingerprint = job.fingerprint()
        if found != fingerprint:
            raise OutputError(
                f"{out} holds results of a different job (fingerprint {found}, this job {fingerprint}; "
                f"{describe_differences(previous, job)}); resume only with the same settings, or choose another "
                f"{cli_or_python('--out', 'out')}"
            )
    elif not resume and (fs.exists(job_path) or _has_committed_rows(fs, root)):
        raise OutputError(f"{out} already holds a run; pass {cli_or_python('--resume', 'resume=True')} to finish it, "
                          f"or choose another {cli_or_python('--out', 'out')}")


def _read_job_file(fs, path: str, out: str) -> dict:
    try:
        with fs.open(path, "r") as fh:
            data = load_yaml(fh) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise OutputError(f"{out}/{JOB_FILE} is not a job file this tool wrote ({first_line(err)})") from None
    return data if isinstance(data, dict) else {}


def _has_committed_rows(fs, root: str) -> bool:
    directory = f"{root}/{METRICS_DIR}"
    fs.invalidate_cache(directory)
    if not fs.exists(directory):
        return False
    names = (path.rsplit("/", 1)[-1] for path in fs.ls(directory, detail=False))
    return any(name.endswith(".parquet") and not name.startswith((".", "_")) for name in names)


def _check_writable(fs, root: str, out: str) -> None:
    """Write and remove a probe file in OUT; folders made only for the probe are removed again, so a run that stops
    before its first image leaves nothing behind."""
    if fs.exists(root) and not fs.isdir(root):
        raise OutputError(f"{cli_or_python('--out', 'out')} {out} is a file, not a folder")
    first_missing = _first_missing_folder(fs, root)
    probe = f"{root}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except OSError as err:
        raise OutputError(f"cannot write to {out}: {first_line(err)}") from None
    finally:
        if first_missing is not None and fs.exists(first_missing):
            fs.rm(first_missing, recursive=True)


def _first_missing_folder(fs, root: str) -> str | None:
    """The outermost folder of OUT's path that does not exist yet (None when OUT exists or is not local)."""
    if not isinstance(fs, LocalFileSystem) or fs.exists(root):
        return None
    path = root
    while not fs.exists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


# ------------------------------------------------------------------------------------------- what differs


def describe_differences(previous: dict, job: Job) -> str:
    """``differs: methods.occlusion.window 15 → 8, …`` between the job in OUT/job.yaml and ``job``."""
    changes = differing_keys(previous, job)
    if not changes:
        return "no job key differs: the fingerprint was computed by another version of xcv_batch"
    shown = changes[:MAX_KEYS_SHOWN]
    more = f" and {len(changes) - len(shown)} more" if len(changes) > len(shown) else ""
    return "differs: " + ", ".join(shown) + more


def differing_keys(previous: dict, job: Job) -> list[str]:
    """Each fingerprinted key whose value differs, as ``key: old → new``, in the job file's order."""
    old = _fingerprinted(previous)
    new = job.fingerprint_fields()
    return [f"{key}: {_show(a)} → {_show(b)}" for key, a, b in _differences(old, new)]


def _fingerprinted(previous: dict) -> dict:
    """The fields the fingerprint of the job in OUT hashed, computed as this version computes them; the weights
    file's digest is the one that job recorded (its file may have changed since: that is what is compared)."""
    raw = {key: value for key, value in previous.items() if key not in ("fingerprint", "weights_sha256")}
    try:
        fields = job_from_mapping(raw).fingerprint_fields()
    except ConfigError:  # a job of another version: compare the raw settings instead
        fields = {key: value for key, value in raw.items() if key not in ("name", "output")}
    model = fields.get("model")
    if isinstance(model, dict):
        model.pop("weights_sha256", None)
        if previous.get("weights_sha256"):
            model["weights_sha256"] = previous["weights_sha256"]
    return fields


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in [*new, *(k for k in old if k not in new)]:
            found.extend(_differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key)))
        return found
    return [] if old == new else [(prefix, old, new)]


def _show(value: Any) -> str:
    """A value as a job file spells it, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    return str(value)


