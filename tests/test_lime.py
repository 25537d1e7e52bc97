"""Batched LIME equals the ``lime`` package, sample for sample, and does not depend on how it is batched."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm
from skimage import data as skdata
from skimage import transform
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from xcv_batch.methods.lime import (
    Lime,
    fill_colours,
    fit_weighted_ridge,
    kernel_weights,
    sample_rows,
    segmentation_images,
)
from xcv_batch.methods.settings import LimeSettings
from xcv_batch.models.classifier import build_classifier
from xcv_batch.methods.segmentation import consecutive_labels, segment, segment_batch

RESOLUTION = 48
# quickshift at lime's kernel_size=4 leaves 3-4 superpixels on a 48 px photo; kernel_size=1 gives ~30.
SETTINGS = LimeSettings(num_samples=64, kernel_size=1.0, max_dist=10.0)


@pytest.fixture(scope="module")
def classifier():
    return build_classifier("resnet18", "none", RESOLUTION, seed=0)


@pytest.fixture(scope="module")
def classifier64(classifier):
    """The same network in float64: our pipeline composes perturbed images in model-input space and lime in pixel
    space, so in float32 the two differ by input rounding; in float64 only the computation itself is compared."""
    return dataclasses.replace(classifier, net=copy.deepcopy(classifier.net).double())


@pytest.fixture(scope="module")
def photos(classifier):
    """chelsea, astronaut, coffee at 48 px as (3, 3, H, W) float32 model inputs."""
    pixels = [
        transform.resize(getattr(skdata, name)(), (RESOLUTION, RESOLUTION), anti_aliasing=True)
        for name in ("chelsea", "astronaut", "coffee")
    ]
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    return classifier.preprocessing.normalize(batch)


def predicted(classifier, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier.net(inputs).argmax(1)


def lime_package(classifier, image_hwc, target, seed, settings, hide_color=None):
    """lime 0.2.0.1 on one image → (segments, coefficient of every superpixel)."""

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        dtype = next(classifier.net.parameters()).dtype
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype)
        with torch.no_grad():
            logits = classifier.net(classifier.preprocessing.normalize(batch))
        return torch.softmax(logits.to(torch.float64), dim=1).numpy()

    segments = segment(image_hwc, settings, seed)
    explanation = LimeImageExplainer(settings.kernel_width, random_state=seed).explain_instance(
        image_hwc,
        classifier_fn,
        labels=(target,),
        top_labels=None,
        hide_color=hide_color,
        num_samples=settings.num_samples,
        batch_size=50,
        segmentation_fn=lambda image: segment(image, settings, seed),
        random_seed=seed,
    )
    coefficients = np.full(segments.max() + 1, np.nan)
    for feature, weight in explanation.local_exp[target]:
        coefficients[feature] = weight
    return segments, coefficients


def assert_matches_lime(classifier, inputs, settings, seed, lime_hide_color):
    target = int(predicted(classifier, inputs))
    method = Lime(classifier, settings, forward_batch=64)
    ours = method.attribute(inputs, torch.tensor([target]), [seed])[0].numpy()

    image = segmentation_images(inputs, classifier.preprocessing)[0]
    segments, expected = lime_package(classifier, image, target, seed, settings, lime_hide_color)
    assert method.last_num_segments == [len(expected)] and len(expected) > 10
    assert not np.isnan(expected).any()
    ours_per_feature = np.array([ours[0][segments == f].mean() for f in range(len(expected))])
    np.testing.assert_array_less(np.abs(ours_per_feature - expected) / np.abs(expected), 1e-4)
    # The map is those coefficients painted on the superpixels, the same in every channel.
    np.testing.assert_allclose(ours, np.broadcast_to(expected[segments], ours.shape), rtol=1e-4, atol=0)
    return ours


def test_equals_lime_package_with_mean_colour_fill(classifier64, photos):
    assert_matches_lime(classifier64, photos[:1].double(), SETTINGS, seed=7, lime_hide_color=None)


def test_float_hide_color_equals_lime_with_that_colour(classifier64, photos):
    settings = dataclasses.replace(SETTINGS, hide_color=0.5)
    # 0.5 in model-input space is this pixel colour, which lime (working in pixel space) broadcasts over the image.
    pixel_colour = 0.5 * np.array(classifier64.preprocessing.std) + np.array(classifier64.preprocessing.mean)
    assert_matches_lime(classifier64, photos[1:2].double(), settings, seed=3, lime_hide_color=pixel_colour)


def test_fill_colours_are_superpixel_means_or_the_constant():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 4, 5))
    segments = np.array([[0, 0, 1, 1, 2]] * 4)
    means = fill_colours(image, segments, "mean")
    assert means.shape == (3, 3)
    for f in range(3):
        np.testing.assert_allclose(means[:, f], image[:, segments == f].mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(fill_colours(image, segments, -1.25), np.full((3, 3), -1.25))
    with pytest.raises(ValueError, match="hide_color"):
        fill_colours(image, segments, "median")


def test_sample_rows_are_lime_data_labels_draw():
    seed, num_samples, segments = 1234, 17, np.arange(12).reshape(3, 4)
    image = np.zeros((3, 4, 3))
    lime_rows, _ = LimeImageExplainer(random_state=seed).data_labels(
        image, image, segments, lambda batch: np.zeros((len(batch), 2)), num_samples
    )
    rows = sample_rows(12, num_samples, seed)
    np.testing.assert_array_equal(rows, lime_rows)
    assert rows[0].tolist() == [1] * 12 and rows[1:].sum() not in (0, rows[1:].size)


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_closed_form_ridge_equals_sklearn_with_sample_weight(alpha):
    rng = np.random.default_rng(1)
    features = rng.integers(0, 2, size=(60, 9)).astype(np.float64)
    targets = features @ rng.normal(size=9) + rng.normal(scale=0.1, size=60)
    weights = rng.uniform(0.05, 1.0, size=60)
    reference = Ridge(alpha=alpha, fit_intercept=True).fit(features, targets, sample_weight=weights)
    coefficients, intercept = fit_weighted_ridge(
        torch.from_numpy(features), torch.from_numpy(targets), torch.from_numpy(weights), alpha
    )
    np.testing.assert_allclose(coefficients.numpy(), reference.coef_, rtol=1e-10, atol=1e-12)
    assert intercept.item() == pytest.approx(reference.intercept_, rel=1e-10)


def test_kernel_weights_equal_lime_kernel_on_sklearn_cosine_distance():
    rows = sample_rows(8, 40, seed=5)
    rows[3] = 0  # sklearn gives a zero row distance 1
    distances = pairwise_distances(rows, rows[0].reshape(1, -1), metric="cosine").ravel()
    expected = np.sqrt(np.exp(-(distances**2) / 0.25**2))
    ours = kernel_weights(torch.from_numpy(rows).double(), 0.25).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    assert ours[0] == pytest.approx(1.0) and ours[3] == pytest.approx(np.exp(-0.5 / 0.25**2))


def test_invariant_to_forward_batch_and_to_batch_companions(classifier, photos):
    settings = dataclasses.replace(SETTINGS, num_samples=30)
    targets = torch.tensor([int(predicted(classifier, photos[1:2])), 5, 321])
    batched_method = Lime(classifier, settings, forward_batch=13)
    together = batched_method.attribute(photos, targets[[1, 0, 2]], [11, 12, 13])
    images = segmentation_images(photos, classifier.preprocessing)
    assert batched_method.last_num_segments == [
        int(segment(image, settings, seed).max()) + 1 for image, seed in zip(images, [11, 12, 13])
    ]
    scale = together[1].abs().max().item()
    assert scale > 0
    for forward_batch in (1, 1000):
        alone = Lime(classifier, settings, forward_batch).attribute(photos[1:2], targets[:1], [12])
        torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-5 * scale)


def test_same_seed_reproduces_and_another_seed_differs(classifier, photos):
    settings = dataclasses.replace(SETTINGS, num_samples=24)
    method = Lime(classifier, settings, forward_batch=64)
    target = predicted(classifier, photos[2:3])
    first = method.attribute(photos[2:3], target, [21])
    again = method.attribute(photos[2:3], target, [21])
    other = method.attribute(photos[2:3], target, [22])
    assert first.dtype == torch.float32 and first.shape == photos[2:3].shape
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.05 * first.abs().max()


def test_slic_path_gives_consecutive_labels_and_matches_lime(classifier, photos):
    settings = dataclasses.replace(SETTINGS, segmentation="slic", n_segments=20, num_samples=40)
    images = segmentation_images(photos, classifier.preprocessing)
    for image in images:
        labels = segment(image, settings, seed=0)
        assert labels.min() == 0 and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
        assert labels.max() + 1 > 5
    # float32 this time, so agreement only up to input rounding (see classifier64).
    target = int(predicted(classifier, photos[:1]))
    ours = Lime(classifier, settings, 64).attribute(photos[:1], torch.tensor([target]), [4])[0].numpy()
    segments, expected = lime_package(classifier, images[0], target, 4, settings)
    painted = np.broadcast_to(expected[segments], ours.shape)
    np.testing.assert_allclose(ours, painted, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_consecutive_labels_relabels_in_order():
    labels = np.array([[5, 5, 9], [2, 9, 2]])
    np.testing.assert_array_equal(consecutive_labels(labels), [[1, 1, 2], [0, 2, 0]])


def test_segment_batch_equals_segment_per_image(classifier, photos):
    images = segmentation_images(photos, classifier.preprocessing)
    batch = segment_batch(images, SETTINGS, [1, 2, 3])
    for image, seed, labels in zip(images, [1, 2, 3], batch):
        np.testing.assert_array_equal(labels, segment(image, SETTINGS, seed))
    with pytest.raises(ValueError, match="seeds"):
        segment_batch(images, SETTINGS, [1])


def test_quickshift_equals_lime_segmentation_algorithm_default(classifier, photos):
    """lime's own quickshift ignores its random_seed on this skimage (see xcv_batch/methods/segmentation.py), i.e. uses
    rng=42."""
    image = segmentation_images(photos[:1], classifier.preprocessing)[0]
    lime_segments = SegmentationAlgorithm("quickshift", kernel_size=1.0, max_dist=10.0, ratio=0.2, random_seed=3)(image)
    np.testing.assert_array_equal(segment(image, SETTINGS, seed=42), lime_segments)


def test_registered_as_stochastic_lime(classifier, photos):
    from xcv_batch.methods import method_class, method_spec

    spec = method_spec("lime")
    assert spec.stochastic and not spec.differentiates and spec.settings is LimeSettings and spec.label == "LIME"
    assert method_class("lime") is Lime and Lime.name == "lime" and Lime.stochastic
    with pytest.raises(ValueError, match="seeds"):
        Lime(classifier, SETTINGS).attribute(photos[:2], torch.tensor([0, 1]), [1])
