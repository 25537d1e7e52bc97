"""explain_batch apart from any I/O: the maps and columns a batch gets are each method's and metric's own values,
do not depend on the batch an image is in, and a failure (a forward, a method, a method unavailable for the model,
memory) costs only what it must."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from fake_device import RefusesBigBatches
from test_methods_captum import linear_classifier
from xcv_batch.config import CausalCurveConfig, ComputeConfig, InfidelityConfig, MetricsConfig, SensitivityConfig
from xcv_batch.work import MethodDone
from xcv_batch.errors import MethodUnavailable
from xcv_batch.execution.explain import BatchExplainer
from xcv_batch.methods import MethodSpec, build_method, registered
from xcv_batch.methods.base import AttributionMethod
from xcv_batch.methods.registry import Passes
from xcv_batch.methods.settings import IntegratedGradientsSettings, OcclusionSettings
from xcv_batch.metrics.faithfulness import deletion_auc, infidelity
from xcv_batch.metrics.sensitivity import sensitivity_max
from xcv_batch.models.classifier import Classifier
from xcv_batch.seeding import derive_seed

SIZE, SEED = 12, 7
IDS = ["a.png", "b.png", "c.png"]
SETTINGS = {"occlusion": OcclusionSettings(window=4, stride=4, incremental=False),
            "integrated_gradients": IntegratedGradientsSettings(n_steps=4)}
SENSITIVITY = SensitivityConfig(n_perturb_samples=2, perturb_radius=0.02)
METRICS = MetricsConfig({"infidelity": InfidelityConfig(n_perturb_samples=3), "deletion": CausalCurveConfig(n_steps=4)})
COMPUTE = ComputeConfig(forward_batch=16, fast_execution=False)


def classifier() -> Classifier:
    weight = torch.randn(3, 3 * SIZE * SIZE, generator=torch.Generator().manual_seed(0))
    return linear_classifier(SIZE, weight)


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def explainer(model: Classifier | None = None, methods=SETTINGS, **changes) -> BatchExplainer:
    options = {"sensitivity": SENSITIVITY, "metrics": METRICS, "compute": COMPUTE, "seed": SEED, **changes}
    return BatchExplainer(model or classifier(), methods, **options)


def test_maps_targets_and_metrics_are_each_method_and_metric_called_on_its_own():
    model, inputs = classifier(), images()
    result = explainer(model).explain_batch(inputs, IDS)

    probabilities = torch.softmax(model.net(inputs), dim=1)
    targets = probabilities.argmax(dim=1)
    assert [image.target for image in result.images] == targets.tolist()
    np.testing.assert_allclose([image.target_prob for image in result.images],
                               probabilities.max(dim=1).values.numpy(), rtol=1e-6)
    assert all(image.error is None for image in result.images)

    for name, settings in SETTINGS.items():
        method = build_method(name, model, settings, 16)
        seeds = [derive_seed(SEED, image_id, name) for image_id in IDS]
        maps = method.attribute(inputs, targets, seeds)
        expected_sensitivity = sensitivity_max(method, inputs, targets, seeds, maps,
                                               [derive_seed(SEED, i, name, "sensitivity") for i in IDS], 2, 0.02)
        expected_infidelity = infidelity(model.net, inputs, targets, maps,
                                         [derive_seed(SEED, i, name, "infidelity") for i in IDS], n_perturb_samples=3)
        expected_deletion = deletion_auc(model.net, inputs, targets, maps, n_steps=4)
        for i in range(len(IDS)):
            got = result.result(i, name)
            assert got.error is None and got.attribution.dtype == np.float32
            np.testing.assert_allclose(got.attribution, maps[i].numpy(), rtol=1e-5, atol=1e-7)
            assert got.columns["sensitivity_max"] == pytest.approx(float(expected_sensitivity[i]), rel=1e-5)
            assert got.columns["infidelity"] == pytest.approx(float(expected_infidelity[i]), rel=1e-5)
            assert got.columns["deletion_auc"] == pytest.approx(float(expected_deletion[i]), rel=1e-5)
            for cost in ("attr_seconds", "sensitivity_seconds", "infidelity_seconds", "deletion_seconds"):
                assert got.columns[cost] > 0
            assert "insertion_auc" not in got.columns  # off in this job


def test_rows_carry_the_shared_columns_and_one_row_per_image_and_method():
    result = explainer().explain_batch(images(), IDS)
    shared = [{"image_id": image_id, "image_path": f"/data/{image_id}", "index": 10 + i, "label": None}
              for i, image_id in enumerate(IDS)]
    rows = result.rows(shared)
    assert sorted((row["index"], row["method"]) for row in rows) == sorted(
        (10 + i, name) for i in range(3) for name in SETTINGS)
    for row in rows:
        image = result.images[row["index"] - 10]
        assert row["image_path"] == f"/data/{row['image_id']}" and row["status"] == "ok" and row["error"] is None
        assert (row["target"], row["target_prob"]) == (image.target, image.target_prob)
        assert row["sensitivity_max"] == result.result(row["index"] - 10, row["method"]).columns["sensitivity_max"]


def test_an_image_gets_the_same_values_alone_as_in_a_batch():
    inputs, engine = images(), explainer()
    together = engine.explain_batch(inputs, IDS)
    alone = engine.explain_batch(inputs[1:2], IDS[1:2])
    for name in SETTINGS:
        a, b = together.result(1, name), alone.result(0, name)
        np.testing.assert_allclose(a.attribution, b.attribution, rtol=1e-5, atol=1e-7)
        for column in ("sensitivity_max", "deletion_auc"):
            assert a.columns[column] == pytest.approx(b.columns[column], rel=1e-5), (name, column)
        # A linear model's occlusion map is nearly exact, so its infidelity is a small difference of large terms:
        # the float32 rounding of the forwards (their batch differs) shows in the 5th digit.
        assert a.columns["infidelity"] == pytest.approx(b.columns["infidelity"], rel=1e-3), name


def test_targets_come_from_the_argument_or_from_the_labels_in_label_mode():
    inputs = images()
    given = explainer().explain_batch(inputs, IDS, targets=[2, 0, 1])
    assert [image.target for image in given.images] == [2, 0, 1]
    labelled = explainer(target="label").explain_batch(inputs, IDS, labels=[1, 1, 0])
    assert [image.target for image in labelled.images] == [1, 1, 0]
    probabilities = torch.softmax(classifier().net(inputs), dim=1)
    assert labelled.images[2].target_prob == pytest.approx(float(probabilities[2, 0]), rel=1e-6)
    with pytest.raises(ValueError, match="label"):
        explainer(target="label").explain_batch(inputs, IDS, labels=[1, None, 0])


class RefusesPoison(nn.Module):
    """Wraps a net; a forward that holds a row whose first value is over 50 raises."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        if (x[:, 0, 0, 0] > 50).any():
            raise RuntimeError("poisoned row")
        return self.net(x)


def test_a_forward_that_fails_on_one_image_fails_only_that_image():
    model = classifier()
    poisoned = dataclasses.replace(model, net=RefusesPoison(model.net))
    inputs = images()
    inputs[1, 0, 0, 0] = 100.0
    result = explainer(poisoned).explain_batch(inputs, IDS)
    clean = explainer(model).explain_batch(inputs[[0, 2]], [IDS[0], IDS[2]])

    assert result.images[1].target is None
    assert result.images[1].error == "forward pass failed: RuntimeError: poisoned row"
    for name in SETTINGS:
        assert result.result(1, name).error == result.images[1].error and result.result(1, name).attribution is None
        for position, alone in ((0, 0), (2, 1)):
            np.testing.assert_allclose(result.result(position, name).attribution,
                                       clean.result(alone, name).attribution, rtol=1e-5, atol=1e-7)


@dataclass(frozen=True)
class ToySettings:
    refuse: bool = False


class FailsOnBrightImages(AttributionMethod):
    """The input itself as its map, except that it raises on a batch holding an image brighter than 50 somewhere;
    with ``refuse`` its constructor says it cannot run on this model."""

    def __init__(self, classifier, settings, forward_batch=64):
        if settings.refuse:
            raise MethodUnavailable("toy needs a model with a softmax layer\nsecond line not shown")
        super().__init__(classifier, settings, forward_batch)

    def attribute(self, inputs, targets, seeds):
        if (inputs.flatten(1).max(dim=1).values > 50).any():
            raise ValueError("too bright")
        return inputs.float().clone()


TOY = MethodSpec(name="toy", settings=ToySettings, label="Toy", passes=lambda s, h, w: Passes(),
                 implementation=f"{__name__}:FailsOnBrightImages")


def test_a_method_that_fails_on_one_image_fails_only_that_image_and_method():
    inputs = images()
    inputs[2, 1, 3, 3] = 80.0  # the model does not mind; the toy method does
    with registered(TOY):
        result = explainer(methods={**SETTINGS, "toy": ToySettings()}).explain_batch(inputs, IDS)
    assert result.result(2, "toy").error == "toy failed: ValueError: too bright"
    for i in (0, 1):
        np.testing.assert_array_equal(result.result(i, "toy").attribution, inputs[i].numpy())
    assert all(result.result(i, name).error is None for i in range(3) for name in SETTINGS)


def test_a_method_unavailable_for_the_model_gives_error_rows_and_costs_no_pass():
    events = []
    with registered(TOY):
        engine = explainer(methods={"toy": ToySettings(refuse=True), **SETTINGS})
        result = engine.explain_batch(images(), IDS, progress=events.append)
    assert engine.method_names == ("toy", *SETTINGS) and "toy" not in engine.methods
    assert engine.unavailable == {"toy": "toy needs a model with a softmax layer"}
    for i in range(3):
        toy = result.result(i, "toy")
        assert (toy.error, toy.attribution) == ("toy needs a model with a softmax layer", None)
        assert all(result.result(i, name).error is None for name in SETTINGS)
    done = [event.method for event in events if isinstance(event, MethodDone)]
    assert sorted(done) == sorted(SETTINGS)  # nothing ran for the unavailable method
    shared = [{"image_id": i, "image_path": i, "index": n, "label": None} for n, i in enumerate(IDS)]
    toy_rows = [row for row in result.rows(shared) if row["method"] == "toy"]
    assert [row["status"] for row in toy_rows] == ["error"] * 3


def test_out_of_memory_in_metric_passes_halves_their_batch_and_changes_no_value():
    model, inputs = classifier(), images()
    reference = explainer(model).explain_batch(inputs, IDS)
    tight = dataclasses.replace(model, net=RefusesBigBatches(model.net, 5))
    engine = explainer(tight)
    result = engine.explain_batch(inputs, IDS)
    # Every kind of pass, the metrics' own forwards included, came down until it fit: 16 rows → 8 → 4, except
    # infidelity's 3 × 3 copies, which at 8 a pass go as two balanced chunks of 4 and 5.
    assert engine.oom.remembered == {"occlusion": 4, "integrated_gradients": 4, "infidelity": 8, "deletion": 4}
    tight.net.batches.clear()
    engine.explain_batch(inputs, IDS)
    assert 0 < max(tight.net.batches) <= 5  # the halved sizes are kept: the next batch runs out of memory nowhere
    for i in range(3):
        for name in SETTINGS:
            for column in ("sensitivity_max", "infidelity", "deletion_auc"):
                assert result.result(i, name).columns[column] == pytest.approx(
                    reference.result(i, name).columns[column], rel=1e-5), (i, name, column)
