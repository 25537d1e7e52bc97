"""Building classifiers: torchvision architectures, the three kinds of weights, switchable ReLUs, Grad-CAM's layer."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from xcv_batch.errors import ConfigError, ModelError
from xcv_batch.methods.guided_gradcam import GuidedGradCam
from xcv_batch.methods.settings import GuidedGradCamSettings
from xcv_batch.methods.guided_backprop import GuidedBackpropSwitch, SwitchableReLU
from xcv_batch.models.classifier import build_classifier, describe_weights


@pytest.mark.parametrize(
    "arch, layer", [("resnet18", "layer4"), ("resnet34", "layer4"), ("resnet50", "layer4"), ("vgg19", "features.35")]
)
def test_guided_gradcam_makes_every_relu_of_its_network_switchable(arch, layer):
    classifier = build_classifier(arch, "none", 32, seed=0)
    reference = torchvision.models.get_model(arch)
    n_relus = sum(isinstance(m, nn.ReLU) for m in reference.modules())
    # The classifier itself carries nothing method-specific: plain ReLUs until Guided Grad-CAM is built on it.
    assert not any(isinstance(m, SwitchableReLU) for m in classifier.net.modules())
    method = GuidedGradCam(classifier, GuidedGradCamSettings())
    assert method.layer_name == layer
    modules = list(classifier.net.modules())
    assert sum(isinstance(m, SwitchableReLU) for m in modules) == n_relus > 0
    assert not any(type(m) is nn.ReLU for m in modules)
    assert all(m.switch is method.switch for m in modules if isinstance(m, SwitchableReLU))
    # a second Guided Grad-CAM on the same network drives the same modules
    assert GuidedGradCam(classifier, GuidedGradCamSettings()).switch is method.switch
    assert not classifier.net.training
    assert classifier.num_classes == 1000
    # in-place ReLUs keep their in-place fast path when no gradient is needed
    assert any(m.inplace for m in modules if isinstance(m, SwitchableReLU))


def test_switchable_relu_is_relu_until_guided():
    switch = GuidedBackpropSwitch()
    relu = SwitchableReLU(switch)
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    upstream = torch.tensor([3.0, -4.0, 5.0])
    (plain,) = torch.autograd.grad(relu(x), x, upstream)
    assert plain.tolist() == [0.0, -4.0, 5.0]  # ordinary ReLU gradient
    with switch.enabled():
        (guided,) = torch.autograd.grad(relu(x), x, upstream)
    assert guided.tolist() == [0.0, 0.0, 5.0]  # negative gradients stopped too
    assert switch.guided is False


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_classifier("resnet18", "none", 32, seed=7)
    after = torch.rand(1)
    b = build_classifier("resnet18", "none", 32, seed=7)
    c = build_classifier("resnet18", "none", 32, seed=8)
    assert torch.equal(before, after)
    assert torch.equal(a.net.conv1.weight, b.net.conv1.weight)
    assert not torch.equal(a.net.conv1.weight, c.net.conv1.weight)


def test_state_dict_file_loads_and_infers_the_number_of_classes(tmp_path):
    source = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    classifier = build_classifier("resnet18", str(path), 32, seed=0, categories=[f"c{i}" for i in range(7)])
    assert classifier.num_classes == 7
    assert torch.equal(classifier.net.fc.weight, source.fc.weight)
    assert classifier.category(3) == "c3" and classifier.category(9) is None


def test_mismatched_or_unsafe_state_dicts_are_clear_errors(tmp_path):
    wrong = tmp_path / "vgg.pt"
    torch.save(torchvision.models.vgg11().state_dict(), wrong)
    with pytest.raises(ModelError, match="does not fit resnet18"):
        build_classifier("resnet18", str(wrong), 32, seed=0)
    pickled = tmp_path / "object.pt"
    torch.save({"model": nn.Linear(2, 2)}, pickled)  # a pickled module: refused by weights_only=True
    with pytest.raises(ModelError, match="holds pickled Python objects"):
        build_classifier("resnet18", str(pickled), 32, seed=0)


def test_unknown_names_list_what_is_allowed():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1") as info:
        build_classifier("resnet18", "IMAGENET_BEST", 32, seed=0)
    assert info.value.key == "model.weights"
    with pytest.raises(ConfigError) as info:
        build_classifier("resnet17", "none", 32, seed=0)
    assert info.value.key == "model.arch"
    with pytest.raises(ConfigError, match="layer4") as info:
        GuidedGradCam(build_classifier("resnet18", "none", 32, seed=0), GuidedGradCamSettings(layer="layer9"))
    assert info.value.key == "methods.guided_gradcam.layer"
    assert str(info.value).startswith("methods.guided_gradcam.layer: 'layer9' is not a layer of resnet18; one of: ")
    with pytest.raises(ConfigError) as info:  # a layer whose output is not (N, C, h, w) maps
        GuidedGradCam(build_classifier("resnet18", "none", 32, seed=0), GuidedGradCamSettings(layer="fc"))
    assert str(info.value) == ("methods.guided_gradcam.layer: fc gives (1, 1000), not the (batch, channels, height, "
                               "width) maps Grad-CAM weighs; name a convolutional block")


def test_offline_weight_download_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    import torchvision.models._api as weights_api

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)  # as if there were no network
    with pytest.raises(ModelError) as info:
        build_classifier("resnet18", "IMAGENET1K_V1", 32, seed=0)
    message = str(info.value)
    # called from Python (not the CLI): the hint names the job key, not a --set flag
    assert "set model.weights to 'none'" in message and "state_dict" in message and "\n" not in message
    assert "--set" not in message


def test_preprocessing_and_class_names_come_from_the_weights():
    preprocessing, categories = describe_weights("resnet18", "IMAGENET1K_V1", 224)
    assert (preprocessing.resize_size, preprocessing.crop_size) == (256, 224)
    assert preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    assert len(categories) == 1000 and categories[207] == "golden retriever"
    scaled, _ = describe_weights("resnet50", "IMAGENET1K_V2", 64)
    assert (scaled.resize_size, scaled.crop_size) == (round(64 * 232 / 224), 64)  # V2's own 232/224 ratio
    assert describe_weights("resnet18", "none", 64)[1] is None
