"""Incremental Occlusion: the same maps as full forwards of every occluded copy, from a fraction of the work.

Exactness is checked in float64, where the two paths can only differ by a real mistake (a missed halo, a wrong
offset, a stale clean value): the bound is 1e-9 of each map's maximum. In float32 the two paths run their
convolutions on different shapes, so oneDNN sums in different orders; two *full-forward* runs with forward batches 7
and 64 already differ by up to 3e-5 of the map's maximum on these random-init nets (the drops are small differences
of logits), so float32 is compared with the bound the Captum tests use (1e-4).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from net_helpers import give_biases
from test_methods_captum import captum_occlusion, make_case, relative_error
from xcv_batch.config import job_from_mapping
from xcv_batch.execution.device import attribution_classifier
from xcv_batch.errors import ConfigError
from xcv_batch.methods import build_method
from xcv_batch.methods.incremental import Extent, Window, lower, make_plan, window_op_extent
from xcv_batch.methods.settings import OcclusionSettings
from xcv_batch.metrics.sensitivity import sensitivity_max
from xcv_batch.methods.guided_backprop import install_guided_switch
from xcv_batch.models.classifier import build_classifier

EXACT = 1e-9  # float64: rounding only


def images(n: int, size: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed)).to(dtype)




def classifier(arch: str, resolution: int, fast: bool, dtype=torch.float64):
    built = build_classifier(arch, "none", resolution, seed=0)
    give_biases(built.net, 1)
    if fast:
        built = attribution_classifier(built)
    built.net.to(dtype)
    return built


def both_paths(model, inputs, targets, settings: OcclusionSettings, forward_batch: int = 64):
    """(full-forward maps, incremental maps, the incremental method)."""
    full = build_method("occlusion", model, dataclasses.replace(settings, incremental=False), forward_batch)
    incremental = build_method("occlusion", model, dataclasses.replace(settings, incremental=True), forward_batch)
    seeds = list(range(len(targets)))
    expected = full.attribute(inputs, targets, seeds)
    got = incremental.attribute(inputs, targets, seeds)
    assert full.last_path == "full"
    return expected, got, incremental


def max_relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(got.double(), expected.double()))


# --- the interval arithmetic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    (3, 1, 1, 1), (7, 2, 3, 1), (3, 2, 1, 1), (1, 2, 0, 1), (2, 2, 0, 1), (4, 3, 2, 1), (3, 1, 2, 2), (5, 3, 0, 2),
])
def test_changed_outputs_are_exactly_those_whose_receptive_field_meets_the_change(kernel, stride, padding, dilation):
    size = 23
    out_size = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    starts, ends = zip(*[(a, b) for a in range(size) for b in range(a + 1, size + 1)])
    extent = Extent(torch.tensor(starts), torch.tensor(ends), torch.tensor(starts), 1, size)
    step = Window(0, 1, (kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation), 0.0,
                  None, None, 0)
    got = window_op_extent(extent, step, 0, out_size)
    for index, (a, b) in enumerate(zip(starts, ends)):
        # Brute force: output o reads inputs o·s − p + j·d for j < k; it changes when one lies in [a, b).
        span = [o for o in range(out_size) if any(a <= o * stride - padding + j * dilation < b for j in range(kernel))]
        start, end, top = int(got.start[index]), int(got.end[index]), int(got.top[index])
        assert set(span) <= set(range(start, end)), (a, b)
        assert top <= start and end <= top + got.length <= out_size  # the fixed-size rectangle holds it, inside
        if dilation == 1 and span:  # without holes in the kernel the interval is tight
            assert (start, end) == (span[0], span[-1] + 1)


# --- exactness on the torchvision families -----------------------------------------------------------------------


# Every window of the grid runs, so windows at every border (and the clipped last ones) are all checked.
@pytest.mark.parametrize("arch, resolution, window, stride, n_images, fast", [
    ("resnet18", 48, 12, 9, 2, True),  # stride-2 stem and max-pool, BasicBlock downsampling
    ("resnet18", 48, 12, 9, 2, False),  # the stock model: BatchNorm2d in eval mode
    ("resnet18", 37, 5, 3, 1, True),  # odd size: rectangles clipped and shifted at every border
    ("resnet50", 37, 9, 8, 1, True),  # Bottleneck; the last window clipped to 5 px
    ("resnet50", 37, 9, 8, 1, False),
], ids=["resnet18-folded", "resnet18-stock", "resnet18-odd", "resnet50-folded", "resnet50-stock"])
def test_resnets_match_full_forwards(arch, resolution, window, stride, n_images, fast):
    model = classifier(arch, resolution, fast)
    expected, got, method = both_paths(model, images(n_images, resolution), torch.tensor([3, 281][:n_images]),
                                       OcclusionSettings(window=window, stride=stride, baseline=-0.5), 7)
    assert method.last_path == "incremental"
    assert max_relative_error(got, expected) < EXACT


@pytest.mark.parametrize("fast", [True, False], ids=["folded", "stock"])
def test_vgg19_matches_full_forwards(fast):
    model = classifier("vgg19", 32, fast)
    expected, got, method = both_paths(model, images(1, 32), torch.tensor([350]),
                                       OcclusionSettings(window=7, stride=5, baseline=0.3), 64)
    assert method.last_path == "incremental"
    assert max_relative_error(got, expected) < EXACT


@pytest.mark.parametrize("forward_batch", [1, 7, 64])
def test_any_forward_batch_and_several_images_with_their_own_clean_pass(forward_batch):
    model = classifier("resnet18", 37, fast=True)
    inputs, targets = images(3, 37, seed=2), torch.tensor([1, 2, 3])
    settings = OcclusionSettings(window=12, stride=9)  # 4 × 4 windows: forward batch 64 holds all images' copies
    expected, got, _ = both_paths(model, inputs, targets, settings, forward_batch)
    assert max_relative_error(got, expected) < EXACT
    # each image's map is its own: explained alone, it is the same
    alone = build_method("occlusion", model, settings, forward_batch).attribute(inputs[1:2], targets[1:2], [0])
    assert max_relative_error(alone, got[1:2]) < EXACT


def test_float32_matches_captum_per_image():
    import skimage.data

    case = make_case("resnet18", 64, [skimage.data.chelsea(), skimage.data.astronaut()], [3, 281])
    settings = OcclusionSettings(window=16, stride=10, incremental=True)
    method = build_method("occlusion", attribution_classifier(case.classifier), settings, 20)
    ours = method.attribute(case.inputs, case.targets, case.seeds)
    assert method.last_path == "incremental"
    assert relative_error(ours, captum_occlusion(case, settings)) < 1e-4


# --- other networks: the generic Sequential path and the fall-back ---------------------------------------------


def odd_cnn(middle: nn.Module | None = None) -> nn.Sequential:
    """Kernels the torchvision nets lack: dilation, stride 3, an even kernel, asymmetric padding, a padded max-pool
    and a 1×1 stride-2 convolution (a stride wider than its kernel skips inputs)."""
    torch.manual_seed(3)
    layers = [
        nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 4, stride=3, padding=(1, 2)), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 12, 1, stride=2),
        nn.Conv2d(12, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ]
    if middle is not None:
        layers.insert(8, middle)
    net = nn.Sequential(*layers).double().eval()
    give_biases(net, 1)
    return net


def wrap(net: nn.Module, resolution: int):
    """A Classifier around any network, ReLUs switchable as a Guided Grad-CAM of the job leaves them."""
    template = build_classifier("resnet18", "none", resolution, seed=0)
    install_guided_switch(net)
    return dataclasses.replace(template, net=net, num_classes=5)


def test_a_plain_sequential_cnn_with_unusual_kernels_matches():
    model = wrap(odd_cnn(), 41)
    expected, got, method = both_paths(model, images(2, 41), torch.tensor([0, 4]),
                                       OcclusionSettings(window=6, stride=4, baseline=1.0), 16)
    assert method.last_path == "incremental"
    assert max_relative_error(got, expected) < EXACT


class Doubling(nn.Module):
    """A module the lowering does not know."""

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("middle", [nn.GELU(), Doubling()], ids=["gelu", "custom"])
def test_an_unknown_module_mid_network_ends_the_incremental_part_and_still_matches(middle):
    net = odd_cnn(middle)
    model = wrap(net, 41)
    plan = make_plan(net, lower(net, (3, 41, 41)), 41, 41, 6, 4)
    assert plan.n_lowered <= 8  # nothing from the unknown module on is lowered
    expected, got, method = both_paths(model, images(2, 41), torch.tensor([0, 4]),
                                       OcclusionSettings(window=6, stride=4), 16)
    assert method.last_path == "incremental"
    assert max_relative_error(got, expected) < EXACT


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = odd_cnn()

    def forward(self, x):
        return self.body(x) + 1


def test_a_network_with_an_unknown_forward_runs_full_forwards():
    model = wrap(Custom(), 41)
    method = build_method("occlusion", model, OcclusionSettings(window=6, stride=4, incremental=True), 16)
    method.attribute(images(1, 41), torch.tensor([0]), [0])
    assert method.last_path == "full" and method.last_flop_ratio is None


# --- choosing the path ---------------------------------------------------------------------------------------------


def test_the_setting_is_validated_and_read_from_the_job():
    with pytest.raises(ConfigError, match="incremental"):
        OcclusionSettings(incremental="yes").check()
    job = job_from_mapping({"methods": {"occlusion": {"incremental": False}}})
    assert job.methods["occlusion"].incremental is False
    assert job_from_mapping({"methods": {"occlusion": {}}}).methods["occlusion"].incremental == "auto"
    with pytest.raises(ConfigError, match="methods.occlusion.incremental"):
        job_from_mapping({"methods": {"occlusion": {"incremental": "sometimes"}}})


def test_max_sensitivity_takes_the_incremental_path_too():
    model = classifier("resnet18", 37, fast=True)
    inputs, targets = images(2, 37, seed=5), torch.tensor([7, 8])
    results = {}
    for incremental in (False, True):
        settings = OcclusionSettings(window=12, stride=9, incremental=incremental)
        method = build_method("occlusion", model, settings, 20)
        maps = method.attribute(inputs, targets, [0, 1])
        results[incremental] = sensitivity_max(method, inputs, targets, [0, 1], maps, [11, 12], n_perturb_samples=2)
        assert method.last_path == ("incremental" if incremental else "full")  # the perturbed copies' call
    torch.testing.assert_close(results[True], results[False], rtol=1e-9, atol=0)


def test_a_network_that_starts_with_an_elementwise_layer_matches():
    torch.manual_seed(4)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    net = net.double().eval()
    give_biases(net, 1)
    expected, got, method = both_paths(wrap(net, 20), images(2, 20), torch.tensor([0, 3]),
                                       OcclusionSettings(window=4, stride=3), 16)
    assert method.last_path == "incremental"
    assert max_relative_error(got, expected) < EXACT
