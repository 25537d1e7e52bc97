"""What the pages ask of a run's committed rows: the images in a sort and a filter, one page of them, an image's rows
and its methods' ranks, and each image's agreement between metrics.

A :class:`RunIndex` keeps one :class:`Snapshot` of the rows and makes a new one when the set of committed Parquet
files changes (checked at most every ``refresh_seconds``), so a run that is still writing shows each shard once it is
committed, and never a file in flight (:meth:`~xcv_batch.output.results.Results.metrics_files` leaves those out).
Only the rows are read here; maps are read by :mod:`.render`, one per picture shown.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from itertools import combinations

import fsspec
import numpy as np
import pandas as pd

from ..errors import NotFound, RequestRefused
from ..metrics.registry import COST_COLUMNS, DIAGNOSTICS, metric_info, metrics_in
from ..output.layout import METRICS_DIR
from ..output.results import Results, open_results
from ..report import stats

#: The filter's comparisons: query value → what it keeps.
FILTER_OPS = {"contains": "contains", "eq": "=", "ne": "≠", "lt": "<", "le": "≤", "gt": ">", "ge": "≥"}
PAGE_SIZES = (20, 50, 100, 200)  # offered by the list's form; any size up to the most can be asked for
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 20
#: Sorts and filters remembered per snapshot (each is one array of image indices).
_ORDERS_KEPT = 32


def refuse_path_like(name: str, value: str) -> str:
    """``value`` itself, or RequestRefused when it looks like a path: a parameter that names a column, a method or an
    image is looked up in the run's own lists, and one that could climb out of a folder is refused before that."""
    # an image id may hold "/" (a subfolder of the source); nothing else may
    if any(mark in value for mark in ("\\", "\x00")) or value.startswith("/") or ".." in value.split("/") \
            or ("/" in value and name != "id"):
        raise RequestRefused(f"{name}: path-like value refused")
    return value


@dataclass(frozen=True)
class ListQuery:
    """The list's sort, filter and page, as its URL's query says."""

    sort: str = "index"
    #: whose row gives the sort and filter column's value (None: the image's rows together: numbers averaged,
    #: texts listed; a filter keeps an image when any of its rows matches)
    method: str | None = None
    desc: bool = False
    column: str | None = None
    op: str = "contains"
    value: str = ""
    page: int = 1
    per: int = DEFAULT_PER_PAGE

    @classmethod
    def parse(cls, params: dict[str, str], columns: list[str], methods: list[str]) -> "ListQuery":
        """The query of ``params``; RequestRefused naming the parameter that is wrong."""
        def named(key: str, allowed: list[str], default):
            value = params.get(key, "")
            if value == "":
                return default
            refuse_path_like(key, value)
            if value not in allowed:
                raise RequestRefused(f"{key}: no {value!r} in this run")
            return value

        def whole(key: str, default: int, low: int) -> int:
            text = params.get(key, "")
            if text == "":
                return default
            if not text.isdigit() or int(text) < low:
                raise RequestRefused(f"{key}: must be a whole number ≥ {low}, got {text!r}")
            return int(text)

        per = whole("per", DEFAULT_PER_PAGE, 1)
        if per > MAX_PER_PAGE:
            raise RequestRefused(f"per: at most {MAX_PER_PAGE} images a page, got {per}")
        return cls(sort=named("sort", columns, "index"), method=named("method", methods, None),
                   desc=params.get("desc", "") in ("1", "on", "true"), column=named("col", columns, None),
                   op=named("op", list(FILTER_OPS), "contains"), value=params.get("val", ""),
                   page=whole("page", 1, 1), per=per)

    def params(self, **changes) -> dict[str, str]:
        """The URL parameters that give this query back (defaults left out), with ``changes`` made."""
        query = replace(self, **changes)
        found = {"sort": query.sort if query.sort != "index" else None, "method": query.method,
                 "desc": "1" if query.desc else None, "col": query.column if query.value != "" else None,
                 "op": query.op if query.column and query.value != "" else None,
                 "val": query.value if query.column and query.value != "" else None,
                 "page": str(query.page) if query.page != 1 else None,
                 "per": str(query.per) if query.per != DEFAULT_PER_PAGE else None}
        return {key: value for key, value in found.items() if value is not None}


class Snapshot:
    """The committed rows at one moment, and the answers computed from them (kept while the rows stay)."""

    def __init__(self, results: Results, generation: int):
        self.results = results
        self.generation = generation
        self.rows = results.rows()
        # One row per image and method: an ok row beats an error row of a retried shard, then the last one written.
        self.best = (self.rows.assign(_ok=self.rows["status"] == "ok").sort_values(["_ok"], kind="stable")
                     .drop_duplicates(["index", "method"], keep="last").drop(columns="_ok")
                     .sort_values(["index", "method"], kind="stable").reset_index(drop=True))
        self.methods = list(dict.fromkeys([*results.methods, *self.best["method"].astype(str)]))
        self.columns = [str(c) for c in self.rows.columns]
        self._positions = self.best.groupby("index").indices  # image index → its rows' positions in best
        # image index → method → (status, error): what the list asks of every image shown, without pandas per image
        self._statuses: dict[int, dict[str, tuple[str, object]]] = {}
        for index, method, status, error in zip(self.best["index"].tolist(), self.best["method"].astype(str).tolist(),
                                                self.best["status"].astype(str).tolist(),
                                                self.best.get("error", pd.Series([None] * len(self.best))).tolist()):
            self._statuses.setdefault(int(index), {})[method] = (status, error)
        self._values: OrderedDict[tuple, pd.Series] = OrderedDict()
        first = self.best.drop_duplicates("index")
        self.image_ids = pd.Series(first["image_id"].astype(str).to_numpy(), index=first["index"].to_numpy())
        self._id_of = dict(zip(self.image_ids.index.tolist(), self.image_ids.tolist()))  # a page asks it per row
        self._orders: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._metric_taus: pd.Series | None = None

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def image_id(self, index: int) -> str:
        """The id of image ``index``; NotFound when it has no committed row."""
        found = self._id_of.get(index)
        if found is None:
            raise NotFound(f"no image {index} among the {self.n_images} images with committed rows")
        return found

    def index_of_id(self, image_id: str) -> int:
        found = self.image_ids.index[self.image_ids.to_numpy() == image_id]
        if not len(found):
            raise NotFound(f"no image {image_id!r} among the {self.n_images} images with committed rows")
        return int(found[0])

    def check_method(self, method: str) -> str:
        refuse_path_like("method", method)
        if method not in self.methods:
            raise NotFound(f"no method {method!r} in this run ({', '.join(self.methods)})")
        return method

    # --- the list ---------------------------------------------------------------------------------------------------

    def column_values(self, column: str, method: str | None) -> pd.Series:
        """:meth:`_column_values`, computed once per column and method."""
        key = (column, method)
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        values = self._column_values(column, method)
        with self._lock:
            self._values[key] = values
            while len(self._values) > _ORDERS_KEPT:
                self._values.popitem(last=False)
        return values

    def _column_values(self, column: str, method: str | None) -> pd.Series:
        """Per image (indexed by image index, in index order): ``column`` of ``method``'s row, or of the image's rows
        together (numbers: their mean; texts: the distinct values, sorted, joined by " / ")."""
        if column == "index":
            return pd.Series(self.image_ids.index, index=self.image_ids.index)
        if method is not None:
            of_method = self.best[self.best["method"] == method]
            return of_method.set_index("index")[column].reindex(self.image_ids.index)
        values = self.best[["index", column]]
        if pd.api.types.is_numeric_dtype(values[column]) and not pd.api.types.is_bool_dtype(values[column]):
            return values.groupby("index")[column].mean().reindex(self.image_ids.index)
        distinct = values.dropna().astype({column: str}).drop_duplicates().sort_values(["index", column])
        return distinct.groupby("index")[column].agg(" / ".join).reindex(self.image_ids.index)

    def order(self, query: ListQuery) -> np.ndarray:
        """The image indices the list shows for ``query``'s sort and filter (every page), computed once."""
        key = (query.sort, query.method, query.desc, query.column, query.op, query.value)
        with self._lock:
            if key in self._orders:
                self._orders.move_to_end(key)
                return self._orders[key]
        values = self.column_values(query.sort, query.method)
        ordered = values.sort_values(ascending=not query.desc, kind="stable", na_position="last").index.to_numpy()
        if query.column is not None and query.value != "":
            ordered = ordered[np.isin(ordered, self._matching(query))]
        with self._lock:
            self._orders[key] = ordered
            while len(self._orders) > _ORDERS_KEPT:
                self._orders.popitem(last=False)
        return ordered

    def _matching(self, query: ListQuery) -> np.ndarray:
        """The image indices with a row (``query.method``'s, or any) whose column passes the filter."""
        rows = self.best if query.method is None else self.best[self.best["method"] == query.method]
        column = rows[query.column]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if query.op == "contains":
            keep = column.notna() & column.astype(str).str.contains(query.value, case=False, regex=False)
        else:
            if numeric:
                try:
                    wanted = float(query.value)
                except ValueError:
                    raise RequestRefused(f"val: {query.column} holds numbers; {query.value!r} is not one") from None
            else:
                column, wanted = column.astype(str).where(column.notna()), query.value
            keep = {"eq": column == wanted, "ne": (column != wanted) & column.notna(), "lt": column < wanted,
                    "le": column <= wanted, "gt": column > wanted, "ge": column >= wanted}[query.op]
        return rows.loc[keep.fillna(False).astype(bool), "index"].unique()

    def page(self, query: ListQuery) -> tuple[np.ndarray, int]:
        """The image indices of ``query``'s page and the number of pages; NotFound past the last page."""
        ordered = self.order(query)
        pages = max(1, -(-len(ordered) // query.per))
        if query.page > pages:
            raise NotFound(f"page {query.page}: the list has {pages} page{'s' if pages > 1 else ''}")
        first = (query.page - 1) * query.per
        return ordered[first:first + query.per], pages

    def neighbours(self, index: int, query: ListQuery) -> tuple[int | None, int | None, int | None]:
        """(previous image, next image, position from 0) of ``index`` in ``query``'s order; None where there is
        none (position None: the image is filtered out)."""
        ordered = self.order(query)
        where = np.flatnonzero(ordered == index)
        if not len(where):
            return None, None, None
        at = int(where[0])
        return (int(ordered[at - 1]) if at > 0 else None,
                int(ordered[at + 1]) if at + 1 < len(ordered) else None, at)

    # --- one image --------------------------------------------------------------------------------------------------

    def image_rows(self, index: int) -> pd.DataFrame:
        """Every committed row of image ``index`` (a retried shard's older error rows too), by method."""
        self.image_id(index)
        return self.rows[self.rows["index"] == index].sort_values("method", kind="stable")

    def statuses(self, index: int) -> dict[str, tuple[str, object]]:
        """Method → (status, error) of image ``index``'s row that counts (see ``best``)."""
        return self._statuses.get(int(index), {})

    def best_rows(self, index: int) -> dict[str, pd.Series]:
        """Method → the row of image ``index`` that counts (see ``best``)."""
        rows = self.best.iloc[self._positions.get(index, [])]
        return {str(row["method"]): row for _, row in rows.iterrows()}

    def ranks(self, index: int) -> dict[str, dict[str, float]]:
        """Metric → method → the method's rank on image ``index`` by that metric (1 best, ties share the mean rank),
        among the methods with an ok row and a value."""
        rows = self.best[(self.best["index"] == index) & (self.best["status"] == "ok")].set_index("method")
        found = {}
        for metric in ranked_metrics(self.columns):
            values = pd.to_numeric(rows[metric], errors="coerce").dropna()
            if len(values):
                ranks = stats.rank_rows(values.to_numpy()[None, :], metric_info(metric).direction)[0]
                found[metric] = dict(zip(values.index.astype(str), ranks.tolist()))
        return found

    # --- where the metrics disagree ---------------------------------------------------------------------------------

    def metric_taus(self) -> pd.Series | None:
        """Per image (index → value): the mean over pairs of ranked metrics of Kendall's τ-b between the orders the
        two give the methods, as ``summarize`` computes it per image before averaging; None when the run has fewer
        than two ranked metrics. NaN where no pair orders every method (a failed method, a tie of all)."""
        metrics = ranked_metrics(self.columns)
        if len(metrics) < 2:
            return None
        if self._metric_taus is None:
            ok = self.best[self.best["status"] == "ok"]
            tables = {m: ok.pivot(index="index", columns="method", values=m).reindex(index=self.image_ids.index)
                      for m in metrics}
            taus = []
            for a, b in combinations(metrics, 2):
                common = [m for m in self.methods if m in tables[a] and m in tables[b]]
                if len(common) < 2:
                    continue
                oriented = [tables[m][common].to_numpy(dtype=float) * (-1 if metric_info(m).direction == "higher"
                                                                        else 1) for m in (a, b)]
                taus.append(stats.kendall_tau_rows(*oriented))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an image where no pair has a τ is NaN, as said
                mean = np.nanmean(np.vstack(taus), axis=0) if taus else np.full(self.n_images, np.nan)
            self._metric_taus = pd.Series(mean, index=self.image_ids.index)
        return self._metric_taus


def ranked_metrics(columns: list[str]) -> list[str]:
    """The metric columns every method has, which rank the methods (not costs, not one method's diagnostics)."""
    return [m for m in metrics_in(columns) if m not in COST_COLUMNS and m not in DIAGNOSTICS]


class RunIndex:
    """The run at ``out`` (a path or an s3:// prefix) as the pages see it: :meth:`snapshot` gives the committed rows,
    fresh within ``refresh_seconds``. An OutputError (one line) when ``out`` is not an output directory."""

    def __init__(self, out: str, refresh_seconds: float = 2.0):
        self.out = str(out).rstrip("/")
        open_results(self.out)  # the bad-OUT message, before any page is served
        self.refresh_seconds = refresh_seconds
        self._fs, root = fsspec.core.url_to_fs(self.out)
        self._metrics_root = f"{root}/{METRICS_DIR}"
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._files: list[str] | None = None
        self._checked = 0.0

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._checked >= self.refresh_seconds:
                self._checked = now
                self._fs.invalidate_cache(self._metrics_root)  # s3fs remembers listings: a new shard must show
                results = Results(self.out)
                files = results.metrics_files()
                if files != self._files or self._snapshot is None:
                    generation = self._snapshot.generation + 1 if self._snapshot else 1
                    self._snapshot, self._files = Snapshot(results, generation), files
            return self._snapshot
