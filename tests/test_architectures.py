"""Bring your own model: timm, torchvision beyond ResNet/VGG, and a ``package.module:callable`` factory, each end to
end through a real ``run`` (2 photos, random weights, offline), with Integrated Gradients and Occlusion equal to
per-image Captum on the same stored inputs and targets; Guided Grad-CAM refused where guided backprop does not apply.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import skimage
import timm  # the [timm] extra: the test extra installs it, so a missing timm fails here
import torch
import yaml
from captum.attr import IntegratedGradients, Occlusion

import custom_models
from xcv_batch import cli
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import ConfigError, MethodUnavailable, ModelError
from xcv_batch.methods.guided_gradcam import GuidedGradCam
from xcv_batch.methods.settings import GuidedGradCamSettings
from xcv_batch.models import timm_models
from xcv_batch.models.classifier import build_classifier, classifier_from_module, describe_weights
from xcv_batch.models.preprocessing import Preprocessing
from xcv_batch.output.results import open_results

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
RESOLUTION = 32
SEED = 4
OCCLUSION = {"window": 8, "stride": 8, "baseline": 0.0}
IG_STEPS = 8
JOB = {
    "name": "architectures",
    "seed": SEED,
    "model": {"weights": "none", "resolution": RESOLUTION},
    "methods": {"occlusion": OCCLUSION, "integrated_gradients": {"n_steps": IG_STEPS}, "guided_gradcam": {}},
    "sensitivity": None,
    "controls": False,  # the architectures' methods against Captum; the control maps have tests of their own
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16, "shard_size": 2},
}


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(os.path.join(SKIMAGE_DATA, name), folder / name)
    return folder


def write_job(folder, out_dir, arch: str, **model) -> str:
    job = yaml.safe_load(yaml.safe_dump(JOB))
    job["data"] = {"source": str(folder)}
    job["model"].update(arch=arch, **model)
    path = out_dir / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def run(folder, tmp_path, arch: str, **model):
    out = str(tmp_path / "out")
    run_job(load_job(write_job(folder, tmp_path, arch, **model), output=out), stream=open(os.devnull, "w"))
    return open_results(out)


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item()
    assert scale > 0, "the reference map is all zeros: the comparison would be vacuous"
    return (ours.double() - expected.double()).abs().max().item() / scale


def assert_ig_and_occlusion_match_captum(results, arch: str) -> None:
    """Per image: Captum on the stock network (same seed, so the same weights; not the run's BN-folded copy), on the
    normalised input the run stored, for the target the run chose."""
    reference = build_classifier(arch, "none", RESOLUTION, seed=SEED).net
    rows = results.rows()
    for image_id in results.image_ids:
        x = torch.from_numpy(results.model_input(image_id)).unsqueeze(0)
        target = int(rows[(rows.image_id == image_id) & (rows.method == "occlusion")].target.iloc[0])
        ig = IntegratedGradients(reference).attribute(x, target=target, n_steps=IG_STEPS, method="gausslegendre")
        occlusion = Occlusion(reference).attribute(
            x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0.0, target=target,
            perturbations_per_eval=64)
        for method, expected in (("integrated_gradients", ig), ("occlusion", occlusion)):
            ours = torch.from_numpy(results.attribution(image_id, method)).unsqueeze(0)
            assert relative_error(ours, expected) < 1e-4, (arch, image_id, method)


def statuses(results) -> dict[str, set[str]]:
    rows = results.rows()
    return {method: set(rows[rows.method == method].status) for method in rows.method.unique()}


# --- end to end, one architecture each -----------------------------------------------------------------------------


def test_timm_resnet18_runs_every_method_and_matches_captum(two_photos, tmp_path):
    results = run(two_photos, tmp_path, "timm:resnet18")
    assert statuses(results) == {"occlusion": {"ok"}, "integrated_gradients": {"ok"}, "guided_gradcam": {"ok"}}
    assert_ig_and_occlusion_match_captum(results, "timm:resnet18")
    # The stored preprocessing is timm's data config for resnet18 (crop_pct 0.95, bicubic), at 32 px.
    config = timm.data.resolve_model_data_config(timm.create_model("resnet18"))
    assert (config["crop_pct"], config["interpolation"]) == (0.95, "bicubic")
    stored = results.attrs["preprocessing"]
    assert stored["resize_size"] == int(RESOLUTION / 0.95) == 33 and stored["resolution"] == RESOLUTION
    assert stored["mean"] == pytest.approx(config["mean"]) and stored["std"] == pytest.approx(config["std"])


def test_efficientnet_runs_ig_and_occlusion_and_refuses_guided_gradcam(two_photos, tmp_path):
    results = run(two_photos, tmp_path, "efficientnet_b0")
    assert statuses(results) == {"occlusion": {"ok"}, "integrated_gradients": {"ok"}, "guided_gradcam": {"error"}}
    assert_ig_and_occlusion_match_captum(results, "efficientnet_b0")
    rows = results.rows()
    errors = set(rows[rows.method == "guided_gradcam"].error)
    assert errors == {"guided_gradcam: guided backprop needs nn.ReLU activations; efficientnet_b0 uses SiLU "
                      "(features.0.2)"}


def test_a_module_callable_factory_runs_every_method_and_matches_captum(two_photos, tmp_path):
    results = run(two_photos, tmp_path, "custom_models:tiny_cnn", categories=[f"class {i}" for i in range(5)])
    assert statuses(results) == {"occlusion": {"ok"}, "integrated_gradients": {"ok"}, "guided_gradcam": {"ok"}}
    assert_ig_and_occlusion_match_captum(results, "custom_models:tiny_cnn")
    assert results.categories == [f"class {i}" for i in range(5)]
    rows = results.rows()
    assert set(rows.target_name) == {f"class {t}" for t in rows.target}
    # Nothing in a factory says how to preprocess: ImageNet's, resize 256/224 of the resolution, bilinear.
    assert results.attrs["preprocessing"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                              "resize_size": round(RESOLUTION * 256 / 224), "resolution": RESOLUTION}


def test_convnext_runs_ig_and_occlusion_and_refuses_guided_gradcam(two_photos, tmp_path):
    results = run(two_photos, tmp_path, "convnext_tiny")
    assert statuses(results) == {"occlusion": {"ok"}, "integrated_gradients": {"ok"}, "guided_gradcam": {"error"}}
    assert_ig_and_occlusion_match_captum(results, "convnext_tiny")
    assert "convnext_tiny uses GELU" in set(results.rows().error.dropna()).pop()


# --- Guided Grad-CAM: where it runs, and which layer 'auto' takes -------------------------------------------------


@pytest.mark.parametrize("arch, layer", [
    ("timm:resnet18", "layer4"),  # ResNet-like
    ("vgg11", "features.19"),  # the ReLU after VGG's last conv, before the pool
    ("timm:vgg11", "features.19"),  # timm's VGG declares the pooled maps; the ReLU before them is taken
    ("custom_models:tiny_cnn", "5"),  # a plain Sequential: the ReLU after the last conv
])
def test_guided_gradcam_auto_layer_on_relu_networks(arch, layer):
    assert GuidedGradCam(build_classifier(arch, "none", RESOLUTION, seed=0), GuidedGradCamSettings()).layer_name \
        == layer


@pytest.mark.parametrize("arch, reason", [
    ("convnext_tiny", "convnext_tiny uses GELU (features.1.0.block.4)"),
    ("mobilenet_v2", "mobilenet_v2 uses ReLU6 (features.0.2)"),
    ("timm:efficientnet_b0", "timm:efficientnet_b0 uses SiLU (bn1.act)"),
    ("custom_models:functional_relu_cnn", "custom_models:functional_relu_cnn applies ReLU as a function, not an "
                                          "nn.ReLU module"),
])
def test_guided_gradcam_refuses_other_activations_and_leaves_the_network_alone(arch, reason):
    classifier = build_classifier(arch, "none", RESOLUTION, seed=0)
    before = [type(m) for m in classifier.net.modules()]
    with pytest.raises(MethodUnavailable) as info:
        GuidedGradCam(classifier, GuidedGradCamSettings())
    assert str(info.value) == f"guided_gradcam: guided backprop needs nn.ReLU activations; {reason}"
    assert [type(m) for m in classifier.net.modules()] == before


@pytest.mark.parametrize("arch, layer", [("efficientnet_b0", "features"), ("convnext_tiny", "features"),
                                         ("timm:convnext_atto", "stages.3"), ("timm:efficientnet_b0", "blocks.6")])
def test_auto_layer_is_the_last_convolutional_stage(arch, layer):
    from xcv_batch.models.layers import auto_target_layer

    assert auto_target_layer(build_classifier(arch, "none", RESOLUTION, seed=0).net, RESOLUTION) == layer


# --- weights, preprocessing and class names -------------------------------------------------------------------------


def test_timm_preprocessing_comes_from_its_data_config():
    classifier = build_classifier("timm:convnext_atto", "none", 64, seed=0)
    config = timm.data.resolve_model_data_config(classifier.net)
    assert config["crop_pct"] == 0.875 and config["interpolation"] == "bicubic"
    assert classifier.preprocessing == Preprocessing(73, 64, tuple(config["mean"]), tuple(config["std"]), "bicubic")
    assert describe_weights("timm:convnext_atto", "none", 64)[0] == classifier.preprocessing  # the driver's view
    # model.preprocessing overrides key by key
    chosen = build_classifier("timm:convnext_atto", "none", 64, seed=0,
                              preprocessing={"mean": [0.5, 0.5, 0.5], "interpolation": "bilinear"}).preprocessing
    assert chosen == Preprocessing(73, 64, (0.5, 0.5, 0.5), tuple(config["std"]), "bilinear")


@pytest.mark.parametrize("arch", ["timm:resnet18", "custom_models:tiny_cnn"])
def test_state_dict_round_trip(arch, tmp_path):
    trained = build_classifier(arch, "none", RESOLUTION, seed=11)
    path = tmp_path / "weights.pt"
    torch.save(trained.net.state_dict(), path)
    loaded = build_classifier(arch, str(path), RESOLUTION, seed=0)  # another seed: the file decides the weights
    for (name, a), (_, b) in zip(trained.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.weights == str(path)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(trained.net(x), loaded.net(x))


def test_timm_state_dict_with_another_head_sets_the_number_of_classes(tmp_path):
    path = tmp_path / "ten.pt"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    assert build_classifier("timm:resnet18", str(path), RESOLUTION, seed=0).num_classes == 10
    wrong = tmp_path / "wrong.pt"
    torch.save(custom_models.tiny_cnn().state_dict(), wrong)
    with pytest.raises(ModelError, match=r"^model.weights: .*wrong.pt does not fit timm:resnet18: "):
        build_classifier("timm:resnet18", str(wrong), RESOLUTION, seed=0)


def test_timm_pretrained_offline_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nCheck your connection.")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    monkeypatch.setattr(timm_models, "_unreachable", lambda host, port: None)  # the host answers, the fetch fails
    with pytest.raises(ModelError) as info:
        build_classifier("timm:resnet18", "pretrained", RESOLUTION, seed=0)
    message = str(info.value)
    assert message.startswith("model.weights: could not fetch timm's pretrained weights for resnet18 (OSError: "
                              "We couldn't connect to 'https://huggingface.co' to load this file.)")
    # called from Python (not the CLI): the hint names the job key, not a --set flag
    assert "set model.weights to 'none'" in message and "--set" not in message and "\n" not in message


def test_classifier_from_module_wraps_any_module():
    net = custom_models.tiny_cnn()
    classifier = classifier_from_module(net, preprocessing={"crop": 40, "resize": 48}, categories=list("abcde"),
                                        device="cpu", name="tiny")
    assert classifier.net is net and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert (classifier.num_classes, classifier.arch, classifier.category(1)) == (5, "tiny", "b")
    assert classifier.preprocessing == Preprocessing(48, 40, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ConfigError, match=r"^model.categories: 2 names for a model with 5 classes$"):
        classifier_from_module(custom_models.tiny_cnn(), categories=["a", "b"], device="cpu")
    with pytest.raises(ConfigError, match=r"^model.preprocessing.mean: must be three numbers"):
        classifier_from_module(custom_models.tiny_cnn(), preprocessing={"mean": [0.5]}, device="cpu")
    with pytest.raises(ModelError, match="expected a torch.nn.Module, got str"):
        classifier_from_module("resnet18")


# --- one-line errors through the CLI (exit code 2) -----------------------------------------------------------------


@pytest.mark.parametrize("model, message", [
    ({"arch": "no_such_package.models:net"},
     "model.arch: cannot import no_such_package.models for 'no_such_package.models:net': no module named "
     "no_such_package (is its folder on PYTHONPATH?)"),
    ({"arch": "custom_models:missing"},
     "model.arch: custom_models has no attribute missing (from 'custom_models:missing')"),
    ({"arch": "custom_models:NOT_CALLABLE"},
     "model.arch: 'custom_models:NOT_CALLABLE' is a int, not a callable returning an nn.Module"),
    ({"arch": "custom_models:not_a_module"},
     "model.arch: custom_models:not_a_module() returned a str, not a torch.nn.Module"),
    ({"arch": "custom_models:raises"},
     "model.arch: custom_models:raises() raised RuntimeError: the factory could not find its config"),
    ({"arch": "custom_models:tiny_cnn", "weights": "IMAGENET1K_V1"},
     "model.weights: 'IMAGENET1K_V1' is neither 'none' nor an existing state_dict file, for custom_models:tiny_cnn"),
    ({"arch": "custom_models:tiny_cnn", "categories": ["a", "b", "c"]},
     "model.categories: 3 names for a model with 5 classes"),
    ({"arch": "custom_models:tiny_cnn", "preprocessing": {"mean": [0.5, 0.5]}},
     "model.preprocessing.mean: must be three numbers (red, green, blue), got [0.5, 0.5]"),
    ({"arch": "custom_models:tiny_cnn", "preprocessing": {"scale": 2}},
     "model.preprocessing.scale: unknown key; allowed here: crop, interpolation, mean, resize, std"),
    ({"arch": "custom_models:tiny_cnn", "preprocessing": {"resize": 24}},
     "model.preprocessing.resize: must be ≥ the crop (32): the crop is taken from the resized image, got 24"),
    ({"arch": "timm:no_such_model"},
     "model.arch: 'timm:no_such_model' is not a timm model (timm.list_models() names them, e.g. timm:resnet18)"),
])
def test_bad_models_are_one_line_errors_with_exit_code_2(model, message, two_photos, tmp_path, capsys):
    path = write_job(two_photos, tmp_path, **{"arch": "resnet18", **model})
    assert cli.main(["run", path, "--out", str(tmp_path / "out")]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err_lines == [f"error: {message}"]


def test_timm_not_installed_says_how_to_install_it(two_photos, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "timm", None)  # ``import timm`` now raises ImportError, as when not installed
    path = write_job(two_photos, tmp_path, "timm:resnet18")
    assert cli.main(["run", path, "--out", str(tmp_path / "out")]) == 2
    assert "error: model.arch: timm models need the timm package: pip install xcv_batch[timm]" in capsys.readouterr().err


def test_the_new_model_keys_are_fingerprinted_and_leave_older_jobs_hash_alone():
    from xcv_batch.config import job_from_mapping

    base = {"methods": {"occlusion": {}}, "model": {"arch": "custom_models:tiny_cnn", "weights": "none"}}
    plain = job_from_mapping(base)
    assert "preprocessing" not in plain.fingerprint_fields()["model"]  # as before the key existed
    with_mean = job_from_mapping({**base, "model": {**base["model"], "preprocessing": {"mean": [0.5, 0.5, 0.5]}}})
    assert with_mean.fingerprint_fields()["model"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    named = job_from_mapping({**base, "model": {**base["model"], "categories": list("abcde")}})
    assert len({plain.fingerprint(), with_mean.fingerprint(), named.fingerprint()}) == 3
