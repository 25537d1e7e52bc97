"""What made a Parquet part file: the job, its fingerprint, the model and weights, the package, when the run started.

Written as the file's key-value metadata (keys prefixed ``xcv_batch.``), so rows copied out of several runs can
still be traced back through their files, by any Parquet reader (DuckDB: ``parquet_kv_metadata('part-*.parquet')``).
Computed once per run by the driver and handed to every worker with its shards.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata

from .. import __version__
from ..config import Job, weights_file_digest

PREFIX = "xcv_batch."


def run_provenance(job: Job, started: dt.datetime | None = None) -> dict[str, str]:
    """The key-value metadata of every part file this run writes; ``started`` defaults to now (UTC)."""
    started = started or dt.datetime.now(dt.timezone.utc)
    values = {
        "job": job.name,
        "fingerprint": job.fingerprint(),
        "model": job.model.arch,
        "weights": job.model.weights,
        "weights_sha256": weights_file_digest(job.model.weights),  # a weights file's content; none for a name
        "version": __version__,
        "torch": _installed_version("torch"),  # the kernels that computed the maps
        "started": started.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return {PREFIX + key: value for key, value in values.items() if value is not None}


def provenance_from_metadata(metadata: dict | None) -> dict[str, str]:
    """The ``xcv_batch.*`` entries of a Parquet file's key-value metadata (bytes or str), without the prefix."""
    found = {}
    for key, value in (metadata or {}).items():
        key = key.decode() if isinstance(key, bytes) else key
        if key.startswith(PREFIX):
            found[key[len(PREFIX):]] = value.decode() if isinstance(value, bytes) else value
    return found


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)  # reads the installed metadata: torch itself is not imported
    except importlib.metadata.PackageNotFoundError:
        return None
