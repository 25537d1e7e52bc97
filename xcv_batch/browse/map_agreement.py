"""Where the methods' maps disagree, as the page shows it: the values ``summarize`` stored beside the run
(``OUT/map_agreement.parquet``, see :mod:`xcv_batch.report.map_agreement`) for every image whose compared maps are
still the committed ones, and the rest computed in a background thread (the page says how far it got instead of
waiting), kept in memory for the life of the server. Nothing is written into OUT.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pandas as pd

from ..errors import OutputError, first_line
from ..report import map_agreement
from .index import Snapshot


@dataclass(frozen=True)
class Progress:
    """The values known now (image index → value, NaN where unknown or none), how many of the images with maps to
    compare have one, how many of those came from the stored file, why the computation stopped (None: it did not)
    and why the stored file was not used (None: it was, or there is none)."""

    values: pd.Series
    done: int
    total: int
    stored: int = 0
    error: str | None = None
    stored_problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.done == self.total or self.error is not None


class MapAgreement:
    """The per-image values of one run, shared by the server's threads."""

    def __init__(self, count_read=lambda n: None):
        self._count_read = count_read
        self._lock = threading.Lock()
        #: image index → (value, number of methods compared): what is known, stored or computed
        self._known: dict[int, tuple[float, int]] = {}
        self._generation: int | None = None
        self._wanted: dict[int, int] = {}  # image index → methods to compare, for this snapshot
        self._compared: pd.DataFrame | None = None
        self._worker: threading.Thread | None = None
        self._error: str | None = None
        self._stored = 0
        self._stored_problem: str | None = None
        self._complete: Progress | None = None

    def progress(self, snapshot: Snapshot) -> Progress:
        """The values for ``snapshot``'s images as far as they are known; starts the computation of the others."""
        with self._lock:
            if self._generation != snapshot.generation:
                self._compared = map_agreement.compared_rows(snapshot.best)
                counts = self._compared.groupby("index")["method"].size()
                self._wanted = dict(zip(counts.index.tolist(), counts.tolist()))
                self._take_stored(snapshot)
                self._generation, self._complete = snapshot.generation, None
            if self._complete is not None:  # every value known: the same answer as last time
                return self._complete
            missing = self._missing()
            if missing and self._error is None and (self._worker is None or not self._worker.is_alive()):
                todo = self._compared[self._compared["index"].isin(missing)]
                self._worker = threading.Thread(target=self._compute, args=(snapshot, todo), daemon=True,
                                                name="browse-map-agreement")
                self._worker.start()
            known = [i for i in self._wanted if self._matches(i)]
            values = pd.Series([self._known[i][0] for i in known], index=known, dtype=float)
            progress = Progress(values.reindex(snapshot.image_ids.index), len(self._wanted) - len(missing),
                                len(self._wanted), self._stored, self._error, self._stored_problem)
            if not missing:
                self._complete = progress
            return progress

    def wait(self, timeout: float | None = None) -> None:
        """Until the computation running now (if any) ends."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _matches(self, index: int) -> bool:
        known = self._known.get(index)
        return known is not None and known[1] == self._wanted.get(index)

    def _missing(self) -> list[int]:
        return [i for i in self._wanted if not self._matches(i)]

    def _take_stored(self, snapshot: Snapshot) -> None:
        """The stored values of the images whose committed maps are the ones compared then (the same id and as many
        methods: an image's ok rows only ever grow), unless known here already."""
        self._stored_problem = None
        try:
            stored = map_agreement.read(snapshot.results)
        except OutputError as err:  # a damaged file: the values are computed here, and the page says why
            self._stored_problem = first_line(err)
            return
        valid = map_agreement.still_valid(stored, self._compared)
        for index, value, n in zip(valid["index"].tolist(), valid["map_agreement"].tolist(),
                                   valid["n_methods"].tolist()):
            if not self._matches(index):
                self._known[index] = (value, n)
                self._stored += 1

    def _compute(self, snapshot: Snapshot, todo: pd.DataFrame) -> None:
        try:
            for batch in map_agreement.agreement(snapshot.results, todo, self._count_read):
                with self._lock:
                    for index, value, n in zip(batch["index"].tolist(), batch["map_agreement"].tolist(),
                                               batch["n_methods"].tolist()):
                        self._known[int(index)] = (float(value), int(n))
        except Exception as err:  # noqa: BLE001 - said on the page: a server thread has no one else to tell
            with self._lock:
                self._error = f"{type(err).__name__}: {first_line(err)}"

