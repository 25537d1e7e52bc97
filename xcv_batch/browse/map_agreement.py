"""Where the methods' maps disagree: per image, the mean over pairs of methods of Spearman's rank correlation between
their channel-summed maps (pixel by pixel). 1: every method orders the pixels alike; near 0 or below: they point at
different evidence.

It reads every committed map once, so it is computed when its page is first asked for, then kept in memory for the
life of the server (only new images are read after that); it is never written into OUT.
"""

from __future__ import annotations

import threading
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import OutputError
from .index import Snapshot


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ between two maps' pixels (NaN when either map is constant)."""
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def mean_pairwise_correlation(maps: list[np.ndarray]) -> float:
    """The mean of :func:`rank_correlation` over every pair of ``maps`` with one (NaN when none has)."""
    values = [rank_correlation(a, b) for a, b in combinations(maps, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no pair with a correlation: NaN, as said
        return float(np.nanmean(values)) if values else float("nan")


#: Images whose maps are read together (one batch per method).
BATCH_IMAGES = 256


class MapAgreement:
    """The per-image values, computed once per image and kept."""

    def __init__(self, count_read=lambda n: None):
        self._values: dict[int, float] = {}
        self._lock = threading.Lock()
        self._count_read = count_read

    def values(self, snapshot: Snapshot) -> pd.Series:
        """Image index → mean pairwise ρ of its methods' maps (ok rows only), for every image with committed rows."""
        with self._lock:  # one computation at a time: a second request waits for the first's values
            ok = snapshot.best[snapshot.best["status"] == "ok"]
            todo = ok[~ok["index"].isin(list(self._values))]
            images = np.unique(todo["index"].to_numpy())
            for first in range(0, len(images), BATCH_IMAGES):
                batch = todo[todo["index"].isin(images[first:first + BATCH_IMAGES])]
                maps: dict[int, list[np.ndarray]] = {}
                for method, rows in batch.groupby("method", sort=False):
                    indices = rows["index"].astype(int).tolist()
                    for index, summed in zip(indices, self._summed(snapshot, indices, str(method))):
                        if summed is not None and np.isfinite(summed).all():
                            maps.setdefault(index, []).append(summed)
                for index in map(int, images[first:first + BATCH_IMAGES]):
                    self._values[index] = mean_pairwise_correlation(maps.get(index, []))
            return pd.Series([self._values.get(int(i), np.nan) for i in snapshot.image_ids.index],
                             index=snapshot.image_ids.index, dtype=float)

    def _summed(self, snapshot: Snapshot, indices: list[int], method: str) -> list[np.ndarray | None]:
        """The channel-summed maps, read together; one at a time when one cannot be decoded (None: left out, as
        show leaves an unreadable map out)."""
        ids = [snapshot.image_id(i) for i in indices]
        self._count_read(len(ids))
        try:
            return [m.sum(axis=0) for m in snapshot.results.attributions(ids, method)]
        except OutputError:
            pass
        found = []
        for image_id in ids:
            try:
                found.append(snapshot.results.attribution(image_id, method).sum(axis=0))
            except OutputError:
                found.append(None)
        return found
