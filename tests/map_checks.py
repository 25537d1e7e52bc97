"""Maps of separate runs compared to float32 rounding.

Within one process the same images, weights and batches give the same maps bit for bit (twenty repeats of Guided
Grad-CAM on one batch: no element differed). Across processes some CPUs round apart: on an AVX-512 machine, Guided
Grad-CAM's maps from two runs of one job differed by up to 5e-7 of a value, now and then; the cause inside torch's
CPU kernels is not pinned down. A wrong map is off by its own scale, so "the same map" is equal to 1e-5 of the
map's largest magnitude.
"""

from __future__ import annotations

import numpy as np

#: Relative to the map's largest magnitude: float32 rounding of a convolution's sums, with room to spare.
ROUNDING = 1e-5


def assert_same_map(found: np.ndarray, expected: np.ndarray, message: str = "", rtol: float = ROUNDING) -> None:
    """``found`` is ``expected`` up to float32 rounding (``rtol`` of each value, or of the largest magnitude)."""
    scale = float(np.abs(expected).max()) if np.size(expected) else 0.0
    np.testing.assert_allclose(found, expected, rtol=rtol, atol=ROUNDING * scale, err_msg=message)
