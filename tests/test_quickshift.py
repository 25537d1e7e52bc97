"""The torch quickshift gives scikit-image's labels, and LIME with it gives the maps LIME with scikit-image gives.

Every comparison counts the pixels whose label differs. The port sums in scikit-image's order and takes the Lab image
from scikit-image itself, so the only source of a difference is the last bit of ``exp`` (torch's against the C
library's); on this CPU none of the images below differs in a single pixel, and the tests hold that.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import transform
from skimage.segmentation import quickshift as skimage_quickshift

from xcv_batch.errors import ConfigError
from xcv_batch.groundtruth.synth import class_list, render_image
from xcv_batch.methods.lime import Lime, resolve_segmenter, segment_on_device
from xcv_batch.methods.quickshift import quickshift, tie_break_noise
from xcv_batch.methods.segmentation import segment
from xcv_batch.methods.settings import LimeSettings
from xcv_batch.models.classifier import build_classifier

LIME_DEFAULTS = dict(kernel_size=4.0, max_dist=200.0, ratio=0.2)  # lime's SegmentationAlgorithm('quickshift')
FINE = dict(kernel_size=1.0, max_dist=6.0, ratio=0.5)  # many small superpixels: many max_dist cuts and roots
MEDIUM = dict(kernel_size=2.0, max_dist=10.0, ratio=1.0)


def six_photos(size: int) -> list[np.ndarray]:
    """scikit-image's colour photos (and the camera as grey RGB) resized to size × size, float64 in [0, 1]."""
    photos = [getattr(skdata, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    photos.append(np.repeat(skdata.camera()[..., None], 3, axis=2))
    return [transform.resize(photo, (size, size), anti_aliasing=True) for photo in photos]


def varied_images() -> list[np.ndarray]:
    """56 small images: the synthetic set, textures, flat and two-tone regions, odd shapes, 8-bit quantised colours."""
    rng = np.random.default_rng(7)
    images: list[np.ndarray] = []
    classes = class_list(4)
    for index in range(24):  # the project's synthetic benchmark images (PNG-quantised: many exact colour ties)
        size = (16, 24, 32)[index % 3]
        image, _ = render_image(np.random.default_rng(index), classes[index % len(classes)], size)
        images.append(np.asarray(image, dtype=np.float64) / 255.0)
    for size in (16, 20, 28, 32):
        images.append(rng.random((size, size, 3)))  # white noise
        images.append(np.full((size, size, 3), rng.random(3)))  # one flat colour: only the noise breaks ties
        two_tone = np.zeros((size, size, 3))
        two_tone[:, size // 3:] = rng.random(3)
        images.append(two_tone)  # flat regions with an edge
        grid = np.indices((size, size)).sum(0)
        images.append(np.stack([np.sin(grid / 2.0), np.cos(grid / 3.0), (grid % 5) / 4.0], -1) * 0.5 + 0.5)
        quantised = np.round(rng.random((size, size, 3)) * 4) / 4
        images.append(quantised)  # five levels a channel: exact distance ties everywhere
    for height, width in ((12, 31), (31, 12), (9, 9), (17, 40), (5, 26), (40, 7)):  # not square, below the window
        images.append(transform.resize(skdata.coffee(), (height, width), anti_aliasing=True))
    assert len(images) == 50 and len({image.shape for image in images}) > 5
    return images + [np.zeros((16, 16, 3)), np.ones((16, 16, 3)), rng.random((1, 1, 3)), rng.random((3, 1, 3)),
                     rng.random((2, 19, 3)), np.eye(16)[..., None].repeat(3, 2)]


def differing_share(images: list[np.ndarray], parameters: dict, seeds: list[int], together: bool) -> float:
    """Share of all pixels whose torch label differs from scikit-image's (same-sized images run as one batch)."""
    differing = total = 0
    if together:
        ours = list(quickshift(images, seeds, "cpu", **parameters).numpy())
    else:
        ours = [quickshift([image], [seed], "cpu", **parameters).numpy()[0] for image, seed in zip(images, seeds)]
    for image, seed, labels in zip(images, seeds, ours):
        reference = skimage_quickshift(image, rng=seed, **parameters)
        assert labels.shape == reference.shape and labels.dtype == np.int64
        differing += int((labels != reference).sum())
        total += reference.size
    return differing / total


@pytest.mark.parametrize("parameters", [LIME_DEFAULTS, MEDIUM, FINE], ids=["lime", "medium", "fine"])
def test_six_photos_equal_skimage_as_one_batch(parameters):
    images = six_photos(48)
    assert differing_share(images, parameters, seeds=[3, 1, 4, 1, 5, 9], together=True) == 0.0


@pytest.mark.parametrize("parameters", [LIME_DEFAULTS, MEDIUM, FINE], ids=["lime", "medium", "fine"])
def test_varied_images_equal_skimage(parameters):
    images = varied_images()
    share = differing_share(images, parameters, seeds=list(range(len(images))), together=False)
    assert share == 0.0


@pytest.mark.slow
def test_six_photos_at_224_px_with_lime_defaults_equal_skimage():
    """The seed's setting: 224 px, lime's 4 / 200 / 0.2 (~30-45 superpixels an image)."""
    assert differing_share(six_photos(224), LIME_DEFAULTS, seeds=list(range(6)), together=True) == 0.0


def test_labels_are_consecutive():
    labels = quickshift(six_photos(32)[:1], [0], "cpu", **FINE).numpy()[0]
    assert labels.max() > 5
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_seed_only_breaks_ties():
    """On a flat image every density ties; the seeded noise alone decides the roots, as in scikit-image."""
    flat = np.full((20, 20, 3), 0.4)
    for seed in (0, 1):
        ours = quickshift([flat], [seed], "cpu", **FINE).numpy()[0]
        assert np.array_equal(ours, skimage_quickshift(flat, rng=seed, **FINE))
    assert not np.array_equal(
        quickshift([flat], [0], "cpu", **FINE).numpy()[0], quickshift([flat], [1], "cpu", **FINE).numpy()[0]
    )


def test_tie_break_noise_is_skimages_default_rng_stream():
    noise = tie_break_noise(3, 4, [5, 6])
    assert np.array_equal(noise[1], np.random.default_rng(6).normal(scale=0.00001, size=(3, 4)))


def test_batch_equals_one_image_at_a_time():
    images = six_photos(24)
    together = quickshift(images, [0, 1, 2, 3, 4, 5], "cpu", **MEDIUM).numpy()
    for i, image in enumerate(images):
        assert np.array_equal(together[i], quickshift([image], [i], "cpu", **MEDIUM).numpy()[0])


def test_bad_arguments_raise_one_line():
    image = np.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="seeds"):
        quickshift([image, image], [0], "cpu")
    with pytest.raises(ValueError, match="same-sized"):
        quickshift([image, np.zeros((9, 8, 3))], [0, 1], "cpu")
    with pytest.raises(ValueError, match="sigma"):
        quickshift([image], [0], "cpu", sigma=1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        quickshift([image], [0], "cpu", kernel_size=0.5)


# ------------------------------------------------------------------------------------------ LIME's segmenter key


def test_segmenter_key_is_checked():
    with pytest.raises(ConfigError, match="segmenter"):
        LimeSettings(segmenter="gpu").check()
    with pytest.raises(ConfigError, match="segmenter"):
        LimeSettings(segmenter="device", segmentation="slic").check()
    LimeSettings(segmenter="device").check()


def test_auto_segments_on_a_gpu_and_with_scikit_image_on_a_cpu():
    settings = LimeSettings()
    assert resolve_segmenter(settings, torch.device("cpu")) == "cpu"
    assert resolve_segmenter(settings, torch.device("cuda", 0)) == "device"
    assert resolve_segmenter(dataclasses.replace(settings, segmentation="slic"), torch.device("cuda", 0)) == "cpu"
    assert resolve_segmenter(dataclasses.replace(settings, segmenter="device"), torch.device("cpu")) == "device"
    assert resolve_segmenter(dataclasses.replace(settings, segmenter="cpu"), torch.device("cuda", 0)) == "cpu"


def test_device_segments_equal_the_cpu_segment_function():
    settings = LimeSettings(kernel_size=2.0, max_dist=10.0)
    images, seeds = six_photos(40), [11, 12, 13, 14, 15, 16]
    on_device = [ready.result() for ready in segment_on_device(images, settings, seeds, "cpu")]
    for image, seed, labels in zip(images, seeds, on_device):
        assert np.array_equal(labels, segment(image, settings, seed))


def test_lime_maps_with_the_device_segmenter_equal_those_with_scikit_image():
    """Same labels → the same superpixels, fills and samples → the same map, bit for bit."""
    classifier = build_classifier("resnet18", "none", 40, seed=0)
    pixels = torch.from_numpy(np.stack(six_photos(40)[:3])).permute(0, 3, 1, 2).float()
    inputs = classifier.preprocessing.normalize(pixels)
    targets = torch.tensor([1, 2, 3])
    maps = {}
    for segmenter in ("cpu", "device"):
        settings = LimeSettings(num_samples=32, kernel_size=1.0, max_dist=10.0, segmenter=segmenter)
        lime = Lime(classifier, settings, forward_batch=16)
        maps[segmenter] = lime.attribute(inputs, targets, seeds=[7, 8, 9])
        assert min(lime.last_num_segments) > 3
    assert torch.equal(maps["cpu"], maps["device"])
