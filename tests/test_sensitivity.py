"""Max-Sensitivity equals Captum's ``sensitivity_max`` given the same perturbations, batched or not."""

from __future__ import annotations

import pytest
import torch
from captum.metrics import sensitivity_max as captum_sensitivity_max

from xcv_batch.methods.base import AttributionMethod
from xcv_batch.metrics.sensitivity import sensitivity_max, uniform_perturbations
from xcv_batch.seeding import perturbation_seed


class GradientTimesInput(AttributionMethod):
    """A small deterministic method for the metric's tests: x · ∂f_t/∂x."""

    name = "gradient_x_input"
    settings_type = dict

    def attribute(self, inputs, targets, seeds):
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.classifier.net(x).gather(1, targets.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(out, x)
        return (grad * x).detach()


class SeededNoise(AttributionMethod):
    """A stochastic 'method' whose map is noise from its seed: shows which seed each copy gets."""

    name = "seeded_noise"
    settings_type = dict
    stochastic = True

    def attribute(self, inputs, targets, seeds):
        maps = []
        for x, seed in zip(inputs, seeds):
            g = torch.Generator().manual_seed(int(seed))
            maps.append(torch.randn(x.shape, generator=g))
        return torch.stack(maps)


def test_equals_captum_with_the_same_perturbations(classifier, batch):
    inputs, targets = batch
    method = GradientTimesInput(classifier, {}, forward_batch=4)
    n, radius = 4, 0.05
    noise_seeds = [11, 12, 13]
    perturbed = uniform_perturbations(inputs, noise_seeds, n, radius)
    # Our perturbations are uniform in the L∞ ball around each input, image-major like Captum's repeat_interleave.
    offsets = perturbed - inputs.repeat_interleave(n, dim=0)
    assert offsets.abs().max() <= radius + 1e-6
    assert offsets.abs().max() > 0.9 * radius

    ours = sensitivity_max(
        method, inputs, targets, seeds=[0, 0, 0], attributions=method.attribute(inputs, targets, [0, 0, 0]),
        noise_seeds=noise_seeds, n_perturb_samples=n, perturb_radius=radius, batch_images=5,
    )
    def explain(x, target):
        # Captum passes the clean inputs as a tuple and expects a tuple back; the perturbed ones as given.
        if isinstance(x, tuple):
            return (method.attribute(x[0], target, [0] * len(target)),)
        return method.attribute(x, target, [0] * len(target))

    expected = captum_sensitivity_max(
        explain,
        inputs,
        perturb_func=lambda expanded: perturbed,
        n_perturb_samples=n,
        target=targets,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0)
    assert (ours > 0).all()


@pytest.mark.parametrize("batch_images", [1, 3, 7, 100])
def test_does_not_depend_on_how_copies_are_batched(classifier, batch, batch_images):
    inputs, targets = batch
    method = GradientTimesInput(classifier, {}, forward_batch=4)
    attributions = method.attribute(inputs, targets, [0, 0, 0])
    common = dict(seeds=[0, 0, 0], attributions=attributions, noise_seeds=[5, 6, 7], n_perturb_samples=3,
                  perturb_radius=0.02)
    reference = sensitivity_max(method, inputs, targets, batch_images=2, **common)
    torch.testing.assert_close(sensitivity_max(method, inputs, targets, batch_images=batch_images, **common),
                               reference, rtol=1e-5, atol=0)


def test_an_image_alone_gets_the_value_it_gets_in_a_batch(classifier, batch):
    inputs, targets = batch
    method = GradientTimesInput(classifier, {}, forward_batch=4)
    attributions = method.attribute(inputs, targets, [0, 0, 0])
    together = sensitivity_max(method, inputs, targets, [0, 0, 0], attributions, [5, 6, 7], 3, 0.02)
    alone = sensitivity_max(method, inputs[1:2], targets[1:2], [0], attributions[1:2], [6], 3, 0.02)
    torch.testing.assert_close(alone, together[1:2], rtol=1e-5, atol=0)


def test_stochastic_methods_explain_each_copy_with_its_own_derived_seed(classifier, batch):
    inputs, targets = batch
    method = SeededNoise(classifier, {}, forward_batch=4)
    seeds = [100, 200, 300]
    attributions = method.attribute(inputs, targets, seeds)
    ours = sensitivity_max(method, inputs, targets, seeds, attributions, [1, 2, 3], 2, 0.02)
    # By hand: copy j of image i is explained with perturbation_seed(seed_i, j).
    for i, seed in enumerate(seeds):
        ref = attributions[i].flatten()
        changes = [
            torch.linalg.vector_norm(ref - method.attribute(inputs[i:i + 1], targets[i:i + 1],
                                                            [perturbation_seed(seed, j)])[0].flatten())
            / torch.linalg.vector_norm(ref)
            for j in range(2)
        ]
        assert ours[i].item() == pytest.approx(max(changes).item(), rel=1e-6)


def test_zero_map_counts_its_norm_as_one(classifier, batch):
    inputs, targets = batch

    class Zeros(AttributionMethod):
        name, settings_type = "zeros", dict

        def attribute(self, inputs, targets, seeds):
            return torch.zeros_like(inputs)

    method = Zeros(classifier, {}, forward_batch=4)
    values = sensitivity_max(method, inputs, targets, [0] * 3, torch.zeros_like(inputs), [1, 2, 3], 2, 0.02)
    assert values.tolist() == [0.0, 0.0, 0.0]
