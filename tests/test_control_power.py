"""Each metric's power to reject the control maps, and its ties: hand-made rows with known flags and shares, the shares
against a direct count in pandas, the sentences in every medium, ``--rank-on reliable``, controls apart from the rank,
and a real tiny run whose Max-Sensitivity is reported for what it is."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from ray_helpers import JOB, write_job
from test_summarize import FIVE, row, write_out
from xcv_batch import cli
from xcv_batch.errors import ConfigError
from xcv_batch.output.results import open_results
from xcv_batch.report.controls import TIE_TOLERANCE, better, control_sentences, wins_and_losses
from xcv_batch.report.summarize import RELIABLE, parse_rank_on, summarize_rows
from xcv_batch.report.summary_text import render_markdown, summary_notes

METHODS = ["occlusion", "integrated_gradients", "lime", "ig_smoothgrad"]
CONTROLS = ["random", "edges", "centre"]
N = 40
DIRECTION = {"sensitivity_max": "lower", "deletion_auc": "lower", "insertion_auc": "higher", "sparseness": "higher",
             "effective_complexity": "lower"}


def hand_made_rows(n: int = N) -> pd.DataFrame:
    """Values on a grid of 0.005 or more apart (no near-tie but where meant), with known answers:

    - Max-Sensitivity: ``random`` and ``centre`` are 0 (unchanged under perturbation), below every method: flagged;
    - deletion AUC: ``edges`` (0.25) beats the two methods above it (0.3…, 0.4…) and loses to the two below: 2 of 4,
      at least half, flagged;
    - insertion AUC: every control below every method: not flagged;
    - sparseness: ``edges`` (0.55) beats occlusion (0.50…0.545) only: 1 of 4, not flagged;
    - effective complexity: 4,096 px for everyone, 4,095 now and then (within the tie tolerance): tied, flagged.
    """
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        values = {}
        for j, method in enumerate(METHODS):
            values[method] = {"sensitivity_max": 0.1 + rng.integers(0, 90) / 100,
                              "deletion_auc": 0.1 * (j + 1) + rng.integers(0, 10) / 200,
                              "insertion_auc": 0.5 + rng.integers(0, 40) / 100,
                              "sparseness": 0.5 + 0.1 * j + rng.integers(0, 10) / 200,
                              "effective_complexity": 4095.0 if rng.random() < 0.2 else 4096.0}
        values["random"] = {"sensitivity_max": 0.0, "deletion_auc": 0.6, "insertion_auc": 0.2,
                            "sparseness": 0.2 + rng.integers(0, 10) / 100, "effective_complexity": 4096.0}
        values["edges"] = {"sensitivity_max": 0.105 + rng.integers(0, 90) / 100, "deletion_auc": 0.25,
                           "insertion_auc": 0.3, "sparseness": 0.55, "effective_complexity": 4096.0}
        values["centre"] = {"sensitivity_max": 0.0, "deletion_auc": 0.7, "insertion_auc": 0.1, "sparseness": 0.4,
                            "effective_complexity": 4095.0}
        for method, columns in values.items():
            rows.append(row(f"img{i}", method, columns.pop("sensitivity_max"), index=i, **columns))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rows():
    return hand_made_rows()


@pytest.fixture(scope="module")
def summary(rows):
    return summarize_rows(rows, n_boot=300)


def write_out_with_controls(path, rows: pd.DataFrame, n_images: int, hw: int = 32):
    """``write_out`` of the methods, and a map for every control row (a summary reads the rows whose map exists)."""
    out = write_out(path, rows, n_images=n_images, methods=METHODS, hw=hw)
    group = zarr.open_group(str(out / "attributions.zarr"), mode="a")
    for control in CONTROLS:
        array = group.create_array(control, shape=(n_images, 3, hw, hw), chunks=(1, 3, hw, hw), dtype="float32",
                                   fill_value=float("nan"))
        for index in rows[(rows.method == control) & (rows.status == "ok")]["index"]:
            array[index] = np.ones((3, hw, hw), dtype=np.float32)
    group.attrs["methods"] = {m: {} for m in [*METHODS, *CONTROLS]}
    return out


def direct_shares(rows: pd.DataFrame, metric: str, method: str, control: str) -> tuple[float, float]:
    """(share of images the method is better on, share the control is), counted in pandas."""
    a = rows[rows.method == method].set_index("image_id")[metric]
    b = rows[rows.method == control].set_index("image_id")[metric]
    a, b = a.align(b, join="inner")
    margin = TIE_TOLERANCE * np.maximum(a.abs(), b.abs())
    if DIRECTION[metric] == "lower":
        return float((a < b - margin).mean()), float((b < a - margin).mean())
    return float((a > b + margin).mean()), float((b > a + margin).mean())


def test_hand_made_rows_give_each_flag(summary):
    power = summary.controls
    assert power.controls == CONTROLS and power.methods == METHODS
    assert power.flagged == ["sensitivity_max", "deletion_auc", "effective_complexity"]
    sens = power.metrics["sensitivity_max"]
    assert sens.flagged_by == ["random", "centre"] and sens.beaten["random"] == METHODS
    assert sens.beaten_share == 1.0 and sens.beaten_share_ci95 == [1.0, 1.0] and not sens.tied
    deletion = power.metrics["deletion_auc"]
    assert deletion.flagged_by == ["edges"] and deletion.beaten == {"random": [], "edges": ["lime", "ig_smoothgrad"],
                                                                     "centre": []}
    assert power.metrics["insertion_auc"].flagged_by == [] and power.metrics["insertion_auc"].beaten["edges"] == []
    sparseness = power.metrics["sparseness"]
    assert sparseness.beaten["edges"] == ["occlusion"] and sparseness.flagged_by == [] and not sparseness.tied
    complexity = power.metrics["effective_complexity"]
    assert complexity.tied and complexity.tied_share == 1.0 and complexity.n_tie_images == N
    assert complexity.flagged_by == []  # 4,095 against 4,096 is a tie, not a win of the centred Gaussian


def test_every_share_equals_a_direct_count_in_pandas(rows, summary):
    for metric, power in summary.controls.metrics.items():
        for control in CONTROLS:
            for method in METHODS:
                share = power.shares[control][method]
                expected, control_expected = direct_shares(rows, metric, method, control)
                assert (share.share, share.control_share, share.n_images) == pytest.approx(
                    (expected, control_expected, N)), (metric, control, method)
                lo, hi = share.ci95
                assert lo <= share.share <= hi
    # the flagged share: images × beaten methods on which the control is better, mean over images
    ed = rows[rows.method == "edges"].set_index("image_id")["deletion_auc"]
    better = pd.concat([rows[rows.method == m].set_index("image_id")["deletion_auc"] > ed
                        for m in ["lime", "ig_smoothgrad"]], axis=1).mean(axis=1).mean()
    assert summary.controls.metrics["deletion_auc"].beaten_share == pytest.approx(better)


def test_one_sentence_per_flagged_metric(summary):
    power = summary.controls
    deletion = power.metrics["deletion_auc"]
    lo, hi = deletion.beaten_share_ci95
    assert control_sentences(power) == [
        "Max-Sensitivity ranks `random` above 4 of 4 methods on 100 % [100, 100] of images (`centre` above 4 too): "
        "it does not separate attributions from a map blind to the model here.",
        f"Deletion AUC ranks `edges` above 2 of 4 methods on {100 * deletion.beaten_share:.0f} % "
        f"[{100 * lo:.0f}, {100 * hi:.0f}] of images: it does not separate attributions from a map blind to the "
        "model here.",
        f"Effective complexity ties the methods on 100 % of {N} images (values within 0.1 % of each other): it "
        "separates nothing here, so it is left out of the default rank.",
    ]
    notes = summary_notes(summary)
    assert all(sentence in notes for sentence in control_sentences(power))
    markdown = render_markdown(summary)
    assert all(sentence in markdown for sentence in control_sentences(power))


def test_a_tied_metric_is_left_out_of_the_default_rank_and_reliable_ranks_on_the_unflagged(rows, summary):
    # robustness 1, faithfulness 1 shared by deletion and insertion, complexity 1 for sparseness alone
    assert summary.rank_on.weights == {"sensitivity_max": 1.0, "deletion_auc": 0.5, "insertion_auc": 0.5,
                                       "sparseness": 1.0}
    assert summary.metrics["effective_complexity"].weight == 0.0 and not summary.rank_on.chosen
    reliable = summarize_rows(rows, n_boot=50, rank_on=parse_rank_on("reliable"))
    assert reliable.rank_on.weights == {"insertion_auc": 1.0, "sparseness": 1.0}
    assert reliable.rank_on.chosen and reliable.rank_on.reliable
    assert "--rank-on reliable" in summary_notes(reliable)[0]
    # chosen weights are taken as chosen, tied metric or not
    chosen = summarize_rows(rows, n_boot=50, rank_on={"effective_complexity": 1})
    assert chosen.rank_on.weights == {"effective_complexity": 1.0}


def test_reliable_with_every_metric_flagged_is_one_line_exit_2(tmp_path, capsys):
    rows = hand_made_rows(6)[["image_id", "image_path", "index", "method", "target", "target_name",
                                               "target_prob", "label", "sensitivity_max", "attr_seconds",
                                               "sensitivity_seconds", "status", "error"]]
    with pytest.raises(ConfigError, match=r"--rank-on: reliable: every ranked metric is flagged \(sensitivity_max\)"):
        summarize_rows(rows, n_boot=20, rank_on=RELIABLE)
    out = write_out_with_controls(tmp_path / "out", rows, n_images=6)
    assert cli.main(["summarize", str(out), "--bootstrap", "20", "--rank-on", "reliable"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --rank-on: reliable: every ranked metric is flagged")


def test_the_sentences_are_in_the_terminal_summary_md_report_html_and_summary_json(tmp_path, rows, capsys):
    out = write_out_with_controls(tmp_path / "out", rows[rows["index"] < 6], n_images=6)
    assert cli.main(["summarize", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controls"]["flagged"] == ["sensitivity_max", "deletion_auc", "effective_complexity"]
    # (on 6 images, edges may beat some methods on Max-Sensitivity too: the sentence then names it)
    first = "Max-Sensitivity ranks `random` above 4 of 4 methods on 100 % [100, 100] of images (`centre` above 4"
    tied = ("Effective complexity ties the methods on 100 % of 6 images (values within 0.1 % of each other): it "
            "separates nothing here, so it is left out of the default rank.")
    for text in (" ".join(printed.split()), (out / "summary.md").read_text(), (out / "report.html").read_text()):
        assert first in text and tied in text and "it does not separate attributions from a map blind" in text
    # the controls are nowhere in the ranking
    assert set(summary["methods"]) == set(METHODS) and set(summary["cost"]["methods"]) == set(METHODS)


def test_controls_never_change_the_summary_of_the_methods(rows, summary):
    without = summarize_rows(rows[~rows.method.isin(CONTROLS)], n_boot=300).to_dict()
    with_controls = summary.to_dict()
    assert with_controls.pop("controls")["controls"] == CONTROLS
    assert without.pop("controls")["controls"] == []
    assert with_controls == without


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, photo_folder):
    """A real run at 32 px of the four photos: two cheap methods and the controls, Max-Sensitivity of one copy."""
    folder = tmp_path_factory.mktemp("controls-run")
    job = write_job(folder / "job.yaml", photo_folder,
                    methods={"integrated_gradients": {"n_steps": 2}, "guided_gradcam": {}},
                    compute__batch_size=4, compute__shard_size=4, controls=True)
    out = folder / "out"
    assert cli.main(["run", job, "--out", str(out)]) == 0
    return out


def test_a_real_run_reports_max_sensitivity_of_random_for_what_it_is(tiny_run, capsys):
    assert cli.main(["summarize", str(tiny_run), "--bootstrap", "50", "--no-report"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    summary = json.loads((tiny_run / "summary.json").read_text())
    sens = summary["controls"]["metrics"]["sensitivity_max"]
    # random's map is its image's seed's draw, the same for every perturbed copy: Max-Sensitivity 0, "most stable"
    methods = summary["controls"]["methods"]
    assert sorted(methods) == ["guided_gradcam", "integrated_gradients"] and list(summary["methods"]) == methods
    assert sens["beaten"]["random"] == methods and "random" in sens["flagged_by"]
    assert sens["shares"]["random"]["guided_gradcam"] == {"share": 0.0, "ci95": [0.0, 0.0], "control_share": 1.0,
                                                          "n_images": 4}
    assert "Max-Sensitivity ranks `random` above 2 of 2 methods on 100 % [100, 100] of images" in printed


def test_a_real_runs_method_summary_is_the_same_without_its_control_rows(tiny_run):
    rows = open_results(str(tiny_run)).rows()
    assert set(rows.method) == {"integrated_gradients", "guided_gradcam", *CONTROLS}
    with_controls = summarize_rows(rows, n_boot=50).to_dict()
    without = summarize_rows(rows[~rows.method.isin(CONTROLS)], n_boot=50).to_dict()
    with_controls.pop("controls"), without.pop("controls")
    assert with_controls == without


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_wins_and_losses_are_better_both_ways_from_one_margin(direction):
    rng = np.random.default_rng(0)
    methods, control = rng.normal(size=(400, 5)), rng.normal(size=(400, 1))
    methods[::7, 2], control[::11] = np.nan, np.nan
    methods[5, 1] = control[5, 0] * (1 + TIE_TOLERANCE / 2)  # within the tolerance: a tie, neither wins
    methods[6, 1], control[6] = -0.0, 0.0
    wins, losses, valid = wins_and_losses(methods, control, direction)
    np.testing.assert_array_equal(np.where(valid, wins, np.nan), better(methods, control, direction))
    np.testing.assert_array_equal(np.where(valid, losses, np.nan), better(control, methods, direction))
    assert not (wins[5, 1] or losses[5, 1]) and not (wins & losses).any()
    np.testing.assert_array_equal(valid, np.isfinite(methods) & np.isfinite(control))
