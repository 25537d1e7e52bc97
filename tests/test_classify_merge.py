"""The classifying forward merged into Guided Grad-CAM's first pass: one forward of the batch fewer, and the same
targets, probabilities, maps and columns as the engine with a forward of its own (``merge_classify=False``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xcv_batch.config import CausalCurveConfig, ComputeConfig, InfidelityConfig, MetricsConfig, SensitivityConfig
from xcv_batch.execution.explain import BatchExplainer
from xcv_batch.methods import method_spec
from xcv_batch.methods.settings import GuidedGradCamSettings, IntegratedGradientsSettings, OcclusionSettings
from xcv_batch.models.classifier import build_classifier

RES, N = 32, 3
IDS = [f"img{i}.png" for i in range(N)]
#: a method before Guided Grad-CAM and one after it, so that its results keep their place among the others'
METHODS = {"occlusion": OcclusionSettings(window=16, stride=16, incremental=False),
           "guided_gradcam": GuidedGradCamSettings(),
           "integrated_gradients": IntegratedGradientsSettings(n_steps=1)}
SENSITIVITY = SensitivityConfig(n_perturb_samples=2, perturb_radius=0.02)
METRICS = MetricsConfig({"infidelity": InfidelityConfig(n_perturb_samples=2), "deletion": CausalCurveConfig(n_steps=2)})


@pytest.fixture(scope="module", params=["resnet18", "custom_models:tiny_cnn"])
def model(request):
    """A ResNet (BatchNorm folded into the fast copy, in-place ReLUs, residual sums) and a plain Sequential."""
    return build_classifier(request.param, "none", RES, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return build_classifier("custom_models:tiny_cnn", "none", RES, seed=0)


def inputs(n: int = N) -> torch.Tensor:
    return torch.randn(n, 3, RES, RES, generator=torch.Generator().manual_seed(3))


def engine(model, merge: bool, forward_batch: int = 16, target: str = "predicted",
           metrics: bool = True) -> tuple[BatchExplainer, list]:
    """An explainer, and the rows its copy's forwards take (one count per forward call)."""
    explainer = BatchExplainer(model, METHODS, SENSITIVITY if metrics else None,
                               METRICS if metrics else MetricsConfig({name: None for name in MetricsConfig()}),
                               ComputeConfig(forward_batch=forward_batch), seed=5, target=target,
                               merge_classify=merge)
    rows: list[int] = []
    explainer.executed.net.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    return explainer, rows


def assert_same_results(merged, separate) -> None:
    """Targets, probabilities and maps bitwise; every row column but the seconds equal, rows in the same order."""
    assert [vars(image) for image in merged.images] == [vars(image) for image in separate.images]
    assert [(r.image, r.method) for r in merged.results] == [(r.image, r.method) for r in separate.results]
    for a, b in zip(merged.results, separate.results):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert np.array_equal(a.attribution, b.attribution), (a.image, a.method)
        columns = {key for key in a.columns if not key.endswith("_seconds")}
        assert columns == {key for key in b.columns if not key.endswith("_seconds")}
        for key in columns:
            x, y = a.columns[key], b.columns[key]
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), (a.method, key, x, y)
    shared = [{"image_id": i, "image_path": i, "index": n, "label": None} for n, i in enumerate(IDS)]
    assert comparable(merged.rows(shared)) == comparable(separate.rows(shared))


def comparable(rows: list[dict]) -> list[dict]:
    """Rows without their seconds, a NaN as a string (NaN ≠ NaN)."""
    return [{key: "NaN" if isinstance(value, float) and math.isnan(value) else value
             for key, value in row.items() if not key.endswith("_seconds")} for row in rows]


def test_guided_gradcam_is_the_method_that_classifies():
    assert method_spec("guided_gradcam").classifies
    assert not any(method_spec(name).classifies for name in METHODS if name != "guided_gradcam")


def test_the_merged_forward_saves_one_row_per_image_and_changes_nothing(model):
    merged, merged_rows = engine(model, merge=True)
    separate, separate_rows = engine(model, merge=False)
    with_merge = merged.explain_batch(inputs(), IDS)
    without = separate.explain_batch(inputs(), IDS)
    assert_same_results(with_merge, without)
    assert sum(separate_rows) - sum(merged_rows) == N  # the classifying forward of the batch, and nothing else
    assert len(separate_rows) - len(merged_rows) == 1
    assert all(image.target is not None and 0 < image.target_prob <= 1 for image in with_merge.images)


def test_given_targets_and_label_targets_take_their_probability_from_the_merged_forward(tiny):
    given = [1, 0, 4]
    merged, merged_rows = engine(tiny, merge=True, target="label", metrics=False)
    separate, separate_rows = engine(tiny, merge=False, target="label", metrics=False)
    assert_same_results(merged.explain_batch(inputs(), IDS, labels=given),
                        separate.explain_batch(inputs(), IDS, labels=given))
    assert sum(separate_rows) - sum(merged_rows) == N
    explicit, _ = engine(tiny, merge=True, metrics=False)
    result = explicit.explain_batch(inputs(), IDS, targets=given)
    assert [image.target for image in result.images] == given


def test_a_batch_larger_than_one_forward_batch_keeps_its_own_forward(tiny):
    """Guided Grad-CAM would take it in two chunks: not the classifying forward of the batch, so no merge."""
    merged, merged_rows = engine(tiny, merge=True, forward_batch=2)
    separate, separate_rows = engine(tiny, merge=False, forward_batch=2)
    assert_same_results(merged.explain_batch(inputs(), IDS), separate.explain_batch(inputs(), IDS))
    assert merged_rows == separate_rows


def test_a_failure_in_the_merged_pass_runs_the_batch_the_ordinary_way(tiny, monkeypatch):
    merged, merged_rows = engine(tiny, merge=True)
    separate, separate_rows = engine(tiny, merge=False)
    method = merged.methods["guided_gradcam"]
    calls = []

    def fails(inputs, seeds, pick):
        calls.append(inputs.shape[0])
        pick(merged.executed.net(inputs))  # the targets are picked, then the pass breaks
        raise RuntimeError("broken after the forward")

    monkeypatch.setattr(method, "attribute_classifying", fails)
    assert_same_results(merged.explain_batch(inputs(), IDS), separate.explain_batch(inputs(), IDS))
    assert calls == [N]
    assert sum(merged_rows) == sum(separate_rows) + N  # the broken pass's forward, then the ordinary path's
