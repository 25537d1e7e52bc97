"""Where the methods' maps disagree, per image: the mean over pairs of methods of Spearman's rank correlation between
their channel-summed maps, pixel by pixel. 1: every method orders the pixels alike; near 0 or below: they point at
different evidence. The control maps are left out: they know nothing about the model.

``summarize`` computes it once and writes ``OUT/map_agreement.parquet`` beside the summary (:func:`write`): one row per
image with its index, id, value and the number of methods whose maps were compared. ``browse`` reads that file and
computes only the images it lacks. Maps are read a batch of images at a time, the batch sized in bytes, and each
image's maps are reduced to one number before the next batch: memory stays bounded at any number of images and any
resolution.
"""

from __future__ import annotations

import os
import uuid
import warnings
from typing import Callable, Iterator

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from scipy.stats import rankdata

from ..errors import OutputError, first_line
from ..methods.registry import is_control
from ..output.results import Results, open_results

#: The file beside the run's rows.
FILE = "map_agreement.parquet"
#: Its columns: image index and id, the mean pairwise ρ (NaN: fewer than two maps with a ρ), the methods compared.
SCHEMA = pa.schema([("index", pa.int64()), ("image_id", pa.string()), ("map_agreement", pa.float64()),
                    ("n_methods", pa.int32())])
#: The file's key-value metadata: the run it was computed from.
FINGERPRINT_KEY = b"xcv_batch.fingerprint"
#: Bytes of maps held at once (raw maps of one method and the ranks of every method, for one batch of images).
BATCH_BYTES = 64 * 2**20
#: Images read together at most (a page of small maps: one read per method, not one per map).
MAX_BATCH_IMAGES = 256


def pixel_ranks(maps: np.ndarray) -> np.ndarray:
    """Each map's pixels ranked (ties share the mean rank), ``(n, H·W)`` float32 (exact up to 2²⁴ pixels): Spearman's
    ρ is the correlation of these."""
    return rankdata(maps.reshape(len(maps), -1), axis=1).astype(np.float32)


def mean_pairwise_correlation(ranks: list[np.ndarray]) -> float:
    """The mean over pairs of maps of Spearman's ρ, from their :func:`pixel_ranks`; a constant map has no ρ with any
    other (left out); NaN when no pair has one."""
    if len(ranks) < 2:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant map's row is NaN, as said
        matrix = np.corrcoef(np.stack(ranks).astype(np.float64))
        values = matrix[np.triu_indices(len(ranks), k=1)]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def compared_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``index``, ``image_id``, ``method`` of the maps compared: each image's ok rows of the methods (not the
    controls), one per method, by image index and method. An error row beside an ok one (a retried shard) does not
    count: the map was written whole."""
    ok = rows[rows["status"] == "ok"]
    methods = ok["method"].astype(str)
    ok = ok[~methods.isin([m for m in methods.unique() if is_control(m)])]
    return (ok[["index", "image_id", "method"]].astype({"image_id": str, "method": str})
            .drop_duplicates(["index", "method"]).sort_values(["index", "method"], kind="stable")
            .reset_index(drop=True))


def batch_images(results: Results, n_methods: int) -> int:
    """Images read together, so that a batch's maps stay within :data:`BATCH_BYTES`."""
    side = int((results.attrs.get("preprocessing") or {}).get("resolution")
               or (results.job.get("model") or {}).get("resolution") or 224)
    per_image = side * side * 4 * (3 + max(1, n_methods))  # one method's raw 3-channel maps, every method's ranks
    return max(1, min(MAX_BATCH_IMAGES, BATCH_BYTES // per_image))


def agreement(results: Results, compared: pd.DataFrame, count_read: Callable[[int], None] = lambda n: None
              ) -> Iterator[pd.DataFrame]:
    """The values of the images in ``compared`` (see :func:`compared_rows`), a batch of images at a time, as frames
    of :data:`SCHEMA`'s columns. A map that cannot be decoded, or was never written (all NaN), is left out of its
    image's pairs, as ``show`` leaves it out. ``count_read(n)``: told of every n maps read."""
    images = compared.drop_duplicates("index")[["index", "image_id"]]
    step = batch_images(results, compared["method"].nunique())
    for first in range(0, len(images), step):
        batch = images.iloc[first:first + step]
        rows = compared[compared["index"].isin(batch["index"])]
        ranks: dict[int, list[np.ndarray]] = {}
        for method, of_method in rows.groupby("method", sort=False):
            ids = of_method["image_id"].tolist()
            count_read(len(ids))
            kept = [(int(index), summed) for index, summed in zip(of_method["index"], _summed(results, ids, method))
                    if summed is not None and np.isfinite(summed).all()]
            if kept:  # ranked together: one call per method and batch
                for (index, _), ranked in zip(kept, pixel_ranks(np.stack([m for _, m in kept]))):
                    ranks.setdefault(index, []).append(ranked)
        counts = rows.groupby("index")["method"].size()
        yield pd.DataFrame({
            "index": batch["index"].to_numpy(dtype=np.int64), "image_id": batch["image_id"].to_numpy(dtype=object),
            "map_agreement": [mean_pairwise_correlation(ranks.get(int(i), [])) for i in batch["index"]],
            "n_methods": counts.reindex(batch["index"]).to_numpy(dtype=np.int32)})


def _summed(results: Results, ids: list[str], method: str) -> list[np.ndarray | None]:
    """The channel-summed maps, read together; one at a time when one cannot be decoded (None for that one)."""
    try:
        return [m.sum(axis=0) for m in results.attributions(ids, method)]
    except OutputError:
        pass
    found = []
    for image_id in ids:
        try:
            found.append(results.attribution(image_id, method).sum(axis=0))
        except OutputError:
            found.append(None)
    return found


def still_valid(stored: pd.DataFrame | None, compared: pd.DataFrame) -> pd.DataFrame:
    """The stored values that still describe the run: the image has the same id and as many compared maps as when
    they were computed (a map is written once, whole, so the same ok rows mean the same maps)."""
    if stored is None or stored.empty or compared.empty:
        return SCHEMA.empty_table().to_pandas()
    now = compared.groupby("index").agg(image_id=("image_id", "first"), n_methods=("method", "size"))
    stored = stored.drop_duplicates("index", keep="last")
    joined = stored.merge(now.add_suffix("_now"), left_on="index", right_index=True, how="inner")
    same = (joined["image_id"].astype(str) == joined["image_id_now"]) & (joined["n_methods"] == joined["n_methods_now"])
    return joined.loc[same, SCHEMA.names].reset_index(drop=True)


def compute(out: "str | Results", stored: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """The values of every image with an ok row of a method, as one frame of :data:`SCHEMA`'s columns (empty when
    the run has no maps), and how many of them were computed now: the ``stored`` values that are
    :func:`still_valid` are kept, so a summarize after ``--resume`` reads only the new images' maps."""
    results = open_results(out)
    if not results.maps.exists():
        return SCHEMA.empty_table().to_pandas(), 0
    compared = compared_rows(results.key_rows())
    kept = still_valid(stored, compared)
    todo = compared[~compared["index"].isin(kept["index"])]
    parts = [kept] + list(agreement(results, todo))
    values = pd.concat(parts, ignore_index=True).sort_values("index", kind="stable").reset_index(drop=True)
    return values, int(todo["index"].nunique())


def write(out: "str | Results") -> tuple[str, int]:
    """Compute the values and write ``OUT/map_agreement.parquet`` whole (a temporary name, then renamed: a reader
    never sees half a file); returns its path and the number of images whose maps were read. The values of an
    earlier file of the same run are kept where still valid; one that cannot be read is computed again.
    OutputError when OUT cannot be written."""
    results = open_results(out)
    try:
        stored = read(results)
    except OutputError:
        stored = None
    values, computed = compute(results, stored)
    table = pa.Table.from_pandas(values, schema=SCHEMA, preserve_index=False).replace_schema_metadata(
        {FINGERPRINT_KEY: str(results.fingerprint or "")})
    fs, root = fsspec.core.url_to_fs(results.out)
    final, temporary = f"{root}/{FILE}", f"{root}/.{FILE}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(temporary, "wb") as fh:
            pq.write_table(table, fh)
        if isinstance(fs, LocalFileSystem):
            os.replace(temporary, final)
        else:
            fs.mv(temporary, final)  # object stores: the copy lands whole or not at all
    except OSError as err:
        raise OutputError(f"cannot write {results.out}/{FILE} ({first_line(err)})") from None
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)
    return f"{results.out}/{FILE}", computed


def read(out: "str | Results") -> pd.DataFrame | None:
    """The stored values (:data:`SCHEMA`'s columns), or None when OUT has no such file or it was computed from
    another run (another fingerprint). An OutputError when it cannot be read."""
    results = open_results(out)
    fs, root = fsspec.core.url_to_fs(results.out)
    path = f"{root}/{FILE}"
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except (pa.ArrowException, OSError) as err:
        raise OutputError(f"{results.out}/{FILE} is not readable Parquet ({first_line(err)}); "
                          "python -m xcv_batch summarize OUT writes it again") from None
    if (table.schema.metadata or {}).get(FINGERPRINT_KEY, b"").decode() != str(results.fingerprint or ""):
        return None
    return table.select(SCHEMA.names).to_pandas()
