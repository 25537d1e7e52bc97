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

from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.faithfulness import deletion_auc, insertion_auc
from xcv_batch.localisation import localisation_metrics
from xcv_batch.model import build_classifier

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
                    "infidelity": {"n_perturb_samples": 3}, "randomisation": {"depth": 2}},
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


def test_localisation_uses_the_manifest_masks(run):
    out, folder = run
    rows = pd.read_parquet(os.path.join(out, "metrics")).sort_values(["index", "method"])
    group = zarr.open_group(os.path.join(out, "attributions.zarr"), mode="r")
    from xcv_batch.data import load_mask
    from xcv_batch.model import describe_weights

    preprocessing, _ = describe_weights("resnet18", "none", 32)
    masks = torch.stack([load_mask(str(folder / f"mask_{n}"), preprocessing) for n in ("chelsea.png", "coffee.png")])
    assert 0 < masks.float().mean() < 0.5  # the box survived resize + crop
    for method in ("guided_gradcam", "integrated_gradients"):
        expected = localisation_metrics(torch.from_numpy(group[method][:]), masks)
        mine = rows[rows.method == method]
        for column, values in expected.items():
            np.testing.assert_allclose(mine[column].to_numpy(float), values.numpy(), rtol=1e-6)
