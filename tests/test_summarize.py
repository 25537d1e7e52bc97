"""Rankings from hand-made rows with known answers, the reading API, summary.json / summary.md / the terminal table.

``write_out`` builds an output directory by hand (job.yaml, a small Zarr group, Parquet shards), so these tests do
not depend on the run code; test_report.py uses it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zarr

from xcv_batch import metrics_info
from xcv_batch.errors import ConfigError, OutputError
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.results import open_results
from xcv_batch.summarize import (SEED_TABLE_I, render_markdown, render_table, summarize, summarize_rows,
                                 write_summary)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FIVE = list(METHOD_SETTINGS)


# --- builders -------------------------------------------------------------------------------------------------------


def row(image_id, method, sens=None, secs=1.0, *, index=0, status="ok", error=None, **extra):
    return {"image_id": image_id, "image_path": f"/data/{image_id}.jpg", "index": index, "method": method,
            "target": 7, "target_name": "cock", "target_prob": 0.9, "label": None, "sensitivity_max": sens,
            "attr_seconds": secs, "sensitivity_seconds": None if secs is None else 10 * secs, "status": status,
            "error": error, **extra}


def table(values: dict[str, list], secs: dict[str, list] | None = None) -> pd.DataFrame:
    """Rows from {method: [sensitivity per image]}; None → a missing value, an Exception → an error row."""
    rows = []
    for method, per_image in values.items():
        for i, value in enumerate(per_image):
            seconds = (secs or {}).get(method, [1.0] * len(per_image))[i]
            if isinstance(value, Exception):
                rows.append(row(f"img{i}", method, None, None, index=i, status="error", error=str(value)))
            else:
                rows.append(row(f"img{i}", method, value, seconds, index=i))
    return pd.DataFrame(rows)


def seed_job(**changes) -> dict:
    job = {"name": "fixture", "seed": 0, "data": {"source": "/data"},
           "model": {"arch": "resnet18", "weights": "none", "resolution": 224}, "target": "predicted",
           "methods": {name: asdict(cls()) for name, cls in METHOD_SETTINGS.items()},
           "sensitivity": {"n_perturb_samples": 10, "perturb_radius": 0.02},
           "compute": {"workers": "auto", "device": "auto"}, "output": {"path": "x"}, "fingerprint": "abc123"}
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            job[section] = {**job[section], name: value}
        else:
            job[section] = value
    return job


def write_out(path: Path, rows: pd.DataFrame, *, n_images: int, methods=FIVE, job=None, hw: int = 32,
              shard_size: int = 2) -> Path:
    """An output directory as the run writes it: job.yaml, attributions.zarr (maps of the ok rows), metrics/*.parquet."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "job.yaml").write_text(yaml.safe_dump(job if job is not None else seed_job()))
    ids = [f"img{i}" for i in range(n_images)]
    group = zarr.open_group(str(path / "attributions.zarr"), mode="w")
    rng = np.random.default_rng(0)
    inputs = group.create_array("inputs", shape=(n_images, 3, hw, hw), chunks=(1, 3, hw, hw), dtype="float32",
                                fill_value=float("nan"))
    for i in range(n_images):
        inputs[i] = rng.normal(size=(3, hw, hw)).astype(np.float32)
    for method in methods:
        array = group.create_array(method, shape=(n_images, 3, hw, hw), chunks=(1, 3, hw, hw), dtype="float32",
                                   fill_value=float("nan"))
        for r in rows[(rows.method == method) & (rows.status == "ok")].itertuples():
            yy, xx = np.mgrid[:hw, :hw]
            blob = np.exp(-((yy - hw * (r.index + 1) / (n_images + 1)) ** 2 + (xx - hw / 2) ** 2) / (hw / 4) ** 2)
            array[r.index] = np.stack([blob, -blob, blob]).astype(np.float32) * (FIVE.index(method) + 1)
    group.attrs.update({"image_ids": ids, "model": "resnet18", "weights": "none",
                        "methods": {m: {} for m in methods}, "fingerprint": "abc123",
                        "preprocessing": {"mean": MEAN, "std": STD, "resolution": hw},
                        "categories": None})
    (path / "metrics").mkdir(exist_ok=True)
    for start in range(0, n_images, shard_size):
        shard = rows[(rows["index"] >= start) & (rows["index"] < start + shard_size)]
        if len(shard):
            pq.write_table(pa.Table.from_pandas(shard, preserve_index=False),
                           path / "metrics" / f"part-{start:08d}-{start + shard_size - 1:08d}.parquet")
    return path


def seed_like_rows(n_images: int = 6, methods=FIVE) -> pd.DataFrame:
    """Every method ranked by its Table I sensitivity, with a little noise that never reorders them."""
    rng = np.random.default_rng(0)
    return table({m: list(SEED_TABLE_I[m]["sensitivity_max"] * (1 + 0.01 * rng.random(n_images))) for m in methods},
                 {m: list(SEED_TABLE_I[m]["attr_seconds"] * (1 + 0.01 * rng.random(n_images))) for m in methods})


# --- ranks ----------------------------------------------------------------------------------------------------------


def test_one_method_always_best_has_mean_rank_one_and_win_rate_one():
    rng = np.random.default_rng(0)
    values = {"a": list(rng.random(8) * 0.1), "b": list(0.5 + rng.random(8)), "c": list(0.5 + rng.random(8))}
    seconds = {"a": [0.1] * 8, "b": list(1 + rng.random(8)), "c": list(1 + rng.random(8))}
    summary = summarize_rows(table(values, seconds), n_boot=200)
    a = summary["methods"]["a"]
    assert a["mean_rank"] == 1.0 and a["win_rate"] == 1.0 and a["mean_rank_ci95"] == [1.0, 1.0]
    assert a["ranks"]["sensitivity_max"]["mean_rank"] == 1.0 and a["ranks"]["attr_seconds"]["win_rate"] == 1.0
    # b and c split ranks 2 and 3 between them.
    assert summary["methods"]["b"]["mean_rank"] + summary["methods"]["c"]["mean_rank"] == pytest.approx(5.0)
    assert summary["methods"]["b"]["win_rate"] == 0.0
    assert summary["tests"]["sensitivity_max"]["friedman"]["reject"] is True


def test_ties_share_the_average_rank_and_the_win():
    values = {"a": [0.1, 0.3], "b": [0.2, 0.1], "c": [0.2, 0.1]}
    summary = summarize_rows(table(values), n_boot=100)
    ranks = {m: summary["methods"][m]["ranks"]["sensitivity_max"] for m in values}
    # image0: a 1, b 2.5, c 2.5; image1: a 3, b 1.5, c 1.5
    assert ranks["a"]["mean_rank"] == 2.0
    assert ranks["b"]["mean_rank"] == ranks["c"]["mean_rank"] == 2.0
    assert ranks["a"]["win_rate"] == 0.5 and ranks["b"]["win_rate"] == 0.25 and ranks["c"]["win_rate"] == 0.25
    # Equal times everywhere: everyone ranks 2 on time, nobody wins alone.
    assert all(summary["methods"][m]["ranks"]["attr_seconds"]["mean_rank"] == 2.0 for m in values)
    assert summary["tests"]["attr_seconds"]["friedman"]["skipped"] == "every image ties every method"


def test_missing_values_and_error_rows_are_counted_and_left_out_of_ranks():
    values = {
        "a": [0.1, 0.1, 0.1, 0.1],
        "b": [0.2, 0.2, None, 0.3],
        "c": [0.3, 0.3, 0.3, RuntimeError("CUDA out of memory on img3")],
    }
    summary = summarize_rows(table(values), n_boot=100)
    methods = summary["methods"]
    assert (methods["c"]["n_ok"], methods["c"]["n_error"]) == (3, 1)
    assert (methods["b"]["n_ok"], methods["b"]["n_error"]) == (4, 0)
    assert methods["b"]["sensitivity_max"]["n"] == 3 and methods["b"]["sensitivity_max"]["n_missing"] == 1
    assert methods["b"]["sensitivity_max"]["median"] == pytest.approx(0.2)
    # Sensitivity ranks only images 0 and 1 (2 lacks b, 3 lacks c); time ranks images 0, 1, 2.
    assert summary["tests"]["sensitivity_max"]["n_images"] == 2
    assert summary["tests"]["attr_seconds"]["n_images"] == 3
    assert methods["c"]["ranks"]["sensitivity_max"]["mean_rank"] == 3.0
    assert summary["failures"] == [{"image_id": "img3", "method": "c", "error": "CUDA out of memory on img3"}]
    assert summary["n_failed_images"] == 1 and summary["n_images"] == 4


def test_a_method_without_any_value_is_not_ranked_but_reported():
    values = {"a": [0.1, 0.2, 0.3], "b": [0.2, 0.3, 0.4], "c": [RuntimeError("x")] * 3}
    summary = summarize_rows(table(values), n_boot=100)
    assert summary["metrics"]["sensitivity_max"]["methods"] == ["a", "b"]
    assert summary["methods"]["c"]["mean_rank"] is None and summary["methods"]["c"]["n_error"] == 3
    # a wins sensitivity (rank 1) and ties b on time (1.5): overall (1 + 1.5) / 2
    assert summary["methods"]["a"]["mean_rank"] == 1.25
    assert "at least 3 methods" in summary["tests"]["sensitivity_max"]["friedman"]["skipped"]
    assert summary["tests"]["sensitivity_max"]["pairwise"][0]["better"] == "a"


def test_sensitivity_off_is_not_ranked():
    summary = summarize_rows(table({"a": [None, None], "b": [None, None]}, {"a": [1.0, 2.0], "b": [3.0, 4.0]}), n_boot=50)
    assert list(summary["metrics"]) == ["attr_seconds"]
    assert summary["metrics_skipped"] == {"sensitivity_max": "no method has a value"}


def test_registered_metrics_are_ranked_in_their_direction_and_unknown_columns_ignored():
    rows = table({"a": [0.1, 0.2], "b": [0.2, 0.3], "c": [0.3, 0.4]})
    rows["insertion_auc"] = [0.9, 0.8, 0.5, 0.4, 0.1, 0.2]  # a highest → best (higher is better)
    rows["made_up_score"] = 1.0
    summary = summarize_rows(rows, n_boot=50)
    assert list(summary["metrics"]) == ["sensitivity_max", "attr_seconds", "insertion_auc"]
    assert summary["methods"]["a"]["ranks"]["insertion_auc"]["mean_rank"] == 1.0
    assert summary["methods"]["a"]["insertion_auc"]["direction"] == "higher"
    assert "made_up_score" not in summary["methods"]["a"] and "target_prob" not in summary["metrics"]

    metrics_info.register_metric("made_up_score", "lower", "Made up")
    try:
        assert "made_up_score" in summarize_rows(rows, n_boot=50)["metrics"]
    finally:
        metrics_info._METRICS.pop("made_up_score")


def test_metrics_registered_by_worker_modules_are_already_known_to_summarize():
    # `summarize` never imports the torch-side modules; anything they register must already be in metrics_info.
    code = """
import importlib, importlib.util
from xcv_batch import metrics_info
before = metrics_info.registered_metrics()
for name in ("faithfulness", "localisation", "quality"):
    if importlib.util.find_spec(f"xcv_batch.{name}"):
        module = importlib.import_module(f"xcv_batch.{name}")
        for column, direction in getattr(module, "FAITHFULNESS_COLUMNS", {}).items():
            assert metrics_info.metric_info(column).direction == direction, column
after = metrics_info.registered_metrics()
assert set(after) == set(before), set(after) ^ set(before)
print("same")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "same", done.stderr[-2000:]


def test_cis_contain_the_truth_on_synthetic_data():
    # One fixed draw (6 intervals at 95 % each); test_stats checks the coverage rate over many draws.
    rng = np.random.default_rng(0)
    n = 200
    values = {"a": list(rng.lognormal(0.0, 0.5, n)), "b": list(rng.lognormal(0.0, 0.5, n)),
              "c": list(rng.lognormal(0.0, 0.5, n))}
    summary = summarize_rows(table(values), n_boot=1000, seed=3)
    for m in values:
        lo, hi = summary["methods"][m]["sensitivity_max"]["ci95"]
        assert lo < 1.0 < hi  # median of lognormal(0, σ) is 1
        lo, hi = summary["methods"][m]["ranks"]["sensitivity_max"]["mean_rank_ci95"]
        assert lo < 2.0 < hi  # iid methods: expected rank 2
    assert summary["tests"]["sensitivity_max"]["friedman"]["p"] > 0.05
    assert not any(p["reject"] for p in summary["tests"]["sensitivity_max"]["pairwise"])


def test_same_seed_same_summary_and_holm_over_the_pairs():
    rows = seed_like_rows()
    first, second = summarize_rows(rows, n_boot=200, seed=1), summarize_rows(rows, n_boot=200, seed=1)
    assert first == second
    pairs = first["tests"]["sensitivity_max"]["pairwise"]
    assert len(pairs) == 10
    # 6 images, no ties, all differences one-signed: exact two-sided p = 2/2^6 for every pair; Holm ×10 → 0.3125
    assert all(p["p"] == pytest.approx(2 / 64) for p in pairs)
    assert all(p["p_holm"] == pytest.approx(min(1.0, 10 * 2 / 64)) for p in pairs)
    assert first["tests"]["sensitivity_max"]["nemenyi"]["cd"] == pytest.approx(2.728 * np.sqrt(5 * 6 / (6 * 6)))


def test_duplicate_rows_keep_the_ok_one():
    rows = table({"a": [0.1], "b": [0.2], "c": [0.3]})
    stale = row("img0", "a", None, None, status="error", error="worker died")
    summary = summarize_rows(pd.concat([pd.DataFrame([stale]), rows], ignore_index=True), n_boot=20)
    assert summary["methods"]["a"]["n_ok"] == 1 and summary["methods"]["a"]["n_error"] == 0


# --- the reading API ------------------------------------------------------------------------------------------------


def test_results_reads_rows_maps_and_images(tmp_path):
    rows = seed_like_rows(5)
    out = write_out(tmp_path / "out", rows, n_images=5)
    (out / "metrics" / ".part-in-flight.parquet").write_bytes(b"not parquet")
    res = open_results(str(out))
    got = res.rows()
    assert len(got) == 25 and set(got["method"]) == set(FIVE)
    assert res.image_ids == [f"img{i}" for i in range(5)] and res.methods == FIVE
    assert res.job["fingerprint"] == "abc123"
    attr = res.attribution("img2", "lime")
    assert attr.shape == (3, 32, 32) and attr.dtype == np.float32
    assert attr[0].max() == pytest.approx(5.0, rel=1e-3) and attr[1].min() == pytest.approx(-5.0, rel=1e-3)
    normalised = np.asarray(zarr.open_group(str(out / "attributions.zarr"), mode="r")["inputs"][2])
    expected = np.clip(normalised * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None], 0, 1)
    np.testing.assert_allclose(res.input_image("img2"), expected.transpose(1, 2, 0), atol=1e-6)
    with pytest.raises(ConfigError, match="no image 'nope'"):
        res.attribution("nope", "lime")
    with pytest.raises(OutputError):
        open_results(str(tmp_path / "missing"))


def test_results_unifies_shards_written_before_a_metric_existed(tmp_path):
    out = tmp_path / "out"
    (out / "metrics").mkdir(parents=True)
    old = table({"a": [0.1], "b": [0.2]})
    new = table({"a": [0.1, 0.3], "b": [0.2, 0.1]}).iloc[[1, 3]].assign(deletion_auc=[0.5, 0.6])
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), out / "metrics" / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(new, preserve_index=False), out / "metrics" / "part-1.parquet")
    rows = open_results(str(out)).rows().sort_values(["image_id", "method"])
    assert len(rows) == 4 and rows["deletion_auc"].isna().tolist() == [True, True, False, False]


def test_results_reads_hive_partitioned_metrics(tmp_path):
    rows = table({"a": [0.1, 0.2], "b": [0.3, 0.4]})
    for method, part in rows.groupby("method"):
        folder = tmp_path / "out" / "metrics" / f"method={method}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part.drop(columns="method"), preserve_index=False), folder / "p.parquet")
    got = open_results(str(tmp_path / "out")).rows().sort_values(["method", "image_id"])
    assert got["method"].astype(str).tolist() == ["a", "a", "b", "b"]
    assert got["sensitivity_max"].tolist() == [0.1, 0.2, 0.3, 0.4]


def test_an_object_store_prefix_reads_and_writes_like_a_folder(tmp_path):
    import fsspec

    out = write_out(tmp_path / "out", seed_like_rows(3), n_images=3)
    memory = fsspec.filesystem("memory")
    memory.put(str(out), "/bucket/run", recursive=True)
    try:
        res = open_results("memory://bucket/run")
        assert len(res.rows()) == 15 and res.attribution("img1", "lime")[0].max() == pytest.approx(5.0, rel=1e-3)
        summary = summarize("memory://bucket/run", n_boot=50)
        assert summary["complete"] is True
        write_summary("memory://bucket/run", summary)
        assert json.loads(memory.cat("/bucket/run/summary.json")) == summary
    finally:
        memory.rm("/bucket/run", recursive=True)


# --- whole directories and files ------------------------------------------------------------------------------------


def test_summarize_complete_run_and_round_trip(tmp_path):
    out = write_out(tmp_path / "out", seed_like_rows(6), n_images=6)
    summary = summarize(str(out), n_boot=200)
    assert summary["complete"] is True and summary["n_images"] == summary["n_expected"] == 6
    assert summary["methods"]["lime"]["mean_rank"] == pytest.approx((1 + 5) / 2)  # best sensitivity, slowest
    assert summary["seed_settings"] == {"matches": True, "differences": []}
    paths = write_summary(str(out), summary)
    assert paths == [f"{out}/summary.json", f"{out}/summary.md"]
    assert json.loads(Path(paths[0]).read_text()) == summary


def test_summarize_partial_run_says_so(tmp_path):
    rows = seed_like_rows(6)
    out = write_out(tmp_path / "out", rows[rows["index"] < 4], n_images=6)
    summary = summarize(str(out), n_boot=50)
    assert summary["complete"] is False and summary["n_images"] == 4 and summary["n_expected"] == 6
    assert summary["n_missing_rows"] == 2 * 5
    assert "4 of 6 images (partial" in render_markdown(summary)


def test_summary_md_has_a_row_per_method_and_the_seed_values_when_settings_match(tmp_path):
    out = write_out(tmp_path / "out", seed_like_rows(6), n_images=6)
    markdown = Path(write_summary(str(out), summarize(str(out), n_boot=100))[1]).read_text()
    lines = markdown.splitlines()
    table_i = lines[lines.index("## Table I") + 2:]
    for label, seed_values in [("Occlusion", ("0.13", "74.29")), ("Integrated Gradients", ("0.4889", "41.49")),
                               ("IG + SmoothGrad", ("0.16", "84.55")), ("Guided Grad-CAM", ("0.1255", "0.299")),
                               ("LIME", ("0.04", "85.97"))]:
        line = next(l for l in table_i if l.startswith(f"| {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:3] == ["6", "0"]
        assert cells[6] == seed_values[0] and cells[8] == seed_values[1]
    assert "Max-Sensitivity seed (Table I)" in markdown and "Friedman χ²" in markdown


def test_summary_md_leaves_out_the_seed_values_when_settings_differ(tmp_path):
    job = seed_job(**{"model.resolution": 64, "sensitivity.n_perturb_samples": 2})
    out = write_out(tmp_path / "out", seed_like_rows(4), n_images=4, job=job)
    summary = summarize(str(out), n_boot=50)
    assert summary["seed_settings"]["differences"] == ["sensitivity.n_perturb_samples=2 (seed: 10)",
                                                      "model.resolution=64 (seed: 224)"]
    markdown = render_markdown(summary)
    assert "seed (Table I)" not in markdown and "74.29" not in markdown
    lines = markdown.splitlines()
    table_i = lines[lines.index("## Table I") + 2:lines.index("## Mean rank per metric (1 = best)")]
    assert [line.split("|")[1].strip() for line in table_i if line.startswith("| ")][2:] == [
        "Guided Grad-CAM", "Occlusion", "LIME", "Integrated Gradients", "IG + SmoothGrad"]  # best first
    assert all(line.count("|") == 8 for line in table_i if line.startswith("| "))  # 7 columns: no seed ones


def test_render_table_has_a_row_per_method_best_first():
    summary = summarize_rows(seed_like_rows(4), n_boot=50)
    rich_table = render_table(summary)
    # Table I order, sensitivity ranks 3 5 4 2 1, time ranks 3 2 4 1 5 → means 3, 3.5, 4, 1.5, 3 (ties keep run order)
    assert list(rich_table.columns[0].cells) == ["Guided Grad-CAM", "Occlusion", "LIME", "Integrated Gradients",
                                                 "IG + SmoothGrad"]
    assert list(rich_table.columns[3].cells) == ["1.50\n[1.50, 1.50]", "3.00\n[3.00, 3.00]", "3.00\n[3.00, 3.00]",
                                                 "3.50\n[3.50, 3.50]", "4.00\n[4.00, 4.00]"]
    assert list(rich_table.columns[1].cells) == ["4"] * 5
