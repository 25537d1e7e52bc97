"""Quality metrics in a run: the columns the worker writes equal the metric functions on the stored maps."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import skimage
import torch
import yaml
import zarr
from PIL import Image

from captum.attr import IntegratedGradients as CaptumIntegratedGradients

from xcv_batch.metrics.complexity import complexity_metrics, effective_complexity, sparseness
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.metrics.faithfulness import deletion_auc, insertion_auc
from xcv_batch.metrics.localisation import localisation_metrics
from xcv_batch.methods.integrated_gradients import completeness_gap, integrated_gradients
from xcv_batch.models.classifier import build_classifier
from xcv_batch.execution.explain import with_missing_values_explained

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masked")
    rows = []
    for i, name in enumerate(("chelsea.png", "coffee.png")):
        shutil.copy(os.path.join(SKIMAGE_DATA, name), folder / name)
        width, height = Image.open(folder / name).size
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4: height // 2, width // 3: 2 * width // 3] = 255  # a box: the "object"
        Image.fromarray(mask).save(folder / f"mask_{name}")
        rows.append({"path": name, "label": i, "mask_path": f"mask_{name}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    job = {
        "seed": 1,
        "data": {"source": str(folder / "manifest.csv")},
        "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
        "methods": {"guided_gradcam": {}, "integrated_gradients": {"n_steps": 4}},
        "sensitivity": None,
        "metrics": {"deletion": {"n_steps": 8}, "insertion": {"n_steps": 8, "substrate": "mean"},
                    "infidelity": {"n_perturb_samples": 3}, "randomisation": {"depth": 2}, "complexity": {}},
        "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16},
    }
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    out = str(tmp_path_factory.mktemp("out") / "out")
    run_job(load_job(str(path), output=out))
    return out, folder


def test_metric_columns_equal_the_functions_on_the_stored_maps(run):
    out, folder = run
    rows = pd.read_parquet(os.path.join(out, "metrics")).sort_values(["index", "method"])
    assert (rows.status == "ok").all()
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    inputs = torch.from_numpy(group["inputs"][:])
    classifier = build_classifier("resnet18", "none", 32, seed=1)
    for method in ("guided_gradcam", "integrated_gradients"):
        mine = rows[rows.method == method]
        maps = torch.from_numpy(group[method][:])
        targets = torch.tensor(mine.target.to_numpy())
        deletion = deletion_auc(classifier.net, inputs, targets, maps, n_steps=8, substrate="zero")
        insertion = insertion_auc(classifier.net, inputs, targets, maps, n_steps=8, substrate="mean")
        np.testing.assert_allclose(mine.deletion_auc, deletion.numpy(), rtol=1e-5)
        np.testing.assert_allclose(mine.insertion_auc, insertion.numpy(), rtol=1e-5)
        assert (mine.infidelity >= 0).all()
        for column in ("deletion_seconds", "insertion_seconds", "infidelity_seconds", "randomisation_seconds",
                       "localisation_seconds"):
            assert (mine[column] > 0).all(), column
        assert mine.randomisation_ssim.between(-1, 1).all()
        expected = complexity_metrics(maps)
        np.testing.assert_allclose(mine.sparseness, expected["sparseness"].numpy(), rtol=1e-9)
        np.testing.assert_array_equal(mine.effective_complexity, expected["effective_complexity"].numpy())
        assert (mine.complexity_seconds > 0).all()
    # IG's completeness gap: a column of IG's rows only, equal to the check on the stored maps (the run's model is
    # the BatchNorm-folded copy: equal to float rounding).
    ig = rows[rows.method == "integrated_gradients"]
    gap = completeness_gap(classifier.net, inputs, torch.tensor(ig.target.to_numpy()),
                           torch.from_numpy(group["integrated_gradients"][:]))
    np.testing.assert_allclose(ig.ig_completeness_gap, gap.numpy(), rtol=1e-4, atol=1e-6)
    assert rows[rows.method == "guided_gradcam"].ig_completeness_gap.isna().all()


def test_localisation_uses_the_manifest_masks(run):
    out, folder = run
    rows = pd.read_parquet(os.path.join(out, "metrics")).sort_values(["index", "method"])
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    from xcv_batch.data.images import load_mask
    from xcv_batch.models.classifier import describe_weights

    preprocessing, _ = describe_weights("resnet18", "none", 32)
    masks = torch.stack([load_mask(str(folder / f"mask_{n}"), preprocessing) for n in ("chelsea.png", "coffee.png")])
    assert 0 < masks.float().mean() < 0.5  # the box survived resize + crop
    for method in ("guided_gradcam", "integrated_gradients"):
        expected = localisation_metrics(torch.from_numpy(group[method][:]), masks)
        mine = rows[rows.method == method]
        for column, values in expected.items():
            np.testing.assert_allclose(mine[column].to_numpy(float), values.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------------------------- complexity, by hand


def maps_with_pixel_sums(sums) -> torch.Tensor:
    """(B, 3, H, W) maps whose channel sums are ``sums``, with channels that partly cancel (|Σ_c a| is what counts)."""
    total = torch.tensor(sums, dtype=torch.float64)
    return torch.stack([total * 1.5, -total, total * 0.5], dim=1)


def gini_by_mean_difference(values: np.ndarray) -> float:
    """The Gini index from its definition: Σ_i Σ_j |x_i − x_j| / (2 n Σ x)."""
    x = np.abs(values.ravel())
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum()))


def test_sparseness_equals_a_hand_computed_gini_index():
    maps = maps_with_pixel_sums([[[0, -1], [1, 2]],     # |r| = 0 1 1 2: ΣΣ|x_i − x_j| = 12 → 12 / (2·4·4) = 0.375
                                 [[0, 0], [0, 5]],      # one pixel holds everything: (n − 1) / n = 0.75
                                 [[3, -3], [3, 3]],     # equal magnitudes: 0
                                 [[0, 0], [0, 0]]])     # all zero: undefined
    got = sparseness(maps)
    assert got.dtype == torch.float64
    assert got[:3].tolist() == pytest.approx([0.375, 0.75, 0.0], abs=1e-12) and torch.isnan(got[3])
    # A pixel whose channels cancel has no relevance: channels (1, −1, 0) sum to 0.
    cancelling = torch.tensor([[[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 2.0]]]])
    assert sparseness(cancelling).item() == pytest.approx(0.5)


def test_sparseness_matches_the_mean_difference_definition_and_ignores_scale():
    maps = torch.randn(5, 3, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = sparseness(maps)
    for i in range(5):
        assert got[i].item() == pytest.approx(gini_by_mean_difference(maps[i].sum(0).numpy()), abs=1e-12)
    assert torch.allclose(sparseness(maps * 1e-4), got, atol=1e-12)


def test_effective_complexity_counts_pixels_above_eps_times_the_largest():
    maps = maps_with_pixel_sums([[[0, 1e-6], [-0.5, 1]], [[0, 0], [0, 0]]])
    assert effective_complexity(maps, eps=1e-5)[0].item() == 2  # 0.5 and 1 exceed 1e-5 · 1; 1e-6 does not
    assert effective_complexity(maps, eps=0.6)[0].item() == 1
    assert effective_complexity(maps * 1e3, eps=1e-5)[0].item() == 2  # relative to the largest: scale-free
    assert torch.isnan(effective_complexity(maps)[1])


def test_missing_values_say_why_and_share_a_clause_per_cause():
    empty = "undefined: the mask is empty after resize and crop"
    columns = {"sensitivity_max": 0.0, "sparseness": None, "effective_complexity": None, "pointing_game": None,
               "relevance_mass": None, "infidelity": float("inf"), "deletion_auc": 0.3}
    reasons = {"sparseness": "undefined: the map is all zero", "effective_complexity": "undefined: the map is all zero",
               "pointing_game": empty, "relevance_mass": empty}
    got = with_missing_values_explained(dict(columns), zero_map=True, reasons=reasons)
    assert got["note"] == ("sensitivity_max, sparseness, effective_complexity undefined: the map is all zero; "
                           f"pointing_game, relevance_mass {empty}; "
                           "infidelity not finite: the perturbed or masked inputs overflowed the model")
    assert all(np.isnan(got[c]) for c in ("sensitivity_max", "sparseness", "pointing_game", "infidelity"))
    assert got["deletion_auc"] == 0.3
    assert "note" not in with_missing_values_explained({"sensitivity_max": None, "sparseness": 0.4}, zero_map=False)


# ------------------------------------------------------------------------------ IG's completeness, against Captum


def test_ig_completeness_gap_equals_captums_relative_convergence_delta():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Softplus(), torch.nn.Conv2d(6, 4, 3),
                              torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5)).double().eval()
    inputs = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.tensor([0, 2, 4, 1])
    for n_steps in (3, 40):
        ours = integrated_gradients(net, inputs, targets, n_steps, forward_batch=16)
        theirs, delta = CaptumIntegratedGradients(net).attribute(
            inputs, baselines=0.0, target=targets, n_steps=n_steps, method="gausslegendre",
            return_convergence_delta=True)
        with torch.no_grad():
            change = (net(inputs) - net(torch.zeros_like(inputs))).gather(1, targets.view(-1, 1)).squeeze(1)
        expected = delta.abs() / change.abs()
        gap = completeness_gap(net, inputs, targets, ours, forward_batch=3)
        assert gap.dtype == torch.float64
        torch.testing.assert_close(gap, expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(completeness_gap(net, inputs, targets, theirs), expected, rtol=1e-9, atol=1e-12)
    # No change of the output from the baseline: nothing to be complete about.
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(300, 2)).double()
    torch.nn.init.zeros_(flat[1].weight)
    assert torch.isnan(completeness_gap(flat, inputs, targets[:4] % 2, torch.zeros_like(inputs))).all()


# ------------------------------------------------------------------- localisation in a batch with and without masks

MIXED = {"chelsea.png": "box", "coffee.png": None, "camera.png": "box", "astronaut.png": "empty", "rocket.jpg": "box"}


@pytest.fixture(scope="module")
def mixed_masks(tmp_path_factory):
    """Five photos: three with a box mask, one with an empty mask, one without a mask_path."""
    folder = tmp_path_factory.mktemp("mixed")
    rows = []
    for name, kind in MIXED.items():
        shutil.copy(os.path.join(SKIMAGE_DATA, name), folder / name)
        mask_path = ""
        if kind is not None:
            width, height = Image.open(folder / name).size
            mask = np.zeros((height, width), dtype=np.uint8)
            if kind == "box":
                mask[height // 3: 2 * height // 3, width // 4: width // 2] = 255
            mask_path = f"mask_{name}.png"
            Image.fromarray(mask).save(folder / mask_path)
        rows.append({"path": name, "mask_path": mask_path})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def run_mixed(folder, tmp_path, batch_size: int) -> tuple[pd.DataFrame, str]:
    job = {"seed": 2, "data": {"source": str(folder / "manifest.csv")},
           "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
           "methods": {"guided_gradcam": {}}, "sensitivity": None, "metrics": {"localisation": "auto"}, "controls": False,
           "compute": {"workers": 1, "device": "cpu", "batch_size": batch_size, "forward_batch": 16}}
    path = tmp_path / f"job{batch_size}.yaml"
    path.write_text(yaml.safe_dump(job))
    out = str(tmp_path / f"out{batch_size}")
    run_job(load_job(str(path), output=out))
    return pd.read_parquet(os.path.join(out, "metrics")).sort_values("image_id").reset_index(drop=True), out


def test_one_image_without_a_mask_does_not_remove_its_batchs_localisation(mixed_masks, tmp_path):
    alone, _ = run_mixed(mixed_masks, tmp_path, batch_size=1)
    together, out = run_mixed(mixed_masks, tmp_path, batch_size=8)  # all five in one batch
    columns = ["pointing_game", "relevance_mass", "relevance_rank"]
    assert (together.status == "ok").all() and together.image_id.tolist() == alone.image_id.tolist()
    np.testing.assert_allclose(together[columns].to_numpy(float), alone[columns].to_numpy(float), rtol=1e-6)
    assert together.note.fillna("").tolist() == alone.note.fillna("").tolist()
    by_id = together.set_index("image_id")
    for name, kind in MIXED.items():
        values, note = by_id.loc[name, columns].to_numpy(float), by_id.loc[name, "note"]
        if kind == "box":
            assert np.isfinite(values).all() and pd.isna(note), name
        elif kind == "empty":  # a mask with nothing in it: nothing to find, and the row says so
            assert np.isnan(values).all() and not pd.isna(by_id.loc[name, "localisation_seconds"])
            assert note == "pointing_game, relevance_mass, relevance_rank undefined: the mask is empty after resize " \
                           "and crop"
        else:  # no mask: not localised, as in a run without masks (null, no note), whichever batch it is in
            assert np.isnan(values).all() and pd.isna(note) and pd.isna(by_id.loc[name, "localisation_seconds"])
    # The masked images' values are the metrics of their stored maps and masks.
    from xcv_batch.data.images import load_mask
    from xcv_batch.models.classifier import describe_weights

    preprocessing, _ = describe_weights("resnet18", "none", 32)
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    boxed = [name for name, kind in MIXED.items() if kind == "box"]
    maps = torch.stack([torch.from_numpy(group["guided_gradcam"][int(by_id.loc[n, "index"])]) for n in boxed])
    masks = torch.stack([load_mask(str(mixed_masks / f"mask_{n}.png"), preprocessing) for n in boxed])
    for column, expected in localisation_metrics(maps, masks).items():
        np.testing.assert_allclose(by_id.loc[boxed, column].to_numpy(float), expected.numpy(), rtol=1e-6)


def test_complexity_is_turned_on_by_metrics_complexity_and_checked():
    from xcv_batch.config import job_from_mapping
    from xcv_batch.errors import ConfigError

    base = {"methods": {"occlusion": {}}, "controls": False}  # a job as it was before the control maps
    off = job_from_mapping(base)
    on = job_from_mapping({**base, "metrics": {"complexity": {}}})
    assert off.metrics.complexity is None and on.metrics.complexity.eps == 1e-5
    assert job_from_mapping({**base, "metrics": {"complexity": {"eps": 0.01}}}).metrics.complexity.eps == 0.01
    # It decides results, so it is in the fingerprint; off, it leaves the fingerprint of older jobs as it was.
    assert on.fingerprint() != off.fingerprint()
    # The hash as it was computed before the complexity field existed (the metrics without it):
    import hashlib
    import json

    before = off.to_dict()
    before.pop("output"), before.pop("name"), before["metrics"].pop("complexity")
    before.pop("controls")  # a later key, left out of the hash: the methods list the control maps when they are on
    before["methods"]["occlusion"].pop("incremental")  # not fingerprinted either (how, not what, is computed)
    before["model"].pop("preprocessing", None)  # a later model key, left out of the hash while unset
    c = off.compute
    before["compute"] = {"device": c.device, "precision": c.precision, "fast_execution": c.fast_execution}
    assert off.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with pytest.raises(ConfigError, match="metrics.complexity.eps"):
        job_from_mapping({**base, "metrics": {"complexity": {"eps": 1.5}}})
