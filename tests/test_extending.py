"""The docs' "Extending" recipes, followed verbatim: the method and the metric below are the recipes' code blocks as
they stand (only their ``module:Name`` references name this module instead of xcv_batch.methods / .metrics).
Registered from here, each gets the registry's tests for free and rows in a real tiny run. When the recipe text
changes, change this file with it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import test_methods_captum as captum_tests  # its tests are called for the recipe's method, not collected twice
import test_metric_registry_contract as metric_contract
from test_methods_captum import resnet, small_cnn  # noqa: F401 - fixtures
from xcv_batch.config import job_from_mapping
from xcv_batch.driver import run_job
from xcv_batch.errors import ConfigError
from xcv_batch.methods import registered as method_registered
from xcv_batch.methods.base import AttributionMethod, chunk_slices, target_outputs
from xcv_batch.methods.registry import MethodSpec, Passes
from xcv_batch.metrics.base import Evaluation, MapBatch, Metric
from xcv_batch.metrics.registry import MetricInfo, MetricSpec
from xcv_batch.metrics.registry import registered as metric_registered
from xcv_batch.output.results import open_results
from xcv_batch.report.panel import is_signed, panel_figure
from xcv_batch.report.summarize import summarize


# --- the method recipe: the registration (xcv_batch/methods/settings.py) ------------------------------------------
@dataclass(frozen=True)
class GradientTimesInputSettings:
    """∂f/∂x ⊙ x: the gradient of the target's logit times the input."""

    absolute: bool = False  # draw and store |∂f/∂x ⊙ x| instead of the signed product


METHOD = MethodSpec(
    name="gradient_x_input",                # the key under methods: and the rows' method column
    settings=GradientTimesInputSettings,
    label="Gradient × Input",               # shown by summarize, report and panels
    passes=lambda s, height, width: Passes(forward_backward=1),  # model passes per image
    implementation=f"{__name__}:GradientTimesInput",
    differentiates=True,                    # its passes take gradients of the model
    oracle=f"{__name__}:gradient_x_input_reference",
    signed=lambda s: not s.get("absolute", False),               # a panel draws signed maps diverging around 0
)


# --- the method recipe: the new file (xcv_batch/methods/gradient_x_input.py) --------------------------------------
class GradientTimesInput(AttributionMethod):
    def attribute(self, inputs, targets, seeds):
        result = torch.empty_like(inputs, dtype=torch.float32)
        for chunk in chunk_slices(inputs.shape[0], self.forward_batch):
            images = inputs[chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                score = target_outputs(self.classifier.net(images), targets[chunk]).sum()
                (gradient,) = torch.autograd.grad(score, images)
            product = gradient * inputs[chunk]
            result[chunk] = (product.abs() if self.settings.absolute else product).float()
        return result


def gradient_x_input_reference(net, x, target, settings):
    """One (1, C, H, W) image on the stock network, plain autograd: what the batched method must equal."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(net(x)[0, target], x)
    product = gradient * x.detach()
    return product.abs() if settings.absolute else product


# --- the metric recipe: the registration (xcv_batch/metrics/settings.py) ------------------------------------------
@dataclass(frozen=True)
class MapNormSettings:
    """The L1 norm of each map, times ``scale``: a map that says less scores lower."""

    scale: float = 1.0  # a factor on the norm

    def check(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale", f"must be > 0, got {self.scale}")


METRIC = MetricSpec(
    name="map_norm",                        # the key under metrics:, and its cost column map_norm_seconds
    settings=MapNormSettings,
    columns=(MetricInfo("map_l1", "lower", "Map L1 norm", family="complexity"),),  # column, better, label, family
    implementation=f"{__name__}:MapNorm",
)


# --- the metric recipe: the new file (xcv_batch/metrics/map_norm.py) ----------------------------------------------
class MapNorm(Metric):
    def evaluate(self, batch: MapBatch) -> Evaluation:
        return Evaluation({"map_l1": self.settings.scale * batch.attributions.double().abs().flatten(1).sum(1)})


# --- what the recipes promise ------------------------------------------------------------------------------------
def test_the_recipes_method_passes_the_method_registrys_tests(resnet, small_cnn):
    with method_registered(METHOD):
        for settings in (GradientTimesInputSettings(), GradientTimesInputSettings(absolute=True)):
            captum_tests.assert_matches_its_oracle("gradient_x_input", resnet, settings)
        captum_tests.test_result_does_not_depend_on_forward_batch_or_batch_mates("gradient_x_input", small_cnn)
        captum_tests.test_seeds_change_the_map_exactly_when_the_method_is_registered_stochastic(
            "gradient_x_input", small_cnn)
        assert is_signed("gradient_x_input", {}) is True
        assert is_signed("gradient_x_input", {"absolute": True}) is False


@pytest.mark.parametrize("method", [metric_contract.GOOD, metric_contract.BAD], ids=["evidence", "noise"])
def test_the_recipes_metric_passes_the_metric_contract(method):
    with metric_registered(METRIC), method_registered(metric_contract.NOISE):
        metric_contract.test_values_do_not_depend_on_forward_batch_or_batch_mates("map_norm", method)
        metric_contract.test_the_true_evidence_scores_better_than_noise_in_every_column("map_norm")


def test_the_recipes_method_and_metric_get_rows_ranks_and_a_panel_in_a_run(tmp_path):
    with method_registered(METHOD), metric_registered(METRIC):
        base = {
            "name": "extending", "seed": 0, "data": {"source": "builtin:skimage", "limit": 2},
            "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
            "methods": {"occlusion": {"window": 16, "stride": 16}, "gradient_x_input": {}}, "controls": False,
            "sensitivity": None,
            "compute": {"workers": 1, "batch_size": 2, "shard_size": 2},
            "output": {"path": str(tmp_path / "out")},
        }
        with pytest.raises(ConfigError, match=r"^metrics\.map_norm\.scale: must be > 0, got 0"):
            job_from_mapping({**base, "metrics": {"map_norm": {"scale": 0}}})
        job = job_from_mapping({**base, "metrics": {"map_norm": {"scale": 2}}})
        run_job(job, stream=open(os.devnull, "w"))

        results = open_results(job.output.path)
        rows = results.rows()
        assert sorted(rows.method) == ["gradient_x_input"] * 2 + ["occlusion"] * 2 and (rows.status == "ok").all()
        for row in rows.itertuples():
            stored = np.asarray(results.attribution(row.image_id, row.method), dtype=np.float64)
            assert row.map_l1 == pytest.approx(2.0 * np.abs(stored).sum(), rel=1e-5) and row.map_l1 > 0
            assert row.map_norm_seconds > 0
        mine = rows[rows.method == "gradient_x_input"]

        summary = summarize(job.output.path, n_boot=50)
        by_image = rows.pivot(index="image_id", columns="method", values="map_l1")
        expected = float(np.mean([1.0 if by_image.loc[i, "gradient_x_input"] < by_image.loc[i, "occlusion"] else 2.0
                                  for i in by_image.index]))
        assert summary.methods["gradient_x_input"].ranks["map_l1"].mean_rank == expected

        figure = panel_figure(results, str(mine.image_id.iloc[0]))
        assert any(ax.get_title().startswith("Gradient × Input") for ax in figure.axes)
