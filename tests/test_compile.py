"""``compute.compile``: the methods' passes on a ``torch.compile``d fast copy give eager's maps, Guided Grad-CAM stays
eager (its guided backward reads a switch at backward time), progress is still counted.

Compiling costs tens of seconds on this 2-core CPU (minutes under load), so the fast test compiles one method on a
tiny network; every method's parity is the slow test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from net_helpers import give_biases
from test_incremental_occlusion import wrap
from xcv_batch.config import ComputeConfig, job_from_mapping
from xcv_batch.execution.explain import BatchExplainer
from xcv_batch.methods.settings import (GuidedGradCamSettings, IGSmoothGradSettings, IntegratedGradientsSettings,
                                        LimeSettings, OcclusionSettings)
from xcv_batch.work import Forwarded

SIZE = 12


def tiny_net() -> nn.Sequential:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    give_biases(net, 1)
    return net


def explained(methods: dict, compile_: bool, progress=None):
    explainer = BatchExplainer(wrap(tiny_net(), SIZE), methods, compute=ComputeConfig(compile=compile_,
                                                                                      forward_batch=8))
    inputs = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    return explainer, explainer.explain_batch(inputs, ["a", "b"], progress=progress)


def assert_same_maps(eager, compiled, methods, rtol: float) -> None:
    for name in methods:
        for image in (0, 1):
            a = torch.from_numpy(eager.result(image, name).attribution)
            b = torch.from_numpy(compiled.result(image, name).attribution)
            assert compiled.result(image, name).error is None
            assert (a - b).norm() <= rtol * a.norm(), name


def test_the_key_is_read_from_the_job():
    methods = {"integrated_gradients": {}}
    assert job_from_mapping({"methods": methods}).compute.compile is False
    assert job_from_mapping({"methods": methods, "compute": {"compile": True}}).compute.compile is True


def test_guided_gradcam_stays_eager_and_the_others_run_compiled():
    explainer = BatchExplainer(wrap(tiny_net(), SIZE), {"guided_gradcam": GuidedGradCamSettings(),
                                                        "integrated_gradients": IntegratedGradientsSettings()},
                               compute=ComputeConfig(compile=True))
    assert explainer.methods["guided_gradcam"].classifier.net is explainer.executed.net
    compiled = explainer.methods["integrated_gradients"].classifier.net
    assert compiled is not explainer.executed.net and compiled._orig_mod is explainer.executed.net


def test_a_compiled_method_gives_eager_maps_and_reports_progress():
    methods = {"integrated_gradients": IntegratedGradientsSettings(n_steps=3)}
    _, eager = explained(methods, False)
    events = []
    _, compiled = explained(methods, True, progress=events.append)
    assert_same_maps(eager, compiled, methods, rtol=1e-5)
    forwarded = [e for e in events if isinstance(e, Forwarded)]
    assert forwarded and forwarded[0].method == "integrated_gradients"


@pytest.mark.slow
def test_every_method_gives_eager_maps_when_compiled():
    methods = {"occlusion": OcclusionSettings(window=4, stride=4), "integrated_gradients":
               IntegratedGradientsSettings(n_steps=3), "ig_smoothgrad": IGSmoothGradSettings(nt_samples=2, n_steps=2),
               "guided_gradcam": GuidedGradCamSettings(), "lime": LimeSettings(num_samples=16)}
    _, eager = explained(methods, False)
    _, compiled = explained(methods, True)
    assert_same_maps(eager, compiled, methods, rtol=1e-4)
