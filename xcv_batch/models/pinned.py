"""A weights file pinned for one run: its bytes, read once by the driver, and the SHA-256 the run records.

A file such as ``latest.pt`` that training keeps overwriting must not change under a run: every worker, a restarted
one included, builds its model from these bytes rather than from the path, and the bytes must hash to the digest
the fingerprint, ``job.yaml`` and every Parquet file record. No torch here: the driver pins before any model exists.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from ..config import weights_file_digest
from ..errors import ModelError


@dataclass(frozen=True)
class PinnedWeights:
    """The content of ``model.weights`` as the run read it; ``sha256`` is the digest the run records for it."""

    path: str  # absolute, on the driver's machine: for messages only (a worker loads ``data``, not the path)
    sha256: str
    data: bytes = field(repr=False)

    def verified_data(self) -> bytes:
        """``data``, once it is checked to hash to ``sha256``: a worker never loads weights the run does not record."""
        found = hashlib.sha256(self.data).hexdigest()
        if found != self.sha256:
            raise ModelError(f"model.weights: the bytes of {self.path} this worker was given have sha256 {found}, "
                             f"not the {self.sha256} this run records; refusing to load them")
        return self.data


def pin_weights(weights: str, recorded: str | None) -> PinnedWeights | None:
    """The bytes of the weights file ``weights`` names, read once (None for a weights name or ``none``).

    ``recorded``: the SHA-256 the run has written down for the file. Bytes that hash otherwise mean the file was
    replaced since, and the run stops with one line instead of computing from other weights than it records.
    """
    if weights.lower() == "none" or not os.path.isfile(weights):
        return None
    path = os.path.abspath(weights)
    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != recorded:
        raise weights_changed(path, recorded, digest)
    return PinnedWeights(path, digest, data)


def pin_job_weights(weights: str) -> PinnedWeights | None:
    """:func:`pin_weights` against the digest this process holds for the file (the one the fingerprint hashes): for
    an executor handed no pinned weights (a test's, a benchmark's)."""
    return pin_weights(weights, weights_file_digest(weights))


def weights_changed(path: str, recorded: str | None, found: str | None) -> ModelError:
    """The one-line error for a weights file whose content is no longer the one this run records."""
    return ModelError(f"model.weights: {path} changed while this run was starting (sha256 {recorded} recorded, "
                      f"{found or 'no file'} now); nothing was computed from it: run again once it stays put")
