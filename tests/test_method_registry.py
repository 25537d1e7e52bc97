"""One registration per attribution method: a method registered from this file alone validates in a job, gets its
passes in the plan, a label, and runs through ``build_method``; unregistered, it is gone again."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import test_methods_captum as captum_tests  # its tests are called for the toy method, not collected twice
from test_methods_captum import linear_classifier, resnet, small_cnn  # noqa: F401 - fixtures
from xcv_batch.config import job_from_mapping
from xcv_batch.driver import run_job
from xcv_batch.output.results import open_results
from xcv_batch.report.summarize import summarize
from xcv_batch.errors import ConfigError
from xcv_batch.methods import MethodSpec, build_method, method_class, method_names, method_spec, registered
from xcv_batch.methods.base import AttributionMethod
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.plan import Passes, method_passes
from xcv_batch.report.labels import METHOD_LABELS, method_label


@dataclass(frozen=True)
class ScaledGradInputSettings:
    """∂f/∂x ⊙ x, optionally its absolute value."""

    absolute: bool = False
    scale: float = 1.0

    def check(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale", f"must be > 0, got {self.scale}")


class ScaledGradInput(AttributionMethod):
    def attribute(self, inputs, targets, seeds):
        images = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self.classifier.net(images).gather(1, targets.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, images)
        result = gradient * inputs * self.settings.scale
        return (result.abs() if self.settings.absolute else result).float()


def scaled_grad_input_reference(net, x, target: int, settings):
    """The toy method's oracle: one image, autograd on the stock network."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(net(x)[0, target], x)
    result = gradient * x.detach() * settings.scale
    return result.abs() if settings.absolute else result


SPEC = MethodSpec(
    name="scaled_grad_input", settings=ScaledGradInputSettings, label="Scaled gradient × input",
    passes=lambda settings, height, width: Passes(forward_backward=1),
    implementation=f"{__name__}:ScaledGradInput", differentiates=True,
    oracle=f"{__name__}:scaled_grad_input_reference",
)

JOB = {
    "name": "registry", "seed": 0, "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}, "scaled_grad_input": {"absolute": True}},
    "sensitivity": {"n_perturb_samples": 2, "perturb_radius": 0.02},
}



def test_a_method_registered_from_a_test_file_validates_plans_labels_and_runs():
    with registered(SPEC):
        assert method_names()[-1] == "scaled_grad_input" and method_spec("scaled_grad_input") is SPEC
        assert METHOD_SETTINGS["scaled_grad_input"] is ScaledGradInputSettings

        job = job_from_mapping(JOB)  # config: known, its settings built and checked
        assert job.methods["scaled_grad_input"] == ScaledGradInputSettings(absolute=True)
        with pytest.raises(ConfigError, match=r"^methods\.scaled_grad_input\.scale: must be > 0, got -1"):
            job_from_mapping({**JOB, "methods": {"scaled_grad_input": {"scale": -1}}})
        with pytest.raises(ConfigError, match=r"methods\.scaled_grad_input\.nope"):
            job_from_mapping({**JOB, "methods": {"scaled_grad_input": {"nope": 1}}})

        passes = method_passes(job)  # plan: one forward+backward per image, times 1 + 2 sensitivity copies
        assert passes["scaled_grad_input"] == Passes(forward_backward=3)
        assert passes["occlusion"] == Passes(forward=(4 * 4 + 1) * 3)

        assert method_label("scaled_grad_input") == METHOD_LABELS["scaled_grad_input"] == "Scaled gradient × input"

        weight = torch.randn(2, 3 * 4 * 4, generator=torch.Generator().manual_seed(0))
        method = build_method("scaled_grad_input", linear_classifier(4, weight), job.methods["scaled_grad_input"], 8)
        assert method_class("scaled_grad_input") is ScaledGradInput
        assert (method.name, method.settings_type, method.differentiates, method.stochastic) == (
            "scaled_grad_input", ScaledGradInputSettings, True, False)
        inputs = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        targets = torch.tensor([0, 1])
        result = method.attribute(inputs, targets, [0, 0])
        expected = (weight[targets].view(2, 3, 4, 4) * inputs).abs()
        torch.testing.assert_close(result, expected)

    assert "scaled_grad_input" not in method_names() and "scaled_grad_input" not in METHOD_SETTINGS
    assert method_label("scaled_grad_input") == "scaled_grad_input"
    with pytest.raises(ConfigError, match=r"^methods\.scaled_grad_input: unknown method; one of: occlusion, "):
        job_from_mapping(JOB)


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="'lime' is already registered"):
        with registered(MethodSpec(name="lime", settings=ScaledGradInputSettings, label="x",
                                   passes=lambda s, h, w: Passes(), implementation=f"{__name__}:ScaledGradInput")):
            pass
    assert method_spec("lime").label == "LIME"


def test_every_registered_method_has_a_label_settings_defaults_and_passes():
    for spec in map(method_spec, method_names()):
        settings = spec.settings()
        if hasattr(settings, "check"):
            settings.check()
        passes = spec.passes(settings, 224, 224)
        assert isinstance(passes, Passes) and (passes.rows > 0) != spec.control  # a control map runs no model
        assert (passes.forward_backward > 0) == spec.differentiates, spec.name
        assert METHOD_LABELS[spec.name] == spec.label
        cls = method_class(spec.name)
        assert issubclass(cls, AttributionMethod) and cls.name == spec.name and cls.settings_type is spec.settings


def test_a_registered_method_gets_the_registry_parametrised_tests_without_editing_them(resnet, small_cnn):
    """What the oracle, invariance and seed tests of test_methods_captum.py run for every registered method, run for
    the toy one: equal to its oracle, independent of forward batch and batch mates, seeds ignored (deterministic)."""
    settings = ScaledGradInputSettings(absolute=True, scale=2.0)
    with registered(SPEC):
        captum_tests.assert_matches_its_oracle("scaled_grad_input", resnet, settings)
        captum_tests.test_result_does_not_depend_on_forward_batch_or_batch_mates("scaled_grad_input", small_cnn)
        captum_tests.test_seeds_change_the_map_exactly_when_the_method_is_registered_stochastic(
            "scaled_grad_input", small_cnn)


def test_a_registered_method_gets_rows_and_ranks_in_a_run(tmp_path):
    """The toy method through a real run: its rows, its maps in the Zarr store, and its place in the ranking."""
    with registered(SPEC):
        job = job_from_mapping({
            **JOB, "data": {"source": "builtin:skimage", "limit": 2},
            "compute": {"workers": 1, "batch_size": 2, "shard_size": 2},
            "output": {"path": str(tmp_path / "out")},
        })
        run_job(job, stream=open(os.devnull, "w"))
        results = open_results(job.output.path)
        rows = results.rows()
        toy = rows[rows.method == "scaled_grad_input"]
        assert len(toy) == 2 and (toy.status == "ok").all() and toy.sensitivity_max.notna().all()
        for row in toy.itertuples():
            attribution = results.attribution(row.image_id, "scaled_grad_input")
            assert attribution.shape == (3, 32, 32) and (attribution >= 0).all()  # absolute: True
        summary = summarize(job.output.path, n_boot=50)
        ranks = {m: summary.methods[m].ranks["sensitivity_max"].mean_rank for m in ("occlusion", "scaled_grad_input")}
        by_image = rows.pivot(index="image_id", columns="method", values="sensitivity_max")
        expected = float(np.mean([1.0 if by_image.loc[i, "scaled_grad_input"] < by_image.loc[i, "occlusion"] else 2.0
                                  for i in by_image.index]))
        assert ranks["scaled_grad_input"] == expected and ranks["occlusion"] == 3.0 - expected
