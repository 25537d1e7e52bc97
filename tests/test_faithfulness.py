"""Infidelity equals Captum's; deletion / insertion AUC equal RISE's definition computed by hand.

Every metric must also give each image the same value whatever ``forward_batch`` is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.metrics import infidelity as captum_infidelity
from torch import nn

from xcv_batch.metrics.registry import metric_spec

from xcv_batch.metrics.faithfulness import (
    causal_curves,
    deletion_auc,
    gaussian_perturbations,
    infidelity,
    insertion_auc,
    make_substrate,
)


def gradient_x_input(net, inputs, targets):
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(net(x).gather(1, targets.view(-1, 1)).sum(), x)
    return (grad * x).detach()


def linear_net(weights: torch.Tensor) -> nn.Module:
    """Class 0's logit is Σ w·x over all input elements, class 1's is 0: p(class 0) = sigmoid(w·x)."""
    layer = nn.Linear(weights.numel(), 2, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0] = weights.flatten()
    return nn.Sequential(nn.Flatten(), layer).eval()


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---------------------------------------------------------------------------------------------------- infidelity
@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_equals_captum_given_the_same_perturbations(classifier, batch, normalize):
    inputs, targets = batch
    net = classifier.net
    attributions = gradient_x_input(net, inputs, targets)
    n, std, seeds = 4, 0.05, [11, 12, 13]
    ours = infidelity(net, inputs, targets, attributions, seeds, n_perturb_samples=n, noise_std=std,
                      forward_batch=5, normalize=normalize)
    noise = gaussian_perturbations(inputs, seeds, n, std)
    # Captum's documented scheme: perturbation I, perturbed input x − I (it expands inputs image-major first).
    expected = captum_infidelity(net, lambda expanded: (noise, expanded - noise), inputs, attributions,
                                 target=targets, n_perturb_samples=n, normalize=normalize)
    # Captum sums in float32, we in float64; the forward passes batch the copies differently.
    torch.testing.assert_close(ours, expected.float(), rtol=2e-3, atol=0)
    assert (ours > 0).all()


def test_infidelity_noise_is_gaussian_per_image_and_seeded():
    inputs = torch.zeros((2, 3, 16, 16))
    noise = gaussian_perturbations(inputs, [7, 8], 50, 0.5)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert noise.mean().abs().item() < 0.01
    # Image 1's noise depends on its own seed only, not on what comes before it.
    torch.testing.assert_close(noise[50:], gaussian_perturbations(inputs[1:], [8], 50, 0.5), rtol=0, atol=0)


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero_and_scaling_is_free():
    weights = torch.tensor([[[3.0, 1.0], [-1.0, 0.5]]])  # (C=1, 2, 2)
    net = linear_net(weights)
    inputs = torch.tensor([[[[1.0, 2.0], [0.5, -1.0]]]])
    targets = torch.tensor([0])
    # f(x) − f(x − I) = w·I exactly, so Φ = w predicts every difference.
    exact = infidelity(net, inputs, targets, weights.unsqueeze(0), [3], n_perturb_samples=6, noise_std=0.1)
    assert exact.item() == pytest.approx(0.0, abs=1e-9)
    scaled = infidelity(net, inputs, targets, 5 * weights.unsqueeze(0), [3], n_perturb_samples=6, noise_std=0.1)
    assert scaled.item() == pytest.approx(0.0, abs=1e-9)
    # Unnormalised, Φ = 5w misses by (5 − 1)·w·I: INFD = 16 · mean_j (w·I_j)².
    raw = infidelity(net, inputs, targets, 5 * weights.unsqueeze(0), [3], n_perturb_samples=6, noise_std=0.1,
                     normalize=False)
    noise = gaussian_perturbations(inputs, [3], 6, 0.1)
    by_hand = 16 * ((noise * weights).flatten(1).sum(1).double() ** 2).mean()
    assert raw.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_infidelity_is_invariant_to_scaling_batching_and_batch_mates(classifier, batch):
    inputs, targets = batch
    net = classifier.net
    attributions = gradient_x_input(net, inputs, targets)
    common = dict(n_perturb_samples=3, noise_std=0.05)
    reference = infidelity(net, inputs, targets, attributions, [1, 2, 3], forward_batch=64, **common)
    for forward_batch in (1, 4):
        torch.testing.assert_close(infidelity(net, inputs, targets, attributions, [1, 2, 3],
                                              forward_batch=forward_batch, **common), reference, rtol=1e-3, atol=0)
    torch.testing.assert_close(infidelity(net, inputs, targets, 7.5 * attributions, [1, 2, 3], **common),
                               reference, rtol=1e-4, atol=0)
    alone = infidelity(net, inputs[2:], targets[2:], attributions[2:], [3], **common)
    torch.testing.assert_close(alone, reference[2:], rtol=1e-4, atol=0)


# ---------------------------------------------------------------------------------------- deletion / insertion
WEIGHTS = torch.tensor([[[3.0, 1.0], [-1.0, 0.5]]])  # one channel, 2 × 2 pixels
ONES = torch.ones((1, 1, 2, 2))
PERFECT = (WEIGHTS * ONES[0]).unsqueeze(0)  # each pixel's exact contribution to the logit


def test_deletion_auc_by_hand():
    net = linear_net(WEIGHTS)
    # Order by attribution 3, 1, 0.5, −1; removing (zero substrate) leaves logits 3.5, 0.5, −0.5, −1, 0.
    logits = [3.5, 0.5, -0.5, -1.0, 0.0]
    by_hand = 0.25 * (sigmoid(logits[0]) / 2 + sum(sigmoid(v) for v in logits[1:4]) + sigmoid(logits[4]) / 2)
    value = deletion_auc(net, ONES, torch.tensor([0]), PERFECT, n_steps=4, substrate="zero")
    assert value.item() == pytest.approx(by_hand, rel=1e-6)


def test_insertion_auc_by_hand():
    net = linear_net(WEIGHTS)
    # Revealing pixels 3, 1, 0.5, −1 on a zero substrate: logits 0, 3, 4, 4.5, 3.5.
    logits = [0.0, 3.0, 4.0, 4.5, 3.5]
    by_hand = 0.25 * (sigmoid(logits[0]) / 2 + sum(sigmoid(v) for v in logits[1:4]) + sigmoid(logits[4]) / 2)
    value = insertion_auc(net, ONES, torch.tensor([0]), PERFECT, n_steps=4, substrate="zero")
    assert value.item() == pytest.approx(by_hand, rel=1e-6)


def test_steps_that_do_not_divide_the_pixels_take_ceil_and_integrate_over_the_true_fractions():
    net = linear_net(WEIGHTS)
    # 4 pixels in 3 steps: 2 pixels a step, so the curve is at 0, 1/2 and all pixels removed.
    fractions, probabilities = causal_curves(net, ONES, torch.tensor([0]), PERFECT, "deletion", n_steps=3)
    assert fractions.tolist() == [0.0, 0.5, 1.0, 1.0]
    expected = [sigmoid(3.5), sigmoid(-0.5), sigmoid(0.0), sigmoid(0.0)]
    np.testing.assert_allclose(probabilities[0].numpy(), expected, rtol=1e-6)
    value = deletion_auc(net, ONES, torch.tensor([0]), PERFECT, n_steps=3)
    assert value.item() == pytest.approx(0.5 * (expected[0] + expected[1]) / 2 + 0.5 * (expected[1] + expected[2]) / 2,
                                         rel=1e-6)


def test_a_perfect_map_beats_its_reverse():
    g = torch.Generator().manual_seed(0)
    weights = torch.randn((3, 6, 6), generator=g)
    inputs = torch.rand((2, 3, 6, 6), generator=g) + 0.5
    net = linear_net(weights)
    targets = torch.tensor([0, 0])
    perfect = weights * inputs
    for substrate in ("zero", "mean", "blur"):
        kwargs = dict(n_steps=9, substrate=substrate, blur_kernel_size=5, blur_sigma=1.0)
        assert (deletion_auc(net, inputs, targets, perfect, **kwargs)
                < deletion_auc(net, inputs, targets, -perfect, **kwargs)).all()
        assert (insertion_auc(net, inputs, targets, perfect, **kwargs)
                > insertion_auc(net, inputs, targets, -perfect, **kwargs)).all()


def test_ties_go_in_raster_order():
    net = linear_net(WEIGHTS)
    flat = torch.zeros_like(PERFECT)
    raster = -torch.arange(4.0).view(1, 1, 2, 2)  # strictly decreasing in raster order
    for mode in ("deletion", "insertion"):
        _, tied = causal_curves(net, ONES, torch.tensor([0]), flat, mode, n_steps=4)
        _, ordered = causal_curves(net, ONES, torch.tensor([0]), raster, mode, n_steps=4)
        torch.testing.assert_close(tied, ordered, rtol=0, atol=0)


def reference_curve(net, image, target, attribution, substrate_image, mode, n_steps):
    """RISE's loop, one image and one step at a time, in NumPy (the definition, written out)."""
    channels, height, width = image.shape
    saliency = attribution.sum(0).flatten().numpy()
    order = np.argsort(-saliency, kind="stable")
    per_step = math.ceil(height * width / n_steps)
    current = (image if mode == "deletion" else substrate_image).clone().view(channels, -1)
    finish = (substrate_image if mode == "deletion" else image).view(channels, -1)
    probabilities = []
    for k in range(n_steps + 1):
        with torch.no_grad():
            probabilities.append(torch.softmax(net(current.view(1, channels, height, width)), 1)[0, target].item())
        taken = order[k * per_step:(k + 1) * per_step]
        current[:, taken] = finish[:, taken]
    fractions = np.minimum(np.arange(n_steps + 1) * per_step, height * width) / (height * width)
    return np.trapezoid(probabilities, fractions)


def small_cnn() -> nn.Module:
    """A non-linear, spatial classifier that is cheap on 2 cores (ResNet-18 would do the same work 50× slower)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
    ).eval()


@pytest.mark.parametrize("substrate", ["zero", "blur", "mean"])
def test_curves_equal_the_step_by_step_definition_for_any_forward_batch(substrate):
    net = small_cnn()
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn((2, 3, 12, 12), generator=g)
    targets = torch.tensor([1, 7])
    attributions = gradient_x_input(net, inputs, targets)
    background = make_substrate(inputs, substrate, blur_sigma=2.0, blur_kernel_size=7)
    kwargs = dict(n_steps=10, substrate=substrate, blur_sigma=2.0, blur_kernel_size=7)
    for name, metric in (("deletion", deletion_auc), ("insertion", insertion_auc)):
        expected = [reference_curve(net, inputs[i], int(targets[i]), attributions[i], background[i], name, 10)
                    for i in range(2)]
        # 144 pixels in 10 steps: 15 a step, the last step partial.
        for forward_batch in (1, 4, 64):  # 4 does not divide the 11 points: chunks span both images
            values = metric(net, inputs, targets, attributions, forward_batch=forward_batch, **kwargs)
            np.testing.assert_allclose(values.numpy(), expected, rtol=1e-5)


def test_resnet_auc_does_not_depend_on_forward_batch_or_batch_mates(classifier, batch):
    inputs, targets = batch
    attributions = gradient_x_input(classifier.net, inputs, targets)
    kwargs = dict(n_steps=4, substrate="blur")
    for metric in (deletion_auc, insertion_auc):
        reference = metric(classifier.net, inputs, targets, attributions, forward_batch=64, **kwargs)
        torch.testing.assert_close(metric(classifier.net, inputs, targets, attributions, forward_batch=4, **kwargs),
                                   reference, rtol=1e-5, atol=1e-7)
        alone = metric(classifier.net, inputs[1:2], targets[1:2], attributions[1:2], **kwargs)
        torch.testing.assert_close(alone, reference[1:2], rtol=1e-5, atol=1e-7)
        assert ((reference > 0) & (reference < 1)).all()


def test_substrates():
    inputs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) / 100
    assert make_substrate(inputs, "zero").abs().sum().item() == 0
    mean = make_substrate(inputs, "mean")
    torch.testing.assert_close(mean[1, 2, 5, 5], inputs[1, 2].mean())
    torch.testing.assert_close(mean[0, 0], inputs[0, 0].mean().expand(8, 8))
    # A blur keeps a constant image and smooths a point.
    constant = torch.full((1, 3, 8, 8), 0.7)
    torch.testing.assert_close(make_substrate(constant, "blur", 1.0, 5), constant)
    point = torch.zeros((1, 1, 9, 9))
    point[0, 0, 4, 4] = 1.0
    blurred = make_substrate(point, "blur", 1.0, 5)
    assert blurred.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert blurred[0, 0, 4, 4].item() == pytest.approx((1 / sum(math.exp(-0.5 * d * d) for d in range(-2, 3))) ** 2)
    with pytest.raises(ValueError, match="substrate"):
        make_substrate(inputs, "noise")


def test_the_registered_directions_are_the_way_a_faithful_map_scores():
    # PERFECT holds each pixel's exact contribution to the logit; UNRELATED ranks the pixels that matter least
    # first and is no multiple of the weights. "Better" must be the way the registry says, for every column.
    net, targets = linear_net(WEIGHTS), torch.tensor([0])
    unrelated = torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]])

    def scores(attributions: torch.Tensor) -> dict[str, float]:
        return {
            "infidelity": infidelity(net, ONES, targets, attributions, [3], n_perturb_samples=8, noise_std=0.1).item(),
            "deletion_auc": deletion_auc(net, ONES, targets, attributions, n_steps=4, substrate="zero").item(),
            "insertion_auc": insertion_auc(net, ONES, targets, attributions, n_steps=4, substrate="zero").item(),
        }

    good, bad = scores(PERFECT), scores(unrelated)
    columns = [column for name in ("infidelity", "deletion", "insertion") for column in metric_spec(name).columns]
    assert [column.name for column in columns] == list(good)
    for column in columns:
        assert good[column.name] != pytest.approx(bad[column.name], abs=1e-3), column.name
        assert column.direction == ("lower" if good[column.name] < bad[column.name] else "higher"), column.name
