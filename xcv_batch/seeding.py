"""Per-image, per-method seeds.

Every random draw (SmoothGrad noise, LIME samples, sensitivity perturbations) is seeded from
(job seed, image id, method, purpose), never from a global RNG, so an image's results do not depend on its batch,
its shard or how many workers ran.
"""

from __future__ import annotations

import hashlib


def derive_seed(job_seed: int, image_id: str, method: str, purpose: str = "") -> int:
    """A 31-bit seed, stable across processes and Python versions (no ``hash()``, which is salted).

    31 bits because ``numpy.random.RandomState`` (which the ``lime`` package uses) takes no more than 32, and
    scikit-image's quickshift passes its seed on as a C int.
    """
    text = f"{job_seed}\x1f{image_id}\x1f{method}\x1f{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") & 0x7FFFFFFF


def perturbation_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th perturbed copy of an input whose own seed is ``seed``.

    Max-Sensitivity explains perturbed copies; a stochastic method needs a seed for each, and it must depend only on
    the original image's seed and the copy's number.
    """
    return derive_seed(seed, str(index), "perturbed-copy")
