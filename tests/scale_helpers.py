"""A large output directory made from a small real one: its metric rows replicated under new ids and indices, their
values jittered (so the methods' ranks differ from image to image), into many Parquet part files, and an
``attributions.zarr`` of the same layout whose maps are the source's repeated (sharded: one object per
``images_per_object`` images, so 200,000 images are a few hundred files). Used by tests/test_summarize_scale.py and
scripts/bench_summarize.py."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xcv_batch.metrics.registry import metrics_in


def make_large_out(source: str, dest: str, n_images: int, parts: int = 8, images_per_object: int = 1000,
                   error_every: int = 97, seed: int = 0, maps: bool = True,
                   drop_object: tuple[str, int] | None = None, source_maps: bool = True) -> str:
    """Write ``dest`` (an OUT of ``n_images`` images) from the real OUT ``source``; returns ``dest``. Image ``i``'s maps
    are those of source image ``(i mod images_per_object) mod k`` (``k`` source images); with ``source_maps`` False
    every map is zeros, so that a million images' objects take a few hundred MB (what summarize reads of the maps is
    their objects' indices, not their values).

    Image ``i`` copies the rows of source image ``i % k`` with every float value multiplied by a log-normal factor
    (signs and missing values kept), and an id whose order differs from the index order. Every ``error_every``-th
    image has an error row (a unique message) for one method, and its first images have an older error row beside
    their ok row (a retried shard). ``drop_object``: (method, object number) whose map object is left unwritten, so
    its rows must read as errors. The rows are made one part file at a time, so a million images fit in memory."""
    rng = np.random.default_rng(seed)
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(source, "metrics"))
                   for name in names if name.endswith(".parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    schema = table.schema
    rows = table.to_pandas()
    template_ids = rows.sort_values("index")["image_id"].drop_duplicates().tolist()
    k = len(template_ids)
    rows["_t"] = rows["image_id"].map({image_id: t for t, image_id in enumerate(template_ids)})
    order = rng.permutation(n_images)
    floats = [f.name for f in schema if pa.types.is_floating(f.type) and f.name not in ("target_prob", "label")]
    methods = list(dict.fromkeys(rows["method"]))
    metrics = metrics_in(rows.columns)

    out_metrics = os.path.join(dest, "metrics")
    os.makedirs(out_metrics, exist_ok=True)
    bounds = np.linspace(0, n_images, parts + 1).astype(int)
    retried = []
    for number, (first, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        part_rng = np.random.default_rng([seed, number])
        image = np.arange(first, end)
        wide = rows.merge(pd.DataFrame({"_t": image % k, "_i": image}), on="_t").sort_values(["_i", "method"])
        wide = wide.reset_index(drop=True)
        wide["index"] = wide["_i"].astype(schema.field("index").type.to_pandas_dtype())
        wide["image_id"] = [f"img{order[i]:07d}.png" for i in wide["_i"]]
        if "image_path" in wide:
            wide["image_path"] = "/data/" + wide["image_id"]
        for column in floats:
            wide[column] = wide[column] * part_rng.lognormal(0.0, 0.6, len(wide))
        failing = (wide["_i"] % error_every == 0) & (wide["method"] == methods[(len(methods) - 1) // 2])
        wide.loc[failing, "status"] = "error"
        wide.loc[failing, metrics] = np.nan
        wide.loc[failing, "error"] = [f"RuntimeError: image {i} failed" for i in wide.loc[failing, "_i"]]
        missing = part_rng.random(len(wide)) < 0.01  # an ok row without one metric's value
        if metrics:
            wide.loc[missing & ~failing, metrics[0]] = np.nan
        retried.append(wide[(wide["_i"] < 3) & ~failing].assign(status="error", error="RuntimeError: worker lost"))
        _write(wide, schema, os.path.join(out_metrics, f"part-{first:08d}-{max(first, end - 1):08d}.parquet"))
    _write(pd.concat(retried), schema, os.path.join(out_metrics, "part-retried.parquet"))
    shutil.copy(os.path.join(source, "job.yaml"), os.path.join(dest, "job.yaml"))
    if maps:
        _write_maps(os.path.join(source, "attributions.zarr"), os.path.join(dest, "attributions.zarr"),
                    [f"img{order[i]:07d}.png" for i in range(n_images)], images_per_object, drop_object, source_maps)
    return dest


def _write(rows: pd.DataFrame, schema: pa.Schema, path: str) -> None:
    table = pa.Table.from_pandas(rows[[f.name for f in schema]], schema=schema, preserve_index=False)
    pq.write_table(table, path)


def _write_maps(source: str, dest: str, ids: list[str], per_object: int, drop_object,
                source_maps: bool = True) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    original = zarr.open_group(source, mode="r")
    group = zarr.open_group(dest, mode="w", attributes=dict(original.attrs))
    n = len(ids)
    for name, array in original.arrays():
        dims = array.metadata.dimension_names
        if array.ndim == 1:
            values = ids if name == "image" else ["/data/" + i for i in ids]
            strings = group.create_array(name, shape=(n,), chunks=(min(n, 65536),), dtype=str, dimension_names=dims)
            strings[:] = np.asarray(values, dtype=object)
            continue
        shape = array.shape[1:]
        maps = group.create_array(name, shape=(n, *shape), chunks=(1, *shape), shards=(per_object, *shape),
                                  dtype=array.dtype, fill_value=np.nan, dimension_names=dims,
                                  compressors=ZstdCodec(level=0, checksum=True))
        tile = np.asarray(array[:]) if source_maps else np.zeros((1, *shape), dtype=array.dtype)
        zeros = "/".join("0" * (array.ndim - 1))
        first_object = os.path.join(dest, name, "c", "0", zeros)
        for number, first in enumerate(range(0, n, per_object)):
            end = min(n, first + per_object)
            if number and end - first == per_object:
                # A whole object holds the same bytes as the first (its index's offsets are its own): a copy, not
                # thousands of chunk encodings.
                target = os.path.join(dest, name, "c", str(number), zeros)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(first_object, target)
            else:
                maps[first:end] = tile[np.arange(first, end) % len(tile)]
        if drop_object is not None and drop_object[0] == name:
            os.remove(os.path.join(dest, name, "c", str(drop_object[1]), zeros))
