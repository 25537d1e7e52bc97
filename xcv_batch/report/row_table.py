"""The rows a summary reads, as arrays: one row per image × method (an ``ok`` row wins over an error, a later row over
an earlier one: a retried shard may have left an older row), the images in the run's order, one float table per
metric, and the real methods' rows in file order for the costs, the diagnostics and the failures.

Built from a run's Parquet files in two passes (:func:`read_table`): the keys of every row (the image id as an integer
code into the sorted ids, the index, the method, the status) decide which row of each image × method is kept; then the
values are read file by file, only the columns used, into preallocated arrays. What is held grows by the numbers kept
(8 bytes an image, method and metric; the ids once), never by a DataFrame of every row with its strings. A DataFrame
of rows (:func:`frame_table`, for :func:`xcv_batch.report.summarize.summarize_rows`) goes through the same code.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..methods.registry import is_control
from ..metrics.registry import DIAGNOSTICS, metrics_in
from ..output.results import Results

#: Row status codes: ``ok``, ``error``, anything else.
OK, ERROR, OTHER = 1, 2, 3
#: The key columns; ``index`` may be absent (the ids' order is then the images' order).
KEYS = ("image_id", "index", "method", "status")


@dataclass
class RowTable:
    """One kept row per image × method as arrays (see the module's docstring). Columns of the tables are the real
    methods, then the control maps; rows of the per-metric tables are :attr:`images`."""

    ids: list                      # the image ids, in id order: a code indexes this list
    images: np.ndarray             # codes of the images with a real method's row, by (index, id)
    image_ok: np.ndarray           # per image: whether any method (controls too) has an ok row
    methods: list[str]             # the real methods: the job's first, then those of the rows as they come
    controls: list[str]            # the control maps, likewise
    counts: dict[str, tuple[int, int]]  # real method → (ok rows, error rows)
    n_control_errors: int
    skipped: dict[str, str]        # metric column → why it cannot be ranked
    values: dict[str, np.ndarray]  # metric → (images, methods + controls) float64, NaN without an ok row
    # The real methods' kept rows, in file order:
    row_image: np.ndarray          # code
    row_method: np.ndarray         # column (into methods)
    row_status: np.ndarray         # OK, ERROR or OTHER
    seconds_columns: list[str]
    seconds: np.ndarray            # (seconds columns, rows)
    diagnostics: dict[str, np.ndarray]  # diagnostic column → value per row
    errors: dict[int, str | None]  # row → its message, for the error rows
    has_row: np.ndarray            # (ids, method names) whether a row exists, for the completeness count
    method_names: list[str]        # the columns of has_row

    def name(self, code) -> str:
        return str(self.ids[int(code)])

    def metric_skipped(self, metric: str) -> bool:
        return metric in self.skipped

    def real_values(self, metric: str) -> np.ndarray:
        """(images, methods) of ``metric``, C-contiguous."""
        return np.ascontiguousarray(self.values[metric][:, :len(self.methods)])

    def missing_rows(self, expected_ids: Sequence[str], methods: Sequence[str]) -> int:
        """Expected image × method pairs without any row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(expected_ids):
            return 0
        codes = pc.index_in(pa.array([str(i) for i in expected_ids], pa.string()),
                            value_set=pa.array([str(i) for i in self.ids], pa.string()))
        codes = codes.to_numpy(zero_copy_only=False)
        found = ~np.isnan(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
        codes = np.where(found, np.nan_to_num(codes), 0).astype(np.int64)
        missing = 0
        for name in methods:
            column = self.method_names.index(name) if name in self.method_names else None
            have = self.has_row[codes, column] & found if column is not None else np.zeros(len(codes), bool)
            missing += int((~have).sum())
        return missing


# --- building -------------------------------------------------------------------------------------------------------


@dataclass
class _Keys:
    """Every stored row's keys (file order): image code, index, method code into ``names``, status code, and the error
    that replaces an ``ok`` row's when its map is not stored whole (None: none does)."""

    ids: list
    code: np.ndarray
    index: np.ndarray
    method: np.ndarray
    names: list[str]
    status: np.ndarray
    replaced: dict[int, str]


def _build(keys: _Keys, given_methods: Sequence[str] | None, metric_columns: Sequence[str],
           seconds_columns: Sequence[str], diagnostic_columns: Sequence[str],
           batches: Iterable[tuple[int, int, Mapping[str, object]]], numeric: Mapping[str, bool],
           dtype_names: Mapping[str, str]) -> RowTable:
    n = len(keys.code)
    n_ids, n_names = len(keys.ids), len(keys.names)
    control_of = np.array([is_control(name) for name in keys.names], dtype=bool)
    # The kept row of each image × method: the last ok row, else the last row. (32-bit where it fits: 8,000,000
    # rows make each such array 32 MB instead of 64.)
    small = np.int32 if max(2 * n, n_ids * n_names) < 2**31 else np.int64
    score = np.arange(n, dtype=small)
    score[keys.status == OK] += n
    key = keys.code.astype(small)
    key *= n_names
    key += keys.method
    best = np.full(n_ids * n_names, -1, dtype=small)
    np.maximum.at(best, key, score)
    kept = score == best[key]
    has_row = (best >= 0).reshape(n_ids, n_names)
    del best, score, key
    real = kept & ~control_of[keys.method]
    control = kept & control_of[keys.method]

    def in_order(where: np.ndarray, given: Iterable[str]) -> list[str]:
        rows = keys.method[where]
        first = _first_rows(rows, n_names)
        codes = [c for c in np.argsort(first, kind="stable").tolist() if first[c] < len(rows)]
        return list(dict.fromkeys([*given, *(keys.names[c] for c in codes)]))

    methods = in_order(real, (m for m in given_methods or [] if not is_control(m)))
    controls = in_order(control, (m for m in given_methods or [] if is_control(m)))
    columns = [*methods, *controls]
    column_of = np.array([columns.index(name) if name in columns else -1 for name in keys.names], dtype=np.int64)

    # Images: those with a real method's kept row, by their smallest index, then id.
    first_index = np.full(n_ids, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_index, keys.code[real], keys.index[real])
    present = np.flatnonzero(first_index < np.iinfo(np.int64).max) if real.any() else np.zeros(0, np.int64)
    images = present[np.lexsort((present, first_index[present]))]
    position = np.full(n_ids, -1, dtype=np.int64)
    position[images] = np.arange(len(images))
    del first_index

    real_status = keys.status[real]
    real_column = column_of[keys.method[real]]
    counts = {name: (int(((real_column == j) & (real_status == OK)).sum()),
                     int(((real_column == j) & (real_status == ERROR)).sum())) for j, name in enumerate(methods)}
    n_control_errors = int((keys.status[control] == ERROR).sum())

    # Where each kept row's values go: its cell of the per-metric tables (ok rows of a listed image), and its place
    # among the real methods' rows.
    cell = np.full(n, -1, dtype=np.int64)
    into_tables = kept & (keys.status == OK) & (position[keys.code] >= 0)
    table_row = position[keys.code[into_tables]]
    cell[into_tables] = table_row * len(columns) + column_of[keys.method[into_tables]]
    image_ok = np.zeros(len(images), dtype=bool)
    image_ok[table_row] = True
    del table_row
    real_place = np.cumsum(real, dtype=np.int64)
    real_place -= 1
    n_real = int(real.sum())

    values = {m: np.full((len(images), len(columns)), np.nan) for m in metric_columns}
    seconds = np.full((len(seconds_columns), n_real), np.nan)
    diagnostics = {c: np.full(n_real, np.nan) for c in diagnostic_columns}
    errors: dict[int, str | None] = {}
    non_numeric_values: set[str] = set()
    error_rows = np.flatnonzero(real & (keys.status == ERROR))
    for start, size, batch in batches:
        end = start + size
        to_cell = cell[start:end]
        filled = to_cell >= 0
        mine = real[start:end]
        place = real_place[start:end][mine]
        for metric in metric_columns:
            column = batch[metric]
            if not numeric[metric]:
                if pd.notna(pd.Series(np.asarray(column, dtype=object)[mine])).any():
                    non_numeric_values.add(metric)
                continue
            values[metric].ravel()[to_cell[filled]] = np.asarray(column, dtype=float)[filled]
        for j, name in enumerate(seconds_columns):
            seconds[j, place] = np.asarray(batch[name], dtype=float)[mine]
        for name in diagnostic_columns:
            diagnostics[name][place] = np.asarray(batch[name], dtype=float)[mine]
        here = error_rows[np.searchsorted(error_rows, start):np.searchsorted(error_rows, end)]
        messages = batch.get("error")
        for r in here:
            message = keys.replaced.get(int(r))
            if message is None and messages is not None:
                value = messages[r - start]
                message = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            errors[int(real_place[r])] = message
    skipped = {m: f"column has non-numeric values ({dtype_names[m]})" for m in metric_columns
               if m in non_numeric_values}
    for metric in metric_columns:
        if not numeric[metric] and metric not in skipped:
            values[metric] = np.full((len(images), len(columns)), np.nan)
    return RowTable(ids=keys.ids, images=images, image_ok=image_ok, methods=methods, controls=controls, counts=counts,
                    n_control_errors=n_control_errors, skipped=skipped, values=values,
                    row_image=keys.code[real], row_method=real_column, row_status=real_status,
                    seconds_columns=list(seconds_columns), seconds=seconds, diagnostics=diagnostics, errors=errors,
                    has_row=has_row, method_names=list(keys.names))


def _codes(values: np.ndarray, order: Sequence) -> np.ndarray:
    return pd.Index(order).get_indexer(values).astype(np.int64)


def _status_codes(status: np.ndarray) -> np.ndarray:
    return np.where(status == "ok", OK, np.where(status == "error", ERROR, OTHER)).astype(np.int8)


def frame_table(rows: pd.DataFrame, methods: Sequence[str] | None = None,
                image_ids: Sequence[str] | None = None) -> RowTable:
    """The table of a DataFrame of metric rows (the Parquet schema; ``image_ids``: ``image_id`` holds integer codes
    into it, in the ids' order)."""
    raw_ids = rows["image_id"].to_numpy() if "image_id" in rows else np.zeros(0)
    if image_ids is not None:
        ids, code = list(image_ids), raw_ids.astype(np.int64)
    else:
        ids = sorted(pd.unique(raw_ids)) if len(raw_ids) else []
        code = _codes(raw_ids, ids)
    method_values = rows["method"].astype(str).to_numpy() if "method" in rows else np.zeros(0, dtype=object)
    names = list(dict.fromkeys(method_values))
    index = (rows["index"].to_numpy(dtype=np.int64) if "index" in rows and len(rows)
             else np.zeros(len(rows), dtype=np.int64))
    keys = _Keys(ids=ids, code=code, index=index, method=_codes(method_values, names), names=names,
                 status=_status_codes(rows["status"].astype(str).to_numpy()) if len(rows) else np.zeros(0, np.int8),
                 replaced={})
    metric_columns = metrics_in(rows.columns)
    seconds_columns = [c for c in rows.columns if c.endswith("_seconds")]
    diagnostic_columns = [c for c in DIAGNOSTICS if c in rows.columns]
    numeric = {m: bool(pd.api.types.is_numeric_dtype(rows[m])) for m in metric_columns}
    batch: dict[str, object] = {}
    for m in metric_columns:
        batch[m] = rows[m].to_numpy(dtype=float, na_value=np.nan) if numeric[m] else rows[m].to_numpy(dtype=object)
    for c in [*seconds_columns, *diagnostic_columns]:
        batch[c] = pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if "error" in rows:
        batch["error"] = rows["error"].to_numpy(dtype=object)
    return _build(keys, methods, metric_columns, seconds_columns, diagnostic_columns, [(0, len(rows), batch)],
                  numeric, {m: str(rows[m].dtype) for m in metric_columns})


# --- from a run's files ---------------------------------------------------------------------------------------------

_TABLES: "weakref.WeakKeyDictionary[Results, RowTable]" = weakref.WeakKeyDictionary()


def read_table(results: Results, methods: Sequence[str] | None = None) -> RowTable:
    """The table of a run's Parquet rows; every ``ok`` row whose map is not stored whole becomes an error row, as
    :meth:`~xcv_batch.output.results.Results.rows` says. Kept for the open ``results`` (the summary and its report
    share one read)."""
    if results in _TABLES:
        return _TABLES[results]
    import pyarrow as pa

    schema = results.row_schema()
    if schema is None:
        table = frame_table(results.rows(), methods)
        _TABLES[results] = table
        return table
    keys = _read_keys(results, schema)
    names = schema.names
    metric_columns = metrics_in(names)
    seconds_columns = [c for c in names if c.endswith("_seconds")]
    diagnostic_columns = [c for c in DIAGNOSTICS if c in names]

    def is_number(t: pa.DataType) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)

    numeric = {m: is_number(schema.field(m).type) for m in metric_columns}
    wanted = [*metric_columns, *seconds_columns, *diagnostic_columns, *(["error"] if "error" in names else [])]

    def batches():
        start = 0
        for part in results.scan_rows(wanted, schema=schema):
            batch = {}
            for name in wanted:
                column = part.column(name)
                if name == "error" or (name in numeric and not numeric[name]):
                    batch[name] = np.asarray(column.to_pylist(), dtype=object) if name != "error" else _errors_of(
                        column, keys.status[start:start + part.num_rows])
                else:
                    batch[name] = column.to_numpy() if not pa.types.is_null(column.type) else np.full(
                        part.num_rows, np.nan)
            yield start, part.num_rows, batch
            start += part.num_rows

    table = _build(keys, methods, metric_columns, seconds_columns, diagnostic_columns, batches(), numeric,
                   {m: str(schema.field(m).type) for m in metric_columns})
    _TABLES[results] = table
    return table


def _errors_of(column, status: np.ndarray) -> np.ndarray:
    """The messages of the error rows (None elsewhere: only those are ever read)."""
    messages = np.full(len(status), None, dtype=object)
    rows = np.flatnonzero(status == ERROR)
    if len(rows):
        messages[rows] = column.take(rows).to_pylist()
    return messages


def _distinct(chunks: list) -> tuple:
    """(the distinct values of a string column given as its chunks, as one array; a code per row; each code's value,
    an index into the values): row ``r`` holds ``values[value_of[codes[r]]]``. Chunks read dictionary-encoded are
    coded through their dictionaries, so only each file's distinct values are hashed, not every row's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not chunks or not all(pa.types.is_dictionary(c.type) for c in chunks):
        column = pa.chunked_array(chunks, pa.string()) if not chunks else pa.chunked_array(chunks).cast(pa.string())
        values = pc.unique(column)
        codes = pc.index_in(column, value_set=values).to_numpy()
        return values, codes, np.arange(len(values))
    offsets = np.cumsum([0, *(len(c.dictionary) for c in chunks)]).tolist()
    null_at = offsets[-1]  # a null row points past the dictionaries, at a null appended to them
    code_type = np.int32 if null_at < 2**31 - 1 else np.int64
    codes = np.concatenate([c.indices.fill_null(null_at - start).to_numpy().astype(code_type, copy=False) + start
                            for c, start in zip(chunks, offsets[:-1])]).astype(code_type, copy=False)
    dictionaries = pa.concat_arrays([*(c.dictionary.cast(pa.string()) for c in chunks),
                                     *([pa.nulls(1, pa.string())] if any(c.null_count for c in chunks) else [])])
    encoded = pc.dictionary_encode(dictionaries, null_encoding="encode")  # one hash of the dictionaries' values
    values, value_of = encoded.dictionary, encoded.indices.to_numpy()
    # A file's dictionary may hold a value none of its rows has; such a value is no row's.
    used = np.zeros(len(dictionaries), dtype=bool)
    used[codes] = True
    kept = np.zeros(len(values), dtype=bool)
    kept[value_of[used]] = True
    if not kept.all():
        values = values.filter(pa.array(kept))
        value_of = (np.cumsum(kept) - 1)[value_of]
    return values, codes, value_of


def _first_rows(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """The first row holding each of ``n_codes`` codes (``len(codes)`` for one no row holds)."""
    rows = np.full(n_codes, len(codes), dtype=np.int64)
    if n_codes > 64:  # a pass per code would cost more than a sort
        found, first = np.unique(codes, return_index=True)
        rows[found] = first
        return rows
    for c in range(n_codes):
        here = codes == c
        if here.any():
            rows[c] = int(here.argmax())
    return rows


def _read_keys(results: Results, schema) -> _Keys:
    """Pass one: every row's keys; the ids are coded into their sorted list, and ``ok`` rows whose map is not stored
    whole become errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = [k for k in KEYS if k in schema.names]
    parts = list(results.scan_rows(names, dictionary=["image_id", "method", "status"], schema=schema))

    def chunks(name: str) -> list:
        return [chunk for part in parts for chunk in part.column(name).chunks]

    # Each code goes through the small tables (a value per dictionary entry) first, so each row is looked up once.
    unique, codes, value_of = _distinct(chunks("image_id"))
    order = pc.array_sort_indices(unique).to_numpy()
    sorted_ids = unique.take(pa.array(order))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    code = rank[value_of][codes]
    del unique, codes, order, rank
    # The methods in the order they first come in the rows.
    method_values, codes, value_of = _distinct(chunks("method"))
    method = value_of[codes].astype(np.int32, copy=False)
    by_first = np.argsort(_first_rows(method, len(method_values)), kind="stable")
    method_names = [str(m) for m in method_values.take(pa.array(by_first)).to_pylist()]
    renumber = np.empty(len(by_first), dtype=np.int32)
    renumber[by_first] = np.arange(len(by_first))
    method = renumber[method]
    status_values, codes, value_of = _distinct(chunks("status"))
    status_of = np.where(pc.equal(status_values, "ok").fill_null(False).to_numpy(zero_copy_only=False), OK,
                         np.where(pc.equal(status_values, "error").fill_null(False).to_numpy(zero_copy_only=False),
                                  ERROR, OTHER)).astype(np.int8)
    status = status_of[value_of][codes]
    del codes, value_of
    index = (pa.chunked_array(chunks("index"), schema.field("index").type).to_numpy().astype(np.int64, copy=False)
             if "index" in names else np.zeros(len(code), dtype=np.int64))
    del parts
    replaced: dict[int, str] = {}
    for m, name in enumerate(method_names):
        stored = results.stored_maps(name)
        if stored is None:
            continue
        missing = Results.MAP_MISSING.format(folder=results.maps.folder)
        ok = np.flatnonzero((method == m) & (status == OK))
        whole = np.sort(np.fromiter(stored.whole, dtype=np.int64, count=len(stored.whole)))
        # index[ok] in whole, by a search in the sorted images (np.isin would sort the rows' indices too)
        at = np.searchsorted(whole, index[ok]).clip(max=max(len(whole) - 1, 0))
        lost = ok[whole[at] != index[ok]] if len(whole) else ok
        status[lost] = ERROR
        for r, image in zip(lost.tolist(), index[lost].tolist()):
            where = stored.broken.get(image)
            replaced[r] = missing if where is None else Results.MAP_UNREADABLE.format(where=where)
    return _Keys(ids=sorted_ids.to_pylist(), code=code, index=index, method=method, names=method_names,
                 status=status, replaced=replaced)
