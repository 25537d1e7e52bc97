"""Reading a run's output directory: the metric rows as a DataFrame, the maps of one image by id and method.

Example (a notebook)::

    from xcv_batch.output.results import open_results

    res = open_results("results/demo")             # a local path or an s3:// prefix
    rows = res.rows()                              # pandas: one row per image × method
    rows[rows.status == "ok"].groupby("method").sensitivity_max.median()
    attr = res.attribution(res.image_ids[0], "occlusion")   # (3, H, W) float32, reads one Zarr chunk
    # (maps are read through the run's map format: :mod:`xcv_batch.output.formats`)
    img = res.input_image(res.image_ids[0])                 # (H, W, 3) in [0, 1]

The Parquet files are plain Parquet, so DuckDB reads them without xcv_batch::

    import duckdb
    duckdb.sql("SELECT method, median(sensitivity_max), count(*) FROM 'results/demo/metrics/*.parquet' "
               "WHERE status = 'ok' GROUP BY method")
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any, Iterator, Sequence

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from ..errors import ConfigError, OutputError, first_line
from .formats import MapReader, MapUnreadable, StoredMaps, format_of_job, map_reader
from .layout import IMAGENET_MEAN, IMAGENET_STD, JOB_FILE, METRICS_DIR, pandas_dtypes
from .provenance import provenance_from_metadata
from ..yaml_io import load_yaml

#: The Parquet columns of the contract (:data:`xcv_batch.output.layout.ROW_COLUMNS`), with the dtypes an empty table
#: gets.
ROW_COLUMNS = pandas_dtypes()

#: Metrics files :meth:`Results.scan_rows` decodes ahead of the one it gives, each in a thread.
_READ_AHEAD = 2

# Used only when an output directory predates the ``preprocessing`` attribute.
_IMAGENET_PREPROCESSING = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def open_results(out: "str | Results") -> "Results":
    """Open the output directory ``out`` for reading; nothing is read until asked for. An open ``Results`` is
    returned as it is, so callers that share one read every file once."""
    return out if isinstance(out, Results) else Results(out)


class Results:
    """One output directory, read lazily: ``rows()``, ``job``, ``image_ids``, ``methods``, ``attribution()``,
    ``input_image()``."""

    def __init__(self, out: str):
        self.out = str(out).rstrip("/")
        self._rows: pd.DataFrame | None = None
        #: Chunk files that a read found undecodable (their path → the message), for callers to report once each.
        self.unreadable: dict[str, str] = {}
        self._fs, self._root = fsspec.core.url_to_fs(self.out)
        if not self._fs.exists(self._root):
            raise OutputError(f"{self.out}: no such output directory")
        if not (any(self._fs.exists(f"{self._root}/{name}") for name in (JOB_FILE, METRICS_DIR))
                or self.maps.exists()):
            raise OutputError(f"{self.out}: not an xcv_batch output directory (no {JOB_FILE}, {METRICS_DIR}/ or "
                              f"{self.maps.folder})")

    def __repr__(self) -> str:
        return f"Results({self.out!r})"

    # --- the job and the maps' attributes --------------------------------------------------------------------------

    @cached_property
    def job(self) -> dict:
        """The resolved job (``OUT/job.yaml``, with its ``fingerprint``); empty if the file is missing."""
        path = f"{self._root}/{JOB_FILE}"
        if not self._fs.exists(path):
            return {}
        with self._fs.open(path, "r") as f:
            job = load_yaml(f)
        return job if isinstance(job, dict) else {}

    @cached_property
    def maps(self) -> MapReader:
        """The reader of the maps, in the format the job file names (:mod:`xcv_batch.output.formats`; the format's
        own imports, zarr for the default, come only when a map or attribute is read)."""
        return map_reader(self.out, format_of_job(self.job))

    @property
    def attrs(self) -> dict:
        """The maps' attributes (empty when no maps are laid out yet)."""
        return self.maps.attrs()

    @cached_property
    def stored_image_ids(self) -> list[str] | None:
        """The run's image ids in index order as its maps list them (Zarr: the ``image`` array; the ``image_ids``
        attribute of older outputs), or None when there are none: then nobody knows how many images the run
        will have."""
        return self.maps.image_ids()

    @cached_property
    def image_ids(self) -> list[str]:
        """Image ids in index order (from the maps; from the rows if there are none)."""
        if self.stored_image_ids is not None:
            return self.stored_image_ids
        rows = self.rows()
        return rows.sort_values("index").drop_duplicates("image_id")["image_id"].astype(str).tolist()

    @cached_property
    def methods(self) -> list[str]:
        """The methods the job ran, in the job's order."""
        for source in (self.attrs.get("methods"), self.job.get("methods")):
            if isinstance(source, dict) and source:
                return list(source)
        return list(dict.fromkeys(self.rows()["method"]))

    @property
    def fingerprint(self) -> str | None:
        return self.job.get("fingerprint") or self.attrs.get("fingerprint")

    @property
    def categories(self) -> list[str] | None:
        return self.attrs.get("categories")

    @cached_property
    def _index_of(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.image_ids)}

    def index_of(self, image_id: str) -> int:
        """The index of ``image_id`` in the maps."""
        try:
            return self._index_of[str(image_id)]
        except KeyError:
            examples = ", ".join(self.image_ids[:3])
            raise ConfigError(
                "image", f"no image {image_id!r} in {self.out} ({len(self.image_ids)} images, e.g. {examples})"
            ) from None

    # --- metric rows ----------------------------------------------------------------------------------------------

    def metrics_files(self) -> list[str]:
        """The Parquet files under ``OUT/metrics`` (names starting with '.' or '_' are in-flight or metadata)."""
        root = f"{self._root}/{METRICS_DIR}"
        if not self._fs.exists(root):
            return []
        files = [p for p in self._fs.find(root) if p.endswith(".parquet")]
        return sorted(p for p in files if not any(part.startswith((".", "_")) for part in p[len(root):].split("/")))

    @cached_property
    def provenance(self) -> dict[str, dict[str, str]]:
        """What wrote each metrics file (its path under OUT): job, fingerprint, model, weights (and a weights file's
        SHA-256), xcv_batch and torch versions, and when its run started, from the file's key-value metadata; empty
        for a file written before this was recorded. Only the files' footers are read."""
        import pyarrow.parquet as pq

        found = {}
        for path in self.metrics_files():
            try:
                with self._fs.open(path, "rb") as fh:
                    metadata = pq.read_metadata(fh).metadata
            except (pa.ArrowException, OSError) as err:
                raise self._unreadable([path], err) from None
            found[path[len(self._root) + 1:]] = provenance_from_metadata(metadata)
        return found

    def rows(self) -> pd.DataFrame:
        """Every metric row of every Parquet file (no deduplication), as pandas."""
        if self._rows is None:
            self._rows = self._read_rows()
        return self._rows.copy()

    def _read_rows(self) -> pd.DataFrame:
        files = self.metrics_files()
        if not files:
            return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in ROW_COLUMNS.items()})
        try:
            rows = self._dataset(files).to_table().to_pandas()
        except (pa.ArrowException, OSError) as err:
            raise self._unreadable(files, err) from None
        return self._without_missing_maps(rows)

    def _dataset(self, files: list[str], schema: pa.Schema | None = None,
                 dictionary: Sequence[str] = ()) -> pads.Dataset:
        """The dataset of ``files`` with every file's columns (``schema``: as already unified; ``dictionary``: string
        columns read dictionary-encoded, as ``schema`` says)."""
        read_options = pads.ParquetReadOptions(dictionary_columns=set(dictionary)) if dictionary else None
        where = dict(filesystem=self._fs, format=pads.ParquetFileFormat(read_options=read_options)
                     if read_options else "parquet", partitioning="hive",
                     partition_base_dir=f"{self._root}/{METRICS_DIR}")
        if schema is None:
            dataset = pads.dataset(files, **where)
            # Shards written before a metric existed lack its column; unify so every row has every column (null there).
            schema = pa.unify_schemas([dataset.schema] + [frag.physical_schema for frag in dataset.get_fragments()],
                                      promote_options="permissive")
        return pads.dataset(files, schema=schema, **where)

    def row_schema(self) -> pa.Schema | None:
        """The rows' columns and types over every metrics file (a column some files lack is null there); None without
        files. Only the files' footers are read."""
        files = self.metrics_files()
        if not files:
            return None
        try:
            return self._dataset(files).schema
        except (pa.ArrowException, OSError) as err:
            raise self._unreadable(files, err) from None

    def scan_rows(self, columns: Sequence[str], dictionary: Sequence[str] = (),
                  schema: pa.Schema | None = None) -> Iterator[pa.Table]:
        """The rows' ``columns``, one table per metrics file, in the order of :meth:`rows` (files sorted, each file's
        rows in order): only those columns are decoded, and at most three files' are held (the next two are decoded
        while the caller works on this one). Rows are as stored: :meth:`stored_maps` says which ``ok`` rows
        :meth:`rows` would turn into errors. The string columns named in ``dictionary`` come dictionary-encoded (each
        file's distinct values once, its rows as indices into them), which is faster to decode and to compare than a
        string per row. ``schema``: the rows' schema as :meth:`row_schema` gave it, so that every file's footer is not
        read again."""
        files = self.metrics_files()
        if not files:
            return
        try:
            dataset = self._dataset(files, schema)
            encoded = [name for name in dictionary
                       if name in columns and name in dataset.schema.names
                       and dataset.schema.field(name).type == pa.string()]
            if encoded:
                schema = dataset.schema
                for name in encoded:
                    schema = schema.set(schema.get_field_index(name), pa.field(name, pa.dictionary(pa.int32(),
                                                                                                   pa.string())))
                dataset = self._dataset(files, schema, encoded)

            def read(fragment) -> pa.Table:
                return pads.Scanner.from_fragment(fragment, schema=dataset.schema, columns=list(columns)).to_table()

            # Arrow decodes without the GIL: the next files are read in threads while the caller works on this one.
            with ThreadPoolExecutor(_READ_AHEAD) as pool:
                ahead: deque = deque()
                for fragment in dataset.get_fragments():
                    ahead.append(pool.submit(read, fragment))
                    if len(ahead) > _READ_AHEAD:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
        except (pa.ArrowException, OSError) as err:
            raise self._unreadable(files, err) from None

    def key_rows(self) -> pd.DataFrame:
        """``image_id``, ``index``, ``method``, ``status`` of every row as :meth:`rows` gives them (an ``ok`` row whose
        map is not stored whole is an error), no other column read; the ids are pandas categories (each held once)."""
        parts = list(self.scan_rows(["image_id", "index", "method", "status"]))
        if not parts:
            return self._read_rows()
        table = pa.concat_tables(parts)
        table = table.set_column(table.schema.get_field_index("image_id"), "image_id",
                                 table.column("image_id").cast(pa.string()).dictionary_encode())
        # Without the files' pandas metadata, which would turn the categories back into strings.
        return self._without_missing_maps(table.replace_schema_metadata(None).to_pandas())

    def stored_maps(self, method: str) -> StoredMaps | None:
        """What the maps hold of ``method`` (the images whose map can be whole, and those found broken), as
        :meth:`rows` checks its ``ok`` rows against it; None when no maps are laid out (then no row is checked)."""
        return self.maps.stored(method) if self.maps.exists() else None

    #: The error of an ``ok`` row whose map is missing, and of one whose map file is broken (``{where}``).
    MAP_MISSING = "map missing from {folder} (run the job again with --resume)"
    MAP_UNREADABLE = "map unreadable: {where} (run the job again with --resume)"

    def _unreadable(self, files: list[str], err: Exception) -> OutputError:
        """The error naming the first metrics file that Parquet cannot read."""
        import pyarrow.parquet as pq

        for path in files:
            try:
                with self._fs.open(path, "rb") as fh:
                    pq.read_metadata(fh)
            except (pa.ArrowException, OSError) as file_err:
                name = path[len(self._root) + 1:]
                return OutputError(f"{self.out}/{name} is not readable Parquet ({first_line(file_err)}); "
                                   "run the job again with --resume to recompute its shard")
        return OutputError(f"{self.out}/{METRICS_DIR} cannot be read as Parquet: {first_line(err)}")

    def _without_missing_maps(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Rows say ``ok`` only where the map was written whole: an ok row whose map is missing (deleted, lost) or
        cannot be whole as the map format sees it without decoding (Zarr: an empty or truncated chunk, see
        :mod:`xcv_batch.output.chunks`) becomes an error row saying so."""
        if not self.maps.exists() or rows.empty:
            return rows
        rows = rows.copy()
        for method in rows["method"].astype(str).unique():
            stored = self.maps.stored(method)
            ok = (rows["method"] == method) & (rows["status"] == "ok")
            lost = ok & ~rows["index"].isin(stored.whole)
            rows.loc[lost, "status"] = "error"
            rows.loc[lost, "error"] = self.MAP_MISSING.format(folder=self.maps.folder)
            for index, where in stored.broken.items():
                damaged = lost & (rows["index"] == index)
                rows.loc[damaged, "error"] = self.MAP_UNREADABLE.format(where=where)
        return rows

    def image_rows(self, image_id: str) -> pd.DataFrame:
        """The rows of one image, one per method. Unless every row is already read, only this image's rows are
        (a filter on the Parquet files): a report's panels of a million-image run read 8 images' rows, not 6 GB of
        every row."""
        if self._rows is not None:
            return self._rows[self._rows["image_id"].astype(str) == str(image_id)].copy()
        files = self.metrics_files()
        if not files:
            return self._read_rows()
        try:
            table = self._dataset(files).to_table(filter=pads.field("image_id") == str(image_id))
        except (pa.ArrowException, OSError) as err:
            raise self._unreadable(files, err) from None
        return self._without_missing_maps(table.to_pandas())

    # --- arrays ---------------------------------------------------------------------------------------------------

    def _check_array(self, name: str) -> None:
        if not self.maps.exists():
            raise OutputError(f"{self.out}: no {self.maps.folder} (the run has not written any maps yet)")
        if not self.maps.has_array(name):
            raise ConfigError("method", f"no array {name!r} in {self.out}/{self.maps.folder} "
                                        f"(methods: {', '.join(self.methods)})")

    def attribution(self, image_id: str, method: str) -> np.ndarray:
        """The raw map of one image and method, ``(3, H, W)`` float32; all NaN if it was never written; an
        OutputError naming the chunk file if it cannot be decoded."""
        return self._read(method, self.index_of(image_id))

    def model_input(self, image_id: str) -> np.ndarray:
        """The normalised model input of one image, ``(3, H, W)`` float32 (an OutputError as for attribution)."""
        if self.maps.exists() and not self.maps.has_array("inputs"):
            raise OutputError(f"{self.out} stores no inputs (output.inputs: false); input_image() reads the image "
                              "again from its file")
        return self._read("inputs", self.index_of(image_id))

    def _read(self, name: str, index: int) -> np.ndarray:
        self._check_array(name)
        try:
            return self.maps.read(name, index)
        except MapUnreadable as err:
            self.unreadable[err.path] = str(err)
            raise OutputError(str(err)) from None

    def input_image(self, image_id: str) -> np.ndarray:
        """The image as the model saw it, denormalised with the stored mean/std: ``(H, W, 3)`` in [0, 1]."""
        pre: dict[str, Any] = self.attrs.get("preprocessing") or _IMAGENET_PREPROCESSING
        if self.maps.exists() and not self.maps.has_array("inputs"):
            return self._recomputed_input(image_id, pre)
        return self._denormalised(self.model_input(image_id), pre)

    @staticmethod
    def _denormalised(model_input: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
        mean = np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(pre["std"], dtype=np.float32)[:, None, None]
        image = model_input * std + mean
        return np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0).transpose(1, 2, 0)

    # --- several images at once: where the map format can, their chunks are fetched together ----------------------

    def attributions(self, image_ids: Sequence[str], method: str) -> list[np.ndarray]:
        """The raw maps of several images and one method, as :meth:`attribution` gives each."""
        self._check_array(method)
        return self._read_many(method, [self.index_of(image_id) for image_id in image_ids])

    def input_images(self, image_ids: Sequence[str]) -> list[np.ndarray]:
        """The images of several ids, as :meth:`input_image` gives each."""
        pre: dict[str, Any] = self.attrs.get("preprocessing") or _IMAGENET_PREPROCESSING
        if self.maps.exists() and not self.maps.has_array("inputs"):
            return [self._recomputed_input(image_id, pre) for image_id in image_ids]
        self._check_array("inputs")
        return [self._denormalised(raw, pre)
                for raw in self._read_many("inputs", [self.index_of(image_id) for image_id in image_ids])]

    def _read_many(self, name: str, indices: list[int]) -> list[np.ndarray]:
        read_many = getattr(self.maps, "read_many", None)  # optional in a map format: one read per image otherwise
        try:
            if read_many is None or not indices:
                return [self.maps.read(name, index) for index in indices]
            return list(read_many(name, indices))
        except MapUnreadable as err:
            self.unreadable[err.path] = str(err)
            raise OutputError(str(err)) from None

    def _recomputed_input(self, image_id: str, pre: dict[str, Any]) -> np.ndarray:
        """The image as the model saw it, read again from its source file with the stored preprocessing: for an OUT
        laid out with ``output.inputs: false``. An OutputError when the file cannot be read (moved, or in a packed
        source whose reader is not recorded)."""
        from ..data.images import ImageError, load_image  # torch: only for an OUT without inputs
        from ..models.preprocessing import Preprocessing

        self.index_of(image_id)  # a ConfigError for an unknown id, as with stored inputs
        rows = self.image_rows(image_id)
        path = str(rows["image_path"].iloc[0]) if len(rows) else None
        if path is None:
            raise OutputError(f"{self.out} stores no inputs (output.inputs: false) and has no row for {image_id} "
                              "naming its file")
        # the weights' own filter is not recorded: the job's, else bilinear (a display, not the maps' input)
        interpolation = ((self.job.get("model") or {}).get("preprocessing") or {}).get("interpolation") or "bilinear"
        preprocessing = Preprocessing(int(pre["resize_size"]), int(pre["resolution"]), tuple(pre["mean"]),
                                      tuple(pre["std"]), interpolation)
        try:
            pixels = load_image(path, preprocessing).numpy()
        except ImageError as err:
            raise OutputError(f"{self.out} stores no inputs (output.inputs: false) and {path} cannot be read "
                              f"again: {first_line(err)}") from None
        return np.clip(pixels, 0.0, 1.0).transpose(1, 2, 0)
