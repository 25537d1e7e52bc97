"""One registration per attribution method: a method registered from this file alone validates in a job, gets its
passes in the plan, a label, and runs through ``build_method``; unregistered, it is gone again."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from test_methods_captum import linear_classifier
from xcv_batch.config import job_from_mapping
from xcv_batch.errors import ConfigError
from xcv_batch.methods import MethodSpec, build_method, method_class, method_names, method_spec, registered
from xcv_batch.methods.base import AttributionMethod
from xcv_batch.methods.settings import METHOD_SETTINGS
from xcv_batch.driver.plan import Passes, method_passes
from xcv_batch.output.results import METHOD_LABELS, method_label


@dataclass(frozen=True)
class GradientTimesInputSettings:
    """∂f/∂x ⊙ x, optionally its absolute value."""

    absolute: bool = False
    scale: float = 1.0

    def check(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale", f"must be > 0, got {self.scale}")


class GradientTimesInput(AttributionMethod):
    def attribute(self, inputs, targets, seeds):
        images = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self.classifier.net(images).gather(1, targets.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, images)
        result = gradient * inputs * self.settings.scale
        return (result.abs() if self.settings.absolute else result).float()


SPEC = MethodSpec(
    name="gradient_x_input", settings=GradientTimesInputSettings, label="Gradient × Input",
    passes=lambda settings, height, width: Passes(forward_backward=1),
    implementation=f"{__name__}:GradientTimesInput", differentiates=True,
)

JOB = {
    "name": "registry", "seed": 0, "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}, "gradient_x_input": {"absolute": True}},
    "sensitivity": {"n_perturb_samples": 2, "perturb_radius": 0.02},
}



def test_a_method_registered_from_a_test_file_validates_plans_labels_and_runs():
    with registered(SPEC):
        assert method_names()[-1] == "gradient_x_input" and method_spec("gradient_x_input") is SPEC
        assert METHOD_SETTINGS["gradient_x_input"] is GradientTimesInputSettings

        job = job_from_mapping(JOB)  # config: known, its settings built and checked
        assert job.methods["gradient_x_input"] == GradientTimesInputSettings(absolute=True)
        with pytest.raises(ConfigError, match=r"^methods\.gradient_x_input\.scale: must be > 0, got -1"):
            job_from_mapping({**JOB, "methods": {"gradient_x_input": {"scale": -1}}})
        with pytest.raises(ConfigError, match=r"methods\.gradient_x_input\.nope"):
            job_from_mapping({**JOB, "methods": {"gradient_x_input": {"nope": 1}}})

        passes = method_passes(job)  # plan: one forward+backward per image, times 1 + 2 sensitivity copies
        assert passes["gradient_x_input"] == Passes(forward_backward=3)
        assert passes["occlusion"] == Passes(forward=(4 * 4 + 1) * 3)

        assert method_label("gradient_x_input") == METHOD_LABELS["gradient_x_input"] == "Gradient × Input"

        weight = torch.randn(2, 3 * 4 * 4, generator=torch.Generator().manual_seed(0))
        method = build_method("gradient_x_input", linear_classifier(4, weight), job.methods["gradient_x_input"], 8)
        assert method_class("gradient_x_input") is GradientTimesInput
        assert (method.name, method.settings_type, method.differentiates, method.stochastic) == (
            "gradient_x_input", GradientTimesInputSettings, True, False)
        inputs = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        targets = torch.tensor([0, 1])
        result = method.attribute(inputs, targets, [0, 0])
        expected = (weight[targets].view(2, 3, 4, 4) * inputs).abs()
        torch.testing.assert_close(result, expected)

    assert "gradient_x_input" not in method_names() and "gradient_x_input" not in METHOD_SETTINGS
    assert method_label("gradient_x_input") == "gradient_x_input"
    with pytest.raises(ConfigError, match=r"^methods\.gradient_x_input: unknown method; one of: occlusion, "):
        job_from_mapping(JOB)


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="'lime' is already registered"):
        with registered(MethodSpec(name="lime", settings=GradientTimesInputSettings, label="x",
                                   passes=lambda s, h, w: Passes(), implementation=f"{__name__}:GradientTimesInput")):
            pass
    assert method_spec("lime").label == "LIME"


def test_every_registered_method_has_a_label_settings_defaults_and_passes():
    for spec in map(method_spec, method_names()):
        settings = spec.settings()
        if hasattr(settings, "check"):
            settings.check()
        passes = spec.passes(settings, 224, 224)
        assert isinstance(passes, Passes) and passes.rows > 0
        assert (passes.forward_backward > 0) == spec.differentiates, spec.name
        assert METHOD_LABELS[spec.name] == spec.label
        cls = method_class(spec.name)
        assert issubclass(cls, AttributionMethod) and cls.name == spec.name and cls.settings_type is spec.settings
