"""Model-parameter randomisation: the copy's top blocks are re-initialised from the seed and nothing else changes;
the similarity scores equal scipy's Spearman and skimage's SSIM; a gradient method's maps change, a model-blind
map does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from skimage.metrics import structural_similarity

from xcv_batch.errors import ConfigError
from xcv_batch.metrics.registry import metric_spec
from xcv_batch.methods import build_method
from xcv_batch.methods.guided_gradcam import GuidedGradCam
from xcv_batch.methods.settings import GuidedGradCamSettings, IntegratedGradientsSettings
from xcv_batch.methods.guided_backprop import SwitchableReLU
from xcv_batch.metrics.randomisation import (
    RANDOMISATION_SPEARMAN_THRESHOLD,
    average_ranks,
    map_similarity,
    parameterised_blocks,
    passes_randomisation,
    randomised_copy,
    spearman,
    ssim,
)


@pytest.fixture(scope="module")
def batch(classifier):
    g = torch.Generator().manual_seed(1)
    inputs = classifier.preprocessing.normalize(torch.rand((2, 3, 32, 32), generator=g))
    return inputs, torch.tensor([3, 500])


def block_of(name: str) -> str:
    return name.split(".")[0]


# ---------------------------------------------------------------------------------------------- randomised copy
def test_blocks_count_from_the_output(classifier):
    assert parameterised_blocks(classifier.net) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_top_blocks_are_reinitialised_and_the_rest_kept(classifier):
    original = {k: v.clone() for k, v in classifier.net.state_dict().items()}
    copy = randomised_copy(classifier, depth=2, seed=7)
    for name, value in copy.net.state_dict().items():
        if block_of(name) in ("fc", "layer4") and name.endswith(("conv1.weight", "conv2.weight", "fc.weight")):
            assert not torch.equal(value, original[name]), name
        elif block_of(name) not in ("fc", "layer4"):
            assert torch.equal(value, original[name]), name
    # The original is untouched, and the copy is a classifier ready for attribution like the original.
    for name, value in classifier.net.state_dict().items():
        assert torch.equal(value, original[name]), name
    assert not copy.net.training
    assert not any(p.requires_grad for p in copy.net.parameters())
    assert GuidedGradCam(copy, GuidedGradCamSettings()).layer_name == "layer4"  # the copy keeps Grad-CAM's layer
    assert "top 2 blocks re-initialised (seed 7)" in copy.weights


def test_reinitialisation_is_deterministic_and_cascades(classifier):
    first = randomised_copy(classifier, depth=2, seed=7).net.state_dict()
    again = randomised_copy(classifier, depth=2, seed=7).net.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other_seed = randomised_copy(classifier, depth=2, seed=8).net.state_dict()
    assert not torch.equal(first["fc.weight"], other_seed["fc.weight"])
    # A deeper cascade only adds blocks: fc gets the same random weights at depth 1 and 2.
    shallow = randomised_copy(classifier, depth=1, seed=7).net.state_dict()
    assert torch.equal(shallow["fc.weight"], first["fc.weight"])
    assert torch.equal(shallow["layer4.0.conv1.weight"], classifier.net.state_dict()["layer4.0.conv1.weight"])
    # The same draws as the module's own init under that seed, whatever the global RNG did before.
    torch.manual_seed(1234)
    assert torch.equal(randomised_copy(classifier, depth=1, seed=7).net.state_dict()["fc.weight"], first["fc.weight"])


def test_depth_out_of_range_names_the_key(classifier):
    for depth in (0, 8):
        with pytest.raises(ConfigError, match="metrics.randomisation.depth.*between 1 and 7"):
            randomised_copy(classifier, depth=depth, seed=0)


def test_the_copy_has_its_own_guided_switch(classifier, batch):
    original = GuidedGradCam(classifier, GuidedGradCamSettings())  # makes the original's ReLUs switchable
    copy = randomised_copy(classifier, depth=1, seed=3)
    on_copy = GuidedGradCam(copy, GuidedGradCamSettings())
    assert on_copy.switch is not original.switch
    relus = [m for m in copy.net.modules() if isinstance(m, SwitchableReLU)]
    assert relus and all(m.switch is on_copy.switch for m in relus)
    assert all(m.switch is original.switch for m in classifier.net.modules() if isinstance(m, SwitchableReLU))

    inputs, targets = batch[0][:1], batch[1][:1]

    def input_gradient(clf):
        x = inputs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(clf.net(x).gather(1, targets.view(-1, 1)).sum(), x)
        return grad

    plain = input_gradient(classifier)
    with on_copy.switch.enabled():
        assert not original.switch.guided
        # equal up to the CPU kernels' run-to-run rounding (their reductions are not bitwise reproducible)
        torch.testing.assert_close(input_gradient(classifier), plain, rtol=0, atol=1e-4 * plain.abs().max().item())
        guided_copy = input_gradient(copy)
    # The copy's switch did act on the copy: its guided gradient differs from its plain one.
    assert not torch.allclose(guided_copy, input_gradient(copy))


# ---------------------------------------------------------------------------------------------- map similarity
def test_average_ranks_equal_scipy_with_ties():
    values = torch.tensor([[3.0, 1.0, 3.0, 0.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(average_ranks(values).numpy(), rankdata(values.numpy(), axis=1))


def test_spearman_equals_scipy_on_small_maps_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn((3, 3, 12, 12), generator=g)
    b = a + torch.randn((3, 3, 12, 12), generator=g)
    b[1] = b[1].round()  # many ties, as Guided Grad-CAM's zeros and LIME's superpixels make
    a[2, :, :6] = 0.0
    ours = map_similarity(a, b)["randomisation_spearman"]
    sa, sb = a.abs().sum(1).flatten(1).numpy(), b.abs().sum(1).flatten(1).numpy()
    expected = [spearmanr(sa[i], sb[i]).statistic for i in range(3)]
    # float64 inside, float32 out: agreement to float32 rounding.
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert torch.isnan(spearman(torch.ones((1, 5)), torch.arange(5.0).view(1, 5))).all()


def test_ssim_equals_skimage_gaussian_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 20, 16), generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.rand((2, 20, 16), generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        expected = structural_similarity(x[i].numpy(), y[i].numpy(), data_range=1.0, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
        # Same float64 arithmetic, summed in a different order.
        assert ours[i].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="11 px"):
        ssim(x[:, :10, :10], y[:, :10, :10])


def test_map_similarity_ssim_uses_min_max_normalised_absolute_maps():
    g = torch.Generator().manual_seed(2)
    a = torch.randn((2, 3, 16, 16), generator=g)
    b = torch.randn((2, 3, 16, 16), generator=g)
    ours = map_similarity(a, b)["randomisation_ssim"]
    for i in range(2):
        sa, sb = a[i].abs().sum(0).double().numpy(), b[i].abs().sum(0).double().numpy()
        sa, sb = (sa - sa.min()) / np.ptp(sa), (sb - sb.min()) / np.ptp(sb)
        expected = structural_similarity(sa, sb, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(expected, rel=1e-6)
    # Scale and sign do not matter; the same map is identical to itself.
    same = map_similarity(a, -3 * a)
    torch.testing.assert_close(same["randomisation_spearman"], torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(same["randomisation_ssim"], torch.ones(2), rtol=0, atol=1e-6)


def test_gradient_maps_change_under_randomisation_and_a_model_blind_map_does_not(classifier, batch):
    inputs, targets = batch
    settings = IntegratedGradientsSettings(n_steps=4)
    randomised = randomised_copy(classifier, depth=len(parameterised_blocks(classifier.net)), seed=5)
    trained_maps = build_method("integrated_gradients", classifier, settings, 8).attribute(inputs, targets, [0, 0])
    random_maps = build_method("integrated_gradients", randomised, settings, 8).attribute(inputs, targets, [0, 0])
    scores = map_similarity(trained_maps, random_maps)
    # IG keeps some of the input's structure (x · gradient), but far from all of it.
    assert (scores["randomisation_spearman"] < 0.8).all()
    assert (scores["randomisation_ssim"] < 0.5).all()
    # A "method" that ignores the model (the input's magnitude, an edge-detector-like map) gives the same map on both
    # models, so its similarity is 1 and it fails the check.
    blind = map_similarity(inputs.abs(), inputs.abs())
    assert not passes_randomisation(blind["randomisation_spearman"].median().item())
    assert passes_randomisation(0.2) and not passes_randomisation(float("nan"))
    assert RANDOMISATION_SPEARMAN_THRESHOLD == 0.5


def test_the_registered_directions_are_the_way_a_map_that_depends_on_the_model_scores(classifier, batch):
    # A map that explains the model (IG, trained vs fully randomised) is the better one; a model-blind map (the
    # input's magnitude, the same on both models) the worse: "better" must be the way the registry says.
    inputs, targets = batch
    settings = IntegratedGradientsSettings(n_steps=4)
    randomised = randomised_copy(classifier, depth=len(parameterised_blocks(classifier.net)), seed=5)
    trained_maps = build_method("integrated_gradients", classifier, settings, 8).attribute(inputs, targets, [0] * 3)
    random_maps = build_method("integrated_gradients", randomised, settings, 8).attribute(inputs, targets, [0] * 3)
    model_dependent = map_similarity(trained_maps, random_maps)
    model_blind = map_similarity(inputs.abs(), inputs.abs())
    columns = metric_spec("randomisation").columns
    assert [column.name for column in columns] == list(model_dependent) == ["randomisation_spearman", "randomisation_ssim"]
    for column in columns:
        good, bad = model_dependent[column.name].median().item(), model_blind[column.name].median().item()
        assert good != pytest.approx(bad, abs=0.1), column.name
        assert column.direction == ("lower" if good < bad else "higher"), column.name
