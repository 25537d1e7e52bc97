"""The notebook API speaks Python: ``targets`` as an int or a sequence (and ``target=`` as Captum spells it), one
warning for inputs that look like 0–255 pixels, errors that name the argument (the CLI's flags only on the command
line), right hints for odd models, torch tensors throughout, a short repr, a progress bar, and ``run``'s closing
line."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from torch import nn

import xcv_batch
from xcv_batch.api import Explainer
from xcv_batch.config import job_from_mapping
from xcv_batch.errors import ConfigError, ModelError, OutputError, called_from_cli
from xcv_batch.execution import tally as tally_module
from xcv_batch.models.classifier import build_classifier, classifier_from_module
from xcv_batch.output.outdir import check_out

RESOLUTION = 16


def tiny_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(tiny_net(), methods={"integrated_gradients": {"n_steps": 4}}, sensitivity=None,
                     resolution=RESOLUTION)


def inputs(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))


# --- targets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [2, torch.tensor(2), [2, 2], (2, 2), torch.tensor([2, 2])])
def test_targets_take_one_int_for_every_image_or_one_per_image(explainer, given):
    explained = explainer.explain(inputs(), targets=given)
    assert explained.rows.target.tolist() == [2, 2]


def test_target_is_captums_spelling_of_the_same_argument(explainer):
    by_target = explainer.explain(inputs(), target=1)
    by_targets = explainer.explain(inputs(), targets=[1, 1])
    assert by_target.rows.target.tolist() == [1, 1]
    torch.testing.assert_close(by_target.maps["integrated_gradients"], by_targets.maps["integrated_gradients"])
    with pytest.raises(ConfigError, match=r"^target: give targets or target") as both:
        explainer.explain(inputs(), targets=1, target=1)
    assert both.value.key == "target"
    with pytest.raises(ConfigError, match=r"^target: need one per image \(2\), got 3"):
        explainer.explain(inputs(), target=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"^targets: must be a class index \(an int\) or one per image"):
        explainer.explain(inputs(), targets=1.5)
    with pytest.raises(ConfigError, match=r"^target: 7 is not a class of this model \(0 … 2\)"):
        explainer.explain(inputs(), target=7)


# --- unnormalised inputs ------------------------------------------------------------------------------------------


def test_inputs_that_look_like_raw_pixels_warn_once_per_explainer():
    explainer = Explainer(tiny_net(), methods={"integrated_gradients": {"n_steps": 2}}, sensitivity=None,
                          resolution=RESOLUTION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer.explain(inputs())  # normalised: nothing to say
        assert caught == []
        raw = (torch.rand(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(2)) * 255)
        explainer.explain(raw.to(torch.uint8))
        explainer.explain(raw)  # again, as floats: said once already
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("inputs is uint8: it looks like 0–255 pixels")
    other = Explainer(tiny_net(), methods={"integrated_gradients": {"n_steps": 2}}, sensitivity=None,
                      resolution=RESOLUTION)
    with pytest.warns(UserWarning, match=r"inputs has values up to 25\d\.?\d*, far beyond ±2\.6"):
        other.explain(raw)


# --- errors name the argument -----------------------------------------------------------------------------------


def test_overrides_errors_name_the_argument_in_python_and_the_flag_on_the_command_line():
    with pytest.raises(ConfigError, match=r"^overrides: expects KEY=VALUE, got 'seed'") as caught:
        xcv_batch.run({"data": {"source": "builtin:skimage"}}, overrides=["seed"])
    assert "--set" not in str(caught.value)
    with called_from_cli(), pytest.raises(ConfigError, match=r"^--set: expects KEY=VALUE"):
        xcv_batch.run({"data": {"source": "builtin:skimage"}}, overrides=["seed"])


def test_an_occupied_out_names_out_and_resume_as_python_spells_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = job_from_mapping({"methods": {"integrated_gradients": {}}, "output": {"path": str(out)}})
    (out / "job.yaml").write_text(yaml.safe_dump({"fingerprint": job.fingerprint()}))
    with pytest.raises(OutputError) as python:
        check_out(str(out), job, resume=False)
    assert str(python.value) == f"{out} already holds a run; pass resume=True to finish it, or choose another out"
    with called_from_cli(), pytest.raises(OutputError) as cli:
        check_out(str(out), job, resume=False)
    assert str(cli.value) == f"{out} already holds a run; pass --resume to finish it, or choose another --out"


def test_plot_names_its_path_argument(explainer, tmp_path):
    explained = explainer.explain(inputs(1))
    with pytest.raises(ConfigError, match=r"^path: .*panel\.nope has '\.nope'; the extension picks the format"):
        explained.plot(0, str(tmp_path / "panel.nope"))


# --- hints for odd models ---------------------------------------------------------------------------------------


def test_a_one_channel_model_is_told_about_channels_not_the_resolution():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError) as caught:
        classifier_from_module(net, {"crop": RESOLUTION})
    message = str(caught.value)
    assert message.startswith("model.arch: Sequential takes 1-channel inputs (")
    assert "RGB images, (N, 3, H, W)" in message and "resolution" not in message and "\n" not in message


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_net()

    def forward(self, x):
        return {"logits": self.inner(x), "features": x.mean()}


def test_a_model_returning_a_dict_is_told_its_keys():
    with pytest.raises(ModelError) as caught:
        classifier_from_module(DictModel(), {"crop": RESOLUTION})
    assert str(caught.value) == ("model.arch: DictModel returns a dict with keys 'logits', 'features', not (batch, "
                                 "classes) logits; wrap it in a module whose forward returns that tensor alone")


def test_a_wrong_weights_name_lists_default_once():
    with pytest.raises(ConfigError) as caught:
        build_classifier("resnet18", "IMAGENET9K", RESOLUTION, seed=0)
    message = str(caught.value)
    assert message.count("DEFAULT") == 1 and "(DEFAULT, IMAGENET1K_V1)" in message


# --- one array type, a short repr, progress ---------------------------------------------------------------------


def test_maps_and_images_are_torch_tensors_throughout(explainer):
    explained = explainer.explain(inputs(), targets=[0, 1], image_ids=["a", "b"])
    attribution = explained.attribution("b", "integrated_gradients")
    assert isinstance(attribution, torch.Tensor) and attribution.dtype == torch.float32
    assert torch.equal(attribution, explained.maps["integrated_gradients"][1])
    image = explained.input_image(0)
    assert isinstance(image, torch.Tensor) and image.shape == (RESOLUTION, RESOLUTION, 3)
    assert 0 <= float(image.min()) and float(image.max()) <= 1


def test_the_repr_is_one_short_line(explainer):
    explained = explainer.explain(inputs(), targets=[0, 1])
    text = repr(explained)
    assert text == ("Explanation(2 images × 1 methods (integrated_gradients), maps (3, 16, 16) each, 2 rows, "
                    "0 failed)")


def test_progress_moves_within_a_method_and_ends_full(monkeypatch, capsys):
    monkeypatch.setattr(tally_module, "HEARTBEAT_S", 0.0)  # every forward reported
    explainer = Explainer(tiny_net(), methods={"occlusion": {"window": 4, "stride": 4, "incremental": False}},
                          sensitivity=None, resolution=RESOLUTION, forward_batch=4)
    from xcv_batch import api

    seen = []
    original = api._ProgressBar._advance
    monkeypatch.setattr(api._ProgressBar, "_advance",
                        lambda self, work, method: (seen.append((work, self.bar.n)), original(self, work, method)))
    explainer.explain(inputs(), progress=True)
    # 2 images × (16 windows + 1) rows, 4 a forward: many steps within the one method's call, none backwards
    assert len(seen) >= 8 and all(work >= 0 for work, _ in seen)
    err = capsys.readouterr().err
    assert "explaining" in err and "100%" in err and "/34 " in err  # 34 forward-equivalents in all


def test_run_prints_the_clis_closing_line(tmp_path, capsys):
    job = {"name": "api-done", "data": {"source": "builtin:skimage", "limit": 1},
           "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
           "methods": {"integrated_gradients": {"n_steps": 2}}, "sensitivity": None, "controls": False,
           "compute": {"workers": 1, "device": "cpu"}}
    results = xcv_batch.run(job, out=str(tmp_path / "out"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("done: 1 images (1 processed), 0 failed, in ")
    assert printed[-1].endswith(f" s → {tmp_path / 'out'}") and len(results.rows()) == 1
