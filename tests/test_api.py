"""The Python API: ``Explainer`` gives a ``run``'s numbers on the same images, ids, seed and settings; ``run`` runs a
job given as a path, a dict or a Job; the README's notebook example runs as written."""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from PIL import Image

from map_checks import assert_same_map
import xcv_batch
from xcv_batch import ConfigError, Explainer
from xcv_batch.errors import ModelError
from xcv_batch.output.layout import ROW_COLUMN_NAMES

README = os.path.join(os.path.dirname(__file__), "..", "README.md")

METHODS = {
    "occlusion": {"window": 8, "stride": 8},
    "integrated_gradients": {"n_steps": 8},
    "ig_smoothgrad": {"nt_samples": 2, "n_steps": 4},
    "lime": {"num_samples": 32},
}
SENSITIVITY = {"n_perturb_samples": 2, "perturb_radius": 0.02}
#: a run's columns that differ between two computations of the same numbers: its costs and where it ran
UNCOMPARED = ("shard",)


def _job(out: str, source: str = "builtin:skimage") -> dict:
    return {
        "name": "api", "seed": 4,
        "data": {"source": source, "limit": 3},
        "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
        "methods": METHODS,
        "sensitivity": SENSITIVITY,
        "metrics": {"complexity": {}, "deletion": {"n_steps": 4}},
        "compute": {"workers": 1, "batch_size": 2, "shard_size": 2},
        "output": {"path": out},
        "controls": False,  # as an Explainer by default: the run and the Explainer explain the same maps
    }


def _comparable(rows: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in rows.columns if not c.endswith("_seconds") and c not in UNCOMPARED]
    return rows[keep].sort_values(["image_id", "method"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run of the job (dict form through ``xcv_batch.run``) and its opened results."""
    out = str(tmp_path_factory.mktemp("api") / "run")
    return xcv_batch.run(_job(out))


def test_run_returns_the_opened_results_of_the_job(reference):
    rows = reference.rows()
    assert sorted(rows.method.unique()) == sorted(METHODS)
    assert len(rows) == 3 * len(METHODS)
    assert (rows.status == "ok").all()
    assert reference.job["seed"] == 4


def test_explainer_on_a_named_model_and_paths_gives_the_runs_numbers(reference):
    """Same images (as paths), same ids, same seed and settings: equal maps and equal rows."""
    rows = reference.rows()
    ids = list(reference.image_ids)
    paths = [rows[rows.image_id == i].image_path.iloc[0] for i in ids]
    explainer = Explainer("resnet18", weights="none", resolution=32, methods=METHODS, sensitivity=SENSITIVITY,
                          metrics={"complexity": {}, "deletion": {"n_steps": 4}}, seed=4, batch_size=3)
    explained = explainer.explain(paths, image_ids=ids)

    for method in METHODS:
        for i, image_id in enumerate(ids):
            np.testing.assert_array_equal(explained.maps[method][i].numpy(), reference.attribution(image_id, method))
    mine, theirs = _comparable(explained.rows), _comparable(rows)
    assert list(explained.rows.columns[: len(ROW_COLUMN_NAMES)]) == list(ROW_COLUMN_NAMES)
    pd.testing.assert_frame_equal(mine[theirs.columns], theirs, check_dtype=False)


def test_explainer_on_an_nn_module_and_tensors_gives_the_runs_numbers(tmp_path):
    """A user's nn.Module (saved as a state_dict for the run) and the run's stored inputs as a tensor."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    weights = tmp_path / "net.pt"
    torch.save(net.state_dict(), weights)
    job = _job(str(tmp_path / "run"))
    job["model"] = {"arch": "resnet18", "weights": str(weights), "resolution": 32}
    job["methods"] = {"integrated_gradients": {"n_steps": 8}, "occlusion": {"window": 8, "stride": 8}}
    results = xcv_batch.run(job)
    ids = list(results.image_ids)
    inputs = torch.stack([torch.from_numpy(results.model_input(i)) for i in ids])

    explained = Explainer(net, methods=job["methods"], sensitivity=SENSITIVITY,
                          metrics={"complexity": {}, "deletion": {"n_steps": 4}}, seed=4).explain(inputs, image_ids=ids)

    # Equal to float32 rounding, not bit for bit (tests/map_checks.py): on an AVX-512 machine the user's module and
    # the run's model, rebuilt from its state_dict, gave Occlusion maps (and Max-Sensitivities) 3e-5 apart, relative.
    for method in job["methods"]:
        for i, image_id in enumerate(ids):
            assert_same_map(explained.maps[method][i].numpy(), results.attribution(image_id, method), rtol=1e-4)
    mine, theirs = _comparable(explained.rows), _comparable(results.rows())
    assert mine.target.tolist() == theirs.target.tolist()
    pd.testing.assert_frame_equal(mine.drop(columns="image_path"), theirs.drop(columns="image_path"), check_dtype=False,
                                  rtol=1e-4)


def test_explainer_ig_equals_per_image_captum_on_a_custom_module():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    x = torch.randn(3, 3, 16, 16)
    explained = Explainer(net, methods={"integrated_gradients": {"n_steps": 16}}, sensitivity=None,
                          fast_execution=False).explain(x)
    targets = explained.rows.sort_values("index").target.to_numpy()
    assert targets.tolist() == net(x).argmax(1).tolist()
    reference = CaptumIntegratedGradients(net)
    for i in range(3):
        expected = reference.attribute(x[i: i + 1], target=int(targets[i]), n_steps=16, method="gausslegendre")
        np.testing.assert_allclose(explained.maps["integrated_gradients"][i].numpy(), expected[0].detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert explained.rows.sensitivity_max.isna().all()  # sensitivity=None: off


def test_explicit_targets_and_pil_images_with_preprocessing():
    torch.manual_seed(2)
    net = torchvision.models.resnet18(num_classes=4)
    photo = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    explainer = Explainer(net, methods=["integrated_gradients"], sensitivity=None,
                          preprocessing={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize": 36, "crop": 32})
    explained = explainer.explain([photo, photo], targets=[1, 3], image_ids=["a", "b"])
    assert explained.maps["integrated_gradients"].shape == (2, 3, 32, 32)
    assert explained.rows.set_index("image_id").target.to_dict() == {"a": 1, "b": 3}
    # the inputs are the photo resized to 36 on its short side, centre-cropped to 32 and normalised by mean/std
    assert explained.inputs.shape == (2, 3, 32, 32)
    image = explained.input_image("a")
    assert image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose((explained.inputs[0] * 0.25 + 0.5).permute(1, 2, 0).numpy(), image, atol=1e-6)


def test_plot_draws_the_panel_of_one_image(tmp_path):
    net = torchvision.models.resnet18(num_classes=3)
    explained = Explainer(net, methods=["integrated_gradients", "occlusion"], sensitivity=None,
                          ).explain(torch.randn(2, 3, 32, 32))
    figure = explained.plot(1, str(tmp_path / "panel.png"))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0].startswith("image-1")
    assert any(t.startswith("Integrated Gradients") for t in titles)
    assert Image.open(tmp_path / "panel.png").size[0] > 100


@pytest.mark.parametrize("kwargs, key", [
    ({"methods": {"occlusion": {"windw": 4}}}, "methods.occlusion.windw"),
    ({"methods": ["no_such_method"]}, "methods.no_such_method"),
    ({"sensitivity": {"n_perturb_samples": "many"}}, "sensitivity.n_perturb_samples"),
    ({"precision": "fp64"}, "compute.precision"),
    ({"metrics": {"deletion": {"substrate": "grey"}}}, "metrics.deletion.substrate"),
])
def test_settings_errors_are_the_clis_one_line_config_errors(kwargs, key):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ConfigError) as caught:
        Explainer(net, **{"methods": ["integrated_gradients"], **kwargs})
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


def test_a_method_given_none_is_off_as_null_is_in_a_job_file():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    explainer = Explainer(net, methods={"integrated_gradients": {"n_steps": 4}, "lime": None}, sensitivity=None,
                          resolution=16)
    assert list(explainer.job.methods) == ["integrated_gradients"]


def test_bad_inputs_are_one_line_errors():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))  # takes 16 px images only
    with pytest.raises(ModelError, match="cannot take 224 px inputs"):
        Explainer(net, methods=["integrated_gradients"])
    explainer = Explainer(net, methods=["integrated_gradients"], sensitivity=None, resolution=16)
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        explainer.explain(torch.randn(3, 16, 16))
    with pytest.raises(ConfigError, match="distinct"):
        explainer.explain(torch.randn(2, 3, 16, 16), image_ids=["x", "x"])
    with pytest.raises(ConfigError, match="targets"):
        explainer.explain(torch.randn(2, 3, 16, 16), targets=[0])
    # an image that cannot be read gets error rows and NaN maps, as in a run; the others go on
    photo = os.path.join(os.path.dirname(__import__("skimage").data.__file__), "coffee.png")
    explained = explainer.explain(["/no/such/image.png", photo])
    rows = explained.rows
    assert rows["index"].tolist() == [0, 1] and rows.status.tolist() == ["error", "ok"]
    assert rows.error.iloc[0].startswith("cannot use image: ") and "/no/such/image.png" in rows.error.iloc[0]
    assert rows.image_path.tolist() == ["/no/such/image.png", photo] and pd.isna(rows.target.iloc[0])
    assert torch.isnan(explained.maps["integrated_gradients"][0]).all()
    assert torch.isfinite(explained.maps["integrated_gradients"][1]).all()


def test_run_takes_a_job_file_with_overrides_and_out(tmp_path):
    out = str(tmp_path / "smoke")
    results = xcv_batch.run(os.path.join(os.path.dirname(__file__), "..", "jobs", "smoke.yaml"), out=out,
                            overrides={"data.limit": 1, "methods": {"integrated_gradients": {"n_steps": 4}}})
    rows = results.rows()
    # the job's method, then the control maps a run adds by default (controls: true)
    assert sorted(rows.method.tolist()) == sorted(["integrated_gradients", "random", "edges", "centre"])
    assert results.job["methods"]["integrated_gradients"]["n_steps"] == 4
    with pytest.raises(ConfigError) as caught:
        xcv_batch.run({"methods": {"occlusion": {"window": 0}}}, out=str(tmp_path / "bad"))
    assert caught.value.key.startswith("methods.occlusion")


def test_the_readme_notebook_example_runs_as_written(tmp_path, monkeypatch):
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"<!-- api-example:begin -->\s*```python\n(.*?)```\s*<!-- api-example:end -->", text, re.S)
    assert len(blocks) == 1, "README has one marked notebook example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md example", "exec"), namespace)
    explained = namespace["explained"]
    assert set(explained.maps) == {"integrated_gradients", "occlusion", "lime"}
    assert (explained.rows.status == "ok").all()
    assert os.path.getsize(tmp_path / "panel.png") > 0


@pytest.mark.parametrize("arch, guided", [
    ("timm:resnet18", "ok"),
    ("efficientnet_b0", "error"),    # SiLU: Guided Grad-CAM refused for it alone
    ("custom_models:tiny_cnn", "ok"),  # a user's nn.Module, passed as the module itself
])
def test_explainer_on_other_architectures_equals_per_image_captum(arch, guided):
    """Through the API, on each kind of model: IG and Occlusion equal per-image Captum on the same inputs and targets,
    and Guided Grad-CAM runs or is refused with its reason while the other methods run."""
    from captum.attr import Occlusion as CaptumOcclusion

    from xcv_batch.models.classifier import build_classifier

    methods = {"integrated_gradients": {"n_steps": 8}, "occlusion": {"window": 8, "stride": 8}, "guided_gradcam": {}}
    photos = [os.path.join(os.path.dirname(__import__("skimage").data.__file__), name)
              for name in ("chelsea.png", "coffee.png")]
    if arch.startswith("custom_models:"):
        import custom_models

        torch.manual_seed(5)
        model = custom_models.tiny_cnn()
        reference = copy.deepcopy(model).eval()
        explainer = Explainer(model, methods=methods, sensitivity=None, resolution=32, seed=5)
    else:
        explainer = Explainer(arch, weights="none", resolution=32, methods=methods, sensitivity=None, seed=5)
        reference = build_classifier(arch, "none", 32, seed=5).net
    explained = explainer.explain(photos)

    rows = explained.rows
    assert set(rows[rows.method == "guided_gradcam"].status) == {guided}
    if guided == "error":
        assert rows[rows.method == "guided_gradcam"].error.str.contains("needs nn.ReLU activations").all()
    assert (rows[rows.method != "guided_gradcam"].status == "ok").all()
    for i, image_id in enumerate(explained.image_ids):
        x = explained.inputs[i: i + 1]
        target = int(rows[(rows.image_id == image_id) & (rows.method == "occlusion")].target.iloc[0])
        expected = {
            "integrated_gradients": CaptumIntegratedGradients(reference).attribute(
                x, target=target, n_steps=8, method="gausslegendre"),
            "occlusion": CaptumOcclusion(reference).attribute(
                x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0.0, target=target),
        }
        for method, reference_map in expected.items():
            ours = explained.maps[method][i].double()
            scale = reference_map.abs().max().item()
            assert scale > 0
            assert (ours - reference_map[0].double()).abs().max().item() / scale < 1e-4, (arch, image_id, method)


def test_label_targets_masks_and_mixed_inputs():
    """target='label' takes the labels; masks feed localisation; a PIL image beside a path keeps the path's row."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=5)
    photo = os.path.join(os.path.dirname(__import__("skimage").data.__file__), "coffee.png")
    explainer = Explainer(net, methods=["integrated_gradients"], sensitivity=None, target="label", resolution=32,
                          metrics={"localisation": True})
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = True
    explained = explainer.explain([Image.open(photo), photo], labels=torch.tensor([4, 1]), masks=[mask, mask])
    rows = explained.rows.sort_values("index")
    assert rows.target.tolist() == [4, 1] and rows.label.tolist() == [4, 1]
    assert rows.image_id.tolist() == ["image-0", photo]
    assert rows.image_path.isna().tolist() == [True, False] and rows.image_path.iloc[1] == photo
    # the same picture as a PIL image and as a file gives the same input, hence the same map
    torch.testing.assert_close(explained.inputs[0], explained.inputs[1])
    assert rows.pointing_game.notna().all() and rows.relevance_mass.between(0, 1).all()
    expected_mass = [float(m[0].sum(0).clamp(min=0)[mask].sum() / m[0].sum(0).clamp(min=0).sum())
                     for m in explained.maps["integrated_gradients"].split(1)]
    np.testing.assert_allclose(rows.relevance_mass.to_numpy(float), expected_mass, rtol=1e-5)

    with pytest.raises(ConfigError, match="^labels: target is 'label'"):
        explainer.explain([photo], masks=[mask])
    with pytest.raises(ConfigError, match=r"^labels: 7 is not a class of this model \(0 … 4\)"):
        explainer.explain([photo], labels=[7], masks=[mask])
    with pytest.raises(ConfigError, match="^masks: metrics.localisation is on"):
        explainer.explain([photo], labels=[1])
    with pytest.raises(ConfigError, match=r"^targets: must be one class index per image"):
        explainer.explain([photo], targets=torch.tensor([[1]]), masks=[mask])


def test_a_modules_settings_are_checked_against_its_own_input_size():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"^methods.occlusion.window: must be ≤ model.resolution \(32\)"):
        Explainer(net, methods={"occlusion": {"window": 40}}, resolution=32)
    explainer = Explainer(net, methods={"occlusion": {"window": 40}}, sensitivity=None, resolution=48)
    assert explainer.job.model.arch == "Sequential" and explainer.job.model.resolution == 48
    with pytest.raises(ConfigError, match="^weights: applies to a model name"):
        Explainer(net, methods=["occlusion"], weights="net.pt")
