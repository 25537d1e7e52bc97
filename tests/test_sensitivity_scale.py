"""Max-Sensitivity is a ratio of norms, so it does not depend on the maps' scale: maps of 1e-21 (a model whose logits
are tiny, LIME with a huge ridge alpha) must get the value their unscaled maps get, never the "perfectly stable" 0.0
that float32 norms underflowing to zero would give."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xcv_batch import Explainer
from xcv_batch.methods.base import AttributionMethod
from xcv_batch.metrics.sensitivity import sensitivity_max


class Scaled(nn.Module):
    """A small CNN whose logits are multiplied by ``factor``: the same predictions, maps scaled by ``factor``."""

    def __init__(self, factor: float):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 5))
        self.factor = factor

    def forward(self, x):
        return self.body(x) * self.factor


class MapTimes(AttributionMethod):
    """A fixed, input-dependent map times a constant: the perturbed copies' maps differ from the clean one's."""

    name, settings_type = "map_times", dict

    def __init__(self, classifier, settings, forward_batch, factor: float):
        super().__init__(classifier, settings, forward_batch)
        self.factor = factor

    def attribute(self, inputs, targets, seeds):
        return (inputs * inputs.sum(dim=(1, 2, 3), keepdim=True)) * self.factor


@pytest.fixture
def inputs():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("factor", [1e-21, 1e-30, 1e25])
def test_sensitivity_of_scaled_maps_equals_that_of_unscaled_maps(inputs, factor):
    targets = torch.zeros(3, dtype=torch.long)
    values = {}
    for scale in (1.0, factor):
        method = MapTimes(None, {}, forward_batch=4, factor=scale)
        maps = method.attribute(inputs, targets, [0, 0, 0])
        values[scale] = sensitivity_max(method, inputs, targets, [0, 0, 0], maps, [1, 2, 3], 4, 0.05)
    assert (values[1.0] > 0.01).all()
    torch.testing.assert_close(values[factor], values[1.0], rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_model_with_tiny_logits_gets_the_sensitivity_of_the_same_model_unscaled(method):
    """Through the API, as a user would: the 1e-21 model's rows equal the plain model's, and none is 0.0. (Methods
    that explain the logits, whose maps scale with them; LIME explains probabilities, which the scale changes.)"""
    settings = {"integrated_gradients": {"n_steps": 8}, "occlusion": {"window": 8, "stride": 8}}[method]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sensitivity = {}
    for factor in (1.0, 1e-21):
        explainer = Explainer(Scaled(factor), methods={method: settings}, sensitivity={"n_perturb_samples": 3},
                              seed=0, device="cpu")
        rows = explainer.explain(images, targets=[1, 3]).rows
        assert (rows.status == "ok").all()
        sensitivity[factor] = rows.sensitivity_max.tolist()
    assert all(value > 0.001 and math.isfinite(value) for value in sensitivity[1.0])
    assert sensitivity[1e-21] == pytest.approx(sensitivity[1.0], rel=2e-3)


def test_lime_with_a_huge_ridge_alpha_is_not_perfectly_stable():
    """alpha 1e20 shrinks LIME's coefficients to ~1e-20: the ratio of norms is still defined and not 0."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    explainer = Explainer(Scaled(1.0), methods={"lime": {"num_samples": 32, "alpha": 1e20}},
                          sensitivity={"n_perturb_samples": 3}, seed=0, device="cpu")
    explained = explainer.explain(images, targets=[0, 2])
    rows = explained.rows
    assert (rows.status == "ok").all()
    maps = explained.maps["lime"]
    assert 0 < maps.abs().max().item() < 1e-15  # the maps really are tiny
    assert all(value > 0.001 and math.isfinite(value) for value in rows.sensitivity_max)
