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

from xcv_batch.metrics import registry as metrics_info
from xcv_batch.errors import ConfigError, OutputError
from xcv_batch.methods.registry import method_spec
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.output.results import open_results
from scipy import stats as scipy_stats

from xcv_batch.report.summarize import parse_rank_on, summarize, summarize_rows, write_summary
from xcv_batch.report.summary_text import SEED_TABLE_I, agreement_sentence, render_markdown, render_table
from xcv_batch.report.summary_types import DiagnosticImage, Failure, RankOn, SeedSettings

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FIVE = [name for name in METHOD_SETTINGS if not method_spec(name).control]  # the real methods, not the controls


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
           "methods": {name: asdict(METHOD_SETTINGS[name]()) for name in FIVE},
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
    a = summary.methods["a"]
    assert a.mean_rank == 1.0 and a.win_rate == 1.0 and a.mean_rank_ci95 == [1.0, 1.0]
    assert a.ranks["sensitivity_max"].mean_rank == 1.0 and a.ranks["sensitivity_max"].win_rate == 1.0
    # Time is a cost beside the rank: no rank, no test, a throughput instead.
    assert "attr_seconds" not in a.ranks and "attr_seconds" not in summary.tests
    assert summary.cost.methods["a"].seconds_per_image == pytest.approx(0.1)
    # b and c split ranks 2 and 3 between them.
    assert summary.methods["b"].mean_rank + summary.methods["c"].mean_rank == pytest.approx(5.0)
    assert summary.methods["b"].win_rate == 0.0
    assert summary.tests["sensitivity_max"].friedman.reject is True


def test_ties_share_the_average_rank_and_the_win():
    values = {"a": [0.1, 0.3], "b": [0.2, 0.1], "c": [0.2, 0.1]}
    summary = summarize_rows(table(values), n_boot=100)
    ranks = {m: summary.methods[m].ranks["sensitivity_max"] for m in values}
    # image0: a 1, b 2.5, c 2.5; image1: a 3, b 1.5, c 1.5
    assert ranks["a"].mean_rank == 2.0
    assert ranks["b"].mean_rank == ranks["c"].mean_rank == 2.0
    assert ranks["a"].win_rate == 0.5 and ranks["b"].win_rate == 0.25 and ranks["c"].win_rate == 0.25
    # Sensitivity is the only quality metric: the overall rank is its rank.
    assert all(summary.methods[m].mean_rank == 2.0 for m in values)
    assert list(summary.tests) == ["sensitivity_max"]


def test_missing_values_and_error_rows_are_counted_and_left_out_of_ranks():
    values = {
        "a": [0.1, 0.1, 0.1, 0.1],
        "b": [0.2, 0.2, None, 0.3],
        "c": [0.3, 0.3, 0.3, RuntimeError("CUDA out of memory on img3")],
    }
    summary = summarize_rows(table(values), n_boot=100)
    methods = summary.methods
    assert (methods["c"].n_ok, methods["c"].n_error) == (3, 1)
    assert (methods["b"].n_ok, methods["b"].n_error) == (4, 0)
    assert methods["b"].values["sensitivity_max"].n == 3 and methods["b"].values["sensitivity_max"].n_missing == 1
    assert methods["b"].values["sensitivity_max"].median == pytest.approx(0.2)
    # Sensitivity ranks only images 0 and 1 (2 lacks b, 3 lacks c); the cost counts every ok row with a time.
    assert summary.tests["sensitivity_max"].n_images == 2
    assert [summary.cost.methods[m].n_images for m in "abc"] == [4, 4, 3]
    assert methods["c"].ranks["sensitivity_max"].mean_rank == 3.0
    assert summary.failures == [Failure(image_id="img3", method="c", error="CUDA out of memory on img3")]
    assert summary.n_failed_images == 1 and summary.n_images == 4


def test_a_method_without_any_value_is_not_ranked_but_reported():
    values = {"a": [0.1, 0.2, 0.3], "b": [0.2, 0.3, 0.4], "c": [RuntimeError("x")] * 3}
    summary = summarize_rows(table(values), n_boot=100)
    assert summary.metrics["sensitivity_max"].methods == ["a", "b"]
    assert summary.methods["c"].mean_rank is None and summary.methods["c"].n_error == 3
    # a wins sensitivity, the only quality metric; the tie on time does not enter the rank
    assert summary.methods["a"].mean_rank == 1.0
    assert "at least 3 methods" in summary.tests["sensitivity_max"].friedman.skipped
    assert summary.tests["sensitivity_max"].pairwise[0].better == "a"


def test_sensitivity_off_is_not_ranked():
    summary = summarize_rows(table({"a": [None, None], "b": [None, None]}, {"a": [1.0, 2.0], "b": [3.0, 4.0]}), n_boot=50)
    assert list(summary.metrics) == [] and summary.rank_on.weights == {}
    assert summary.metrics_skipped == {"sensitivity_max": "no method has a value"}
    assert summary.methods["a"].mean_rank is None
    # The cost is still there: (1 + 2) / 2 and (3 + 4) / 2 seconds per image.
    assert [summary.cost.methods[m].seconds_per_image for m in "ab"] == [1.5, 3.5]


def test_registered_metrics_are_ranked_in_their_direction_and_unknown_columns_ignored():
    rows = table({"a": [0.1, 0.2], "b": [0.2, 0.3], "c": [0.3, 0.4]})
    rows["insertion_auc"] = [0.9, 0.8, 0.5, 0.4, 0.1, 0.2]  # a highest → best (higher is better)
    rows["made_up_score"] = 1.0
    summary = summarize_rows(rows, n_boot=50)
    assert list(summary.metrics) == ["sensitivity_max", "insertion_auc"]
    assert summary.methods["a"].ranks["insertion_auc"].mean_rank == 1.0
    assert summary.methods["a"].values["insertion_auc"].direction == "higher"
    assert "made_up_score" not in summary.methods["a"].values and "target_prob" not in summary.metrics

    made_up = metrics_info.MetricSpec(name="made_up", settings=dict, implementation="never.loaded:ByASummary",
                                      columns=(metrics_info.MetricInfo("made_up_score", "lower", "Made up"),))
    with metrics_info.registered(made_up):
        assert "made_up_score" in summarize_rows(rows, n_boot=50).metrics


def test_summarize_knows_every_metric_column_without_importing_torch():
    # `summarize` never imports torch: the registry it reads must hold every built-in metric on its own.
    code = """
import sys
from xcv_batch.metrics import registry
names = [info.name for info in registry.registered_metrics()]
assert "torch" not in sys.modules, "reading the metric registry imported torch"
print(",".join(names))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # The columns every spec registered here declares, in registration order (a metric added later is in both).
    columns = [column.name for spec in metrics_info.metric_specs() for column in spec.columns]
    assert columns[:2] == ["sensitivity_max", "infidelity"] and "relevance_rank" in columns
    assert done.stdout.strip().split(",") == columns, done.stderr[-2000:]


def test_cis_contain_the_truth_on_synthetic_data():
    # One fixed draw (6 intervals at 95 % each); test_stats checks the coverage rate over many draws.
    rng = np.random.default_rng(0)
    n = 200
    values = {"a": list(rng.lognormal(0.0, 0.5, n)), "b": list(rng.lognormal(0.0, 0.5, n)),
              "c": list(rng.lognormal(0.0, 0.5, n))}
    summary = summarize_rows(table(values), n_boot=1000, seed=3)
    for m in values:
        lo, hi = summary.methods[m].values["sensitivity_max"].ci95
        assert lo < 1.0 < hi  # median of lognormal(0, σ) is 1
        lo, hi = summary.methods[m].ranks["sensitivity_max"].mean_rank_ci95
        assert lo < 2.0 < hi  # iid methods: expected rank 2
    assert summary.tests["sensitivity_max"].friedman.p > 0.05
    assert not any(p.reject for p in summary.tests["sensitivity_max"].pairwise)


def test_the_normal_bootstrap_scheme_gives_the_cis_of_resampling_and_says_how_they_were_drawn():
    rng = np.random.default_rng(5)
    n = 3000
    values = {"a": list(rng.lognormal(0.0, 0.5, n)), "b": list(rng.lognormal(0.1, 0.5, n)),
              "c": list(rng.lognormal(0.2, 0.5, n))}
    rows = table(values)
    rows["deletion_auc"] = rng.uniform(size=len(rows))
    resampled = summarize_rows(rows, n_boot=2000, seed=3, scheme="resample")
    normal = summarize_rows(rows, n_boot=2000, seed=3, scheme="normal")
    assert (resampled.bootstrap_scheme, normal.bootstrap_scheme) == ("resample", "normal")
    # Only the CIs of means (ranks, agreement) are drawn differently; medians, tests and the rank itself are not.
    for m in values:
        assert normal.methods[m].values == resampled.methods[m].values
        assert normal.methods[m].mean_rank == resampled.methods[m].mean_rank
        lo, hi = resampled.methods[m].mean_rank_ci95
        assert normal.methods[m].mean_rank_ci95 == pytest.approx([lo, hi], abs=0.08 * (hi - lo))
        for metric in ("sensitivity_max", "deletion_auc"):
            lo, hi = resampled.methods[m].ranks[metric].mean_rank_ci95
            assert normal.methods[m].ranks[metric].mean_rank_ci95 == pytest.approx([lo, hi], abs=0.08 * (hi - lo))
    assert normal.tests == resampled.tests
    (pair,), (exact,) = normal.agreement.pairs, resampled.agreement.pairs
    assert pair.tau == exact.tau
    assert pair.ci95 == pytest.approx(exact.ci95, abs=0.08 * (exact.ci95[1] - exact.ci95[0]))
    assert "large-sample normal law" in render_markdown(normal)
    assert "from 50,000 images on" in render_markdown(summarize_rows(rows, n_boot=20))
    with pytest.raises(ConfigError, match="--bootstrap-scheme"):
        summarize_rows(rows, scheme="jackknife")


def test_same_seed_same_summary_and_holm_over_the_pairs():
    rows = seed_like_rows()
    first, second = summarize_rows(rows, n_boot=200, seed=1), summarize_rows(rows, n_boot=200, seed=1)
    assert first == second
    pairs = first.tests["sensitivity_max"].pairwise
    assert len(pairs) == 10
    # 6 images, no ties, all differences one-signed: exact two-sided p = 2/2^6 for every pair; Holm ×10 → 0.3125
    assert all(p.p == pytest.approx(2 / 64) for p in pairs)
    assert all(p.p_holm == pytest.approx(min(1.0, 10 * 2 / 64)) for p in pairs)
    assert first.tests["sensitivity_max"].nemenyi.cd == pytest.approx(2.728 * np.sqrt(5 * 6 / (6 * 6)))


def test_duplicate_rows_keep_the_ok_one():
    rows = table({"a": [0.1], "b": [0.2], "c": [0.3]})
    stale = row("img0", "a", None, None, status="error", error="worker died")
    summary = summarize_rows(pd.concat([pd.DataFrame([stale]), rows], ignore_index=True), n_boot=20)
    assert summary.methods["a"].n_ok == 1 and summary.methods["a"].n_error == 0


# --- quality apart from cost: the metrics and weights of the rank ---------------------------------------------------


def two_metric_rows() -> pd.DataFrame:
    """Sensitivity ranks (a, b, c): image0 1 2 3, image1 3 1 2; deletion ranks: image0 3 2 1, image1 1 3 2."""
    rows = table({"a": [0.1, 0.3], "b": [0.2, 0.1], "c": [0.3, 0.2]}, {"a": [0.01] * 2, "b": [5.0] * 2, "c": [9.0] * 2})
    rows["deletion_auc"] = [0.3, 0.1, 0.2, 0.3, 0.1, 0.2]  # a, a, b, b, c, c
    return rows


def test_the_rank_ignores_cost_by_default():
    # a is 500× faster than b and c but the least stable on every image: it must rank last.
    values = {"a": [0.9, 0.8, 0.7], "b": [0.1, 0.2, 0.1], "c": [0.2, 0.1, 0.2]}
    summary = summarize_rows(table(values, {"a": [0.01] * 3, "b": [5.0] * 3, "c": [5.0] * 3}), n_boot=50)
    assert summary.methods["a"].mean_rank == 3.0 and summary.rank_on == RankOn(
        weights={"sensitivity_max": 1.0}, chosen=False)
    assert "Max-Sensitivity ×1" in render_markdown(summary) and "never averaged in" in render_markdown(summary)


def test_rank_on_weights_the_per_metric_mean_ranks():
    rows = two_metric_rows()
    # Per metric, mean ranks: sensitivity a 2, b 1.5, c 2.5; deletion a 2, b 2.5, c 1.5.
    default = summarize_rows(rows, n_boot=50)  # two families, one metric each: weight 1 each
    assert [default.methods[m].mean_rank for m in "abc"] == [2.0, 2.0, 2.0]
    chosen = summarize_rows(rows, n_boot=50, rank_on={"sensitivity_max": 1, "deletion_auc": 2})
    assert [chosen.methods[m].mean_rank for m in "abc"] == pytest.approx([6 / 3, 6.5 / 3, 5.5 / 3])
    # Wins: sensitivity a, b (one image each); deletion c, a → weighted (1 · w_s + 2 · w_d) / 3.
    assert [chosen.methods[m].win_rate for m in "abc"] == pytest.approx([1.5 / 3, 0.5 / 3, 1 / 3])
    assert chosen.rank_on == RankOn(weights={"sensitivity_max": 1.0, "deletion_auc": 2.0}, chosen=True)
    only = summarize_rows(rows, n_boot=50, rank_on={"sensitivity_max": 1})
    assert [only.methods[m].mean_rank for m in "abc"] == [2.0, 1.5, 2.5]
    assert only.metrics["deletion_auc"].weight == 0.0 and "deletion_auc" in only.tests  # still reported
    assert "(not in rank)" in str(render_table(only).columns[6].header)


def test_default_weights_give_each_metric_family_one_vote():
    rows = two_metric_rows()
    for column, values in (("pointing_game", [1, 0, 0, 1, 0, 1]), ("relevance_mass", [0.5, 0.2, 0.3, 0.4, 0.1, 0.9]),
                           ("relevance_rank", [0.5, 0.2, 0.3, 0.4, 0.1, 0.9])):
        rows[column] = values
    summary = summarize_rows(rows, n_boot=20)
    assert summary.rank_on.weights == pytest.approx({"sensitivity_max": 1.0, "deletion_auc": 1.0,
                                                           "pointing_game": 1 / 3, "relevance_mass": 1 / 3,
                                                           "relevance_rank": 1 / 3})


def test_rank_on_refuses_costs_unknown_metrics_and_bad_weights():
    rows = two_metric_rows()
    with pytest.raises(ConfigError, match="--rank-on: attr_seconds is a cost"):
        summarize_rows(rows, n_boot=10, rank_on={"attr_seconds": 1})
    with pytest.raises(ConfigError, match="insertion_auc is not a quality metric of this run"):
        summarize_rows(rows, n_boot=10, rank_on={"insertion_auc": 1})
    assert parse_rank_on("sensitivity_max, deletion_auc:2.5") == {"sensitivity_max": 1.0, "deletion_auc": 2.5}
    for text, words in (("sensitivity_max:0", "must be > 0"), ("a:x", "must be a number"), ("a,a", "named twice"),
                        (" , ", "name at least one")):
        with pytest.raises(ConfigError, match=words):
            parse_rank_on(text)


# --- agreement between the metrics ----------------------------------------------------------------------------------


def agreement_rows() -> pd.DataFrame:
    """Oriented orders of (a, b, c): image0 same order on both metrics, image1 reversed, image2 ranks 1 2 3 vs 1 3 2."""
    rows = table({"a": [0.1, 0.1, 0.1], "b": [0.2, 0.2, 0.2], "c": [0.3, 0.3, 0.3]})
    insertion = {"a": [0.9, 0.7, 0.9], "b": [0.8, 0.8, 0.7], "c": [0.7, 0.9, 0.8]}  # higher is better
    rows["insertion_auc"] = [v for m in "abc" for v in insertion[m]]
    return rows


def test_agreement_is_the_mean_per_image_kendall_tau_and_w_by_hand():
    summary = summarize_rows(agreement_rows(), n_boot=200)
    agreement = summary.agreement
    (pair,) = agreement.pairs
    # τ per image: 1, −1, (2 concordant − 1 discordant) / 3; the mean 1/9.
    assert (pair.a, pair.b, pair.n_images) == ("sensitivity_max", "insertion_auc", 3)
    assert pair.tau == pytest.approx(1 / 9)
    by_scipy = [scipy_stats.kendalltau([0.1, 0.2, 0.3], [-x for x in ins]).statistic
                for ins in ([0.9, 0.8, 0.7], [0.7, 0.8, 0.9], [0.9, 0.7, 0.8])]
    assert pair.tau == pytest.approx(np.mean(by_scipy))
    assert pair.ci95[0] <= 1 / 9 <= pair.ci95[1]
    assert agreement.matrix == [[1.0, pytest.approx(1 / 9)], [pytest.approx(1 / 9), 1.0]]
    # W for two metrics: per image 1, 0 and 12·S/(m²(k³ − k)) with rank sums (2, 5, 5), S = 6 → 0.75.
    assert agreement.kendalls_w.value == pytest.approx((1 + 0 + 0.75) / 3)
    assert agreement.disagreeing == [["sensitivity_max", "insertion_auc"]]
    sentence = agreement_sentence(summary)
    assert sentence.startswith("The metrics disagree on the order of the methods: 1 of 1 pairs")
    assert "Max-Sensitivity vs Insertion AUC τ = 0.11" in sentence and "0.3" in sentence and "65%" in sentence


def test_kendalls_w_is_the_same_computed_a_block_of_images_at_a_time(monkeypatch):
    from xcv_batch.report import summarize as summarize_module

    rows = agreement_rows()
    whole = summarize_rows(rows, n_boot=50).agreement.kendalls_w
    monkeypatch.setattr(summarize_module, "_CONCORDANCE_BLOCK_ROWS", 2)  # blocks of 2 and 1 image
    assert summarize_rows(rows, n_boot=50).agreement.kendalls_w == whole
    assert whole.value == pytest.approx((1 + 0 + 0.75) / 3)


def test_agreement_on_random_tables_equals_scipy_kendalltau_per_image():
    rng = np.random.default_rng(4)
    n, methods = 8, ["a", "b", "c", "d"]  # few images: scipy's Wilcoxon with ties permutes all 2^n signs
    sens = np.round(rng.random((n, 4)), 1)  # rounded: ties on some images
    deletion = np.round(rng.random((n, 4)), 1)
    rows = table({m: list(sens[:, j]) for j, m in enumerate(methods)})
    rows["deletion_auc"] = [deletion[i, j] for j in range(4) for i in range(n)]
    expected = [scipy_stats.kendalltau(sens[i], deletion[i]).statistic for i in range(n)]
    expected = [t for t in expected if np.isfinite(t)]
    (pair,) = summarize_rows(rows, n_boot=50).agreement.pairs
    assert pair.n_images == len(expected) and pair.tau == pytest.approx(np.mean(expected))


def test_metrics_that_agree_say_so():
    rows = agreement_rows()
    rows["insertion_auc"] = [0.9] * 3 + [0.8] * 3 + [0.7] * 3  # a best, c worst, as sensitivity says
    summary = summarize_rows(rows, n_boot=50)
    assert summary.agreement.pairs[0].tau == 1.0 and summary.agreement.disagreeing == []
    assert agreement_sentence(summary).startswith("The ranked metrics agree")
    assert agreement_sentence(summarize_rows(table({"a": [0.1], "b": [0.2]}), n_boot=10)) is None  # one metric


# --- cost and diagnostics -------------------------------------------------------------------------------------------


def test_cost_is_throughput_from_the_rows_and_the_job():
    rows = table({"occlusion": [0.1, 0.2, 0.3], "lime": [0.3, 0.2, 0.1]},
                 {"occlusion": [0.5, 0.5, 1.0], "lime": [1.0, 1.0, 1.0]})
    job = seed_job(**{"model.resolution": 32, "compute": {"batch_size": 4},
                      "methods": {"occlusion": {"window": 8, "stride": 4}, "lime": {}, "integrated_gradients": {}}})
    cost = summarize_rows(rows, n_boot=10, job=job).cost
    occlusion = cost.methods["occlusion"]
    # 2 s for 3 images; windows: ceil((32 − 8) / 4) + 1 = 7 a side, 49 + the clean image = 50 forwards.
    assert occlusion.seconds_per_image == pytest.approx(2 / 3) and occlusion.images_per_second == 1.5
    assert (occlusion.passes_per_image, occlusion.passes) == (50, "50 forward")
    assert occlusion.forward_equivalents_per_second == pytest.approx(75.0)
    assert cost.methods["lime"].passes_per_image == 1000  # lime's default num_samples
    # IG's 200 default steps, each a forward and a backward (two forwards' work): 600 forward-equivalents.
    ig = summarize_rows(table({"integrated_gradients": [0.1]}, {"integrated_gradients": [2.0]}), n_boot=10, job=job)
    assert ig.cost.methods["integrated_gradients"].forward_equivalents_per_image == 600
    assert ig.cost.methods["integrated_gradients"].forward_equivalents_per_second == 300
    # Share of the summed seconds (attribution + sensitivity, 10× here): (2 + 20) / (2 + 20 + 3 + 30).
    assert occlusion.share_of_run == pytest.approx(22 / 55) and cost.batch_size == 4


def test_ig_completeness_gap_is_a_diagnostic_with_its_images_above_tolerance():
    rows = table({"integrated_gradients": [0.1, 0.2, 0.3], "lime": [0.3, 0.2, 0.1]})
    rows["ig_completeness_gap"] = [0.01, 0.2, None, None, None, None]
    summary = summarize_rows(rows, n_boot=10)
    assert "ig_completeness_gap" not in summary.metrics
    gap = summary.diagnostics["ig_completeness_gap"]
    assert (gap.n, gap.n_above, gap.tolerance) == (2, 1, 0.05)
    assert gap.median == pytest.approx(0.105) and gap.above == [DiagnosticImage(image_id="img1", value=0.2)]
    assert "1 of 2 images above the tolerance 0.05" in render_markdown(summary)
    with pytest.raises(ConfigError, match="diagnostic of Integrated Gradients"):
        summarize_rows(rows, n_boot=10, rank_on={"ig_completeness_gap": 1})


def test_cli_summarize_takes_rank_on_and_says_what_entered_the_rank(tmp_path, capsys):
    from xcv_batch import cli

    rows = seed_like_rows(4)
    rows["deletion_auc"] = np.linspace(0.1, 0.9, len(rows))
    out = write_out(tmp_path / "out", rows, n_images=4)
    assert cli.main(["summarize", str(out), "--no-report", "--bootstrap", "50", "--rank-on", "deletion_auc"]) == 0
    printed = capsys.readouterr().out
    assert "Deletion AUC ×1 (weights chosen with --rank-on)" in printed and "never averaged in" in printed
    assert json.loads((out / "summary.json").read_text())["rank_on"]["weights"] == {"deletion_auc": 1.0}
    assert cli.main(["summarize", str(out), "--no-report", "--rank-on", "attr_seconds"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attr_seconds is a cost" in err
    assert cli.main(["summarize", str(out), "--no-report", "--bootstrap-scheme", "normal"]) == 0
    capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["bootstrap_scheme"] == "normal"
    assert cli.main(["summarize", str(out), "--no-report", "--bootstrap-scheme", "jackknife"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bootstrap-scheme" in err and "auto, resample, normal" in err


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


def test_image_rows_reads_only_that_images_rows_and_says_the_same_as_rows(tmp_path):
    rows = seed_like_rows(4)
    rows.loc[(rows.image_id == "img2") & (rows.method == FIVE[0]), ["status", "error"]] = ["error", "RuntimeError: x"]
    out = write_out(tmp_path / "out", rows, n_images=4)
    fresh = open_results(out)
    one = fresh.image_rows("img2")
    assert fresh._rows is None  # a filter on the files, not every row read
    everything = open_results(out).rows()
    expected = everything[everything.image_id == "img2"]
    assert len(one) == len(FIVE) and one.status.tolist().count("error") == 1
    pd.testing.assert_frame_equal(one.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    assert fresh.image_rows("nobody").empty


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
        assert summary.run.complete is True
        write_summary("memory://bucket/run", summary)
        assert json.loads(memory.cat("/bucket/run/summary.json")) == summary.to_dict()
    finally:
        memory.rm("/bucket/run", recursive=True)


# --- whole directories and files ------------------------------------------------------------------------------------


def test_summarize_complete_run_and_round_trip(tmp_path):
    out = write_out(tmp_path / "out", seed_like_rows(6), n_images=6)
    summary = summarize(str(out), n_boot=200)
    assert summary.run.complete is True and summary.n_images == summary.run.n_expected == 6
    # LIME has the best sensitivity and is the slowest: its slowness is reported, not averaged into its rank.
    assert summary.methods["lime"].mean_rank == 1.0
    assert max(summary.cost.methods, key=lambda m: summary.cost.methods[m].seconds_per_image) == "lime"
    assert summary.run.seed_settings == SeedSettings(matches=True, differences=[])
    paths = write_summary(str(out), summary)
    assert paths == [f"{out}/summary.json", f"{out}/summary.md"]
    assert json.loads(Path(paths[0]).read_text()) == summary.to_dict()


def test_summarize_partial_run_says_so(tmp_path):
    rows = seed_like_rows(6)
    out = write_out(tmp_path / "out", rows[rows["index"] < 4], n_images=6)
    summary = summarize(str(out), n_boot=50)
    assert summary.run.complete is False and summary.n_images == 4 and summary.run.n_expected == 6
    assert summary.run.n_missing_rows == 2 * 5
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
    assert summary.run.seed_settings.differences == ["sensitivity.n_perturb_samples=2 (seed: 10)",
                                                      "model.resolution=64 (seed: 224)"]
    markdown = render_markdown(summary)
    assert "seed (Table I)" not in markdown and "74.29" not in markdown
    lines = markdown.splitlines()
    table_i = lines[lines.index("## Table I") + 2:lines.index("## Mean rank per metric (1 = best)")]
    assert [line.split("|")[1].strip() for line in table_i if line.startswith("| ")][2:] == [
        "LIME", "Guided Grad-CAM", "Occlusion", "IG + SmoothGrad", "Integrated Gradients"]  # best first
    assert all(line.count("|") == 8 for line in table_i if line.startswith("| "))  # 7 columns: no seed ones


def test_render_table_has_a_row_per_method_best_first():
    summary = summarize_rows(seed_like_rows(4), n_boot=50)
    rich_table = render_table(summary)
    # Table I order, sensitivity ranks 3 5 4 2 1 (time, a cost, is not ranked)
    assert list(rich_table.columns[0].cells) == ["LIME", "Guided Grad-CAM", "Occlusion", "IG + SmoothGrad",
                                                 "Integrated Gradients"]
    assert list(rich_table.columns[3].cells) == [f"{r}.00\n[{r}.00, {r}.00]" for r in range(1, 6)]
    # Seconds per image sit in the last column, apart from the rank: LIME's Table I time is 85.97 s.
    assert list(rich_table.columns[-1].cells)[0] == f"{summary.cost.methods['lime'].seconds_per_image:.3g}"
    assert list(rich_table.columns[1].cells) == ["4"] * 5


def test_summary_json_keeps_its_keys_in_order_and_reads_back_as_the_summary(tmp_path):
    out = write_out(tmp_path / "out", seed_like_rows(4), n_images=4)
    summary = summarize(str(out), n_boot=50)
    text = Path(write_summary(str(out), summary)[0]).read_text()
    assert text == summary.to_json()
    plain = json.loads(text)
    # summary.json is what users read: its layout is the contract the typed summary keeps.
    assert list(plain) == ["schema", "n_images", "n_boot", "bootstrap_scheme", "seed", "alpha", "metrics",
                           "metrics_skipped", "methods", "tests", "rank_on", "agreement", "cost", "diagnostics",
                           "failures", "n_failed_images", "controls", "out", "job_name", "fingerprint", "model", "target", "n_expected", "complete",
                           "n_missing_rows", "seed_settings"]
    lime = plain["methods"]["lime"]
    assert list(lime) == ["label", "mean_rank", "mean_rank_ci95", "win_rate", "n_ok", "n_error", "ranks",
                          "sensitivity_max"]
    assert lime["sensitivity_max"] == {"median": summary.methods["lime"].values["sensitivity_max"].median,
                                       "ci95": summary.methods["lime"].values["sensitivity_max"].ci95,
                                       "mean": summary.methods["lime"].values["sensitivity_max"].mean,
                                       "n": 4, "n_missing": 0, "direction": "lower"}
    assert list(plain["tests"]["sensitivity_max"]["pairwise"][0]) == ["a", "b", "n", "statistic", "p", "effect_size",
                                                                      "better", "p_holm", "reject"]
    assert plain["model"] == {"arch": "resnet18", "weights": "none", "resolution": 224}
    # A summary of bare rows has no run facts, and none in its dict.
    assert "out" not in summarize_rows(seed_like_rows(4), n_boot=20).to_dict()
