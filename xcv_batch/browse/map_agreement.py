"""Where the methods' maps disagree: per image, the mean over pairs of methods of Spearman's rank correlation between
their channel-summed maps (pixel by pixel). 1: every method orders the pixels alike; near 0 or below: they point at
different evidence.

It reads every committed map once, so it is computed when its page is first asked for, then kept in memory for the
life of the server (only new images are read after that); it is never written into OUT.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import OutputError
from ..methods.registry import is_control
from .index import Snapshot


def pixel_ranks(maps: np.ndarray) -> np.ndarray:
    """Each map's pixels ranked (ties share the mean rank), ``(n, H·W)``: Spearman's ρ is the correlation of these."""
    return rankdata(maps.reshape(len(maps), -1), axis=1)


def mean_pairwise_correlation(ranks: list[np.ndarray]) -> float:
    """The mean over pairs of maps of Spearman's ρ, from their :func:`pixel_ranks`; a constant map has no ρ with any
    other (left out); NaN when no pair has one."""
    if len(ranks) < 2:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant map's row is NaN, as said
        matrix = np.corrcoef(np.stack(ranks))
        values = matrix[np.triu_indices(len(ranks), k=1)]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


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
            # the control maps know nothing about the model: agreement is the real methods' only
            ok = ok[~ok["method"].astype(str).map(is_control)]
            todo = ok[~ok["index"].isin(list(self._values))]
            images = np.unique(todo["index"].to_numpy())
            for first in range(0, len(images), BATCH_IMAGES):
                batch = todo[todo["index"].isin(images[first:first + BATCH_IMAGES])]
                maps: dict[int, list[np.ndarray]] = {}
                for method, rows in batch.groupby("method", sort=False):
                    indices = rows["index"].astype(int).tolist()
                    kept = [(index, summed) for index, summed in zip(indices, self._summed(snapshot, indices,
                                                                                          str(method)))
                            if summed is not None and np.isfinite(summed).all()]
                    if kept:  # ranked together: one call per method and batch
                        for (index, _), ranks in zip(kept, pixel_ranks(np.stack([m for _, m in kept]))):
                            maps.setdefault(index, []).append(ranks)
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
