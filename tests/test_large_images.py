"""Large images that PIL allows: a JPEG is decoded reduced (its decoder's 1/2–1/8 scaling) to no less than 4× the
resized short side, without PIL's decompression-bomb warning, and preprocesses to within a few levels of the full
decode; the bomb guard still refuses what is over twice PIL's limit, and formats decoded whole still warn."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import skimage
from PIL import Image

from xcv_batch.data.images import DECODE_MARGIN, decode_image, load_image, preprocess
from xcv_batch.errors import ImageError
from xcv_batch.models.classifier import Preprocessing

PRE = Preprocessing(resize_size=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
#: Per pixel, in levels of 255: DECODE_MARGIN's measurement (max 4, mean 0.3 at 224 px), with a level to spare.
MAX_LEVELS, MEAN_LEVELS = 5, 0.5


def large(name: str, size: tuple[int, int], tile: bool = False) -> Image.Image:
    """A skimage photo enlarged to ``size``, or a texture tiled to it (high frequencies at full scale)."""
    image = Image.open(os.path.join(SKIMAGE_DATA, name)).convert("RGB")
    if not tile:
        return image.resize(size, Image.BICUBIC)
    canvas = Image.new("RGB", size)
    for x in range(0, size[0], image.width):
        for y in range(0, size[1], image.height):
            canvas.paste(image, (x, y))
    return canvas


def full_decode_reference(path: str):
    """The preset on the whole decoded image (what the run computed before reducing), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return preprocess(decode_image(path), PRE)


@pytest.mark.parametrize("name, tile", [("chelsea.png", False), ("grass.png", True)])
def test_a_large_jpeg_decodes_reduced_without_warning_and_close_to_the_full_decode(tmp_path, monkeypatch, name,
                                                                                    tile):
    path = str(tmp_path / "large.jpg")
    large(name, (2731, 2048), tile).save(path, quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)  # 5.6 M pixels: PIL warns (and errors over 8 M)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert decode_image(path, DECODE_MARGIN * PRE.resize_size).size == (1366, 1024)  # the decoder's 1/2 scale
        reduced = load_image(path, PRE)
    difference = np.abs(reduced.numpy() - full_decode_reference(path).numpy()) * 255
    assert reduced.shape == (3, 224, 224)
    assert difference.max() <= MAX_LEVELS and difference.mean() <= MEAN_LEVELS, (difference.max(), difference.mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_turned_or_flipped_large_jpeg_keeps_the_full_decodes_geometry(tmp_path, orientation):
    path = str(tmp_path / "turned.jpg")
    exif = Image.Exif()
    exif[0x0112] = orientation  # e.g. 6: stored on its side, rotated 90° when shown
    large("rocket.jpg", (3073, 2049)).save(path, quality=95, exif=exif)  # odd: the reduced size is rounded up
    turned = orientation >= 5
    assert decode_image(path, DECODE_MARGIN * PRE.resize_size).size == ((1025, 1537) if turned else (1537, 1025))
    difference = np.abs(load_image(path, PRE).numpy() - full_decode_reference(path).numpy()) * 255
    assert difference.max() <= MAX_LEVELS and difference.mean() <= MEAN_LEVELS, (difference.max(), difference.mean())


def test_a_small_jpeg_is_decoded_whole(tmp_path):
    path = str(tmp_path / "small.jpg")
    large("chelsea.png", (1500, 1000)).save(path, quality=95)  # short side under 2 × 4 × 256: no reduction
    assert decode_image(path, DECODE_MARGIN * PRE.resize_size).size == (1500, 1000)
    assert np.array_equal(load_image(path, PRE).numpy(), full_decode_reference(path).numpy())


def test_over_twice_the_limit_a_jpeg_is_still_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "huge.jpg")
    large("chelsea.png", (2731, 2048)).save(path, quality=80)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)
    with pytest.raises(ImageError, match="decompression bomb: 5593088 pixels exceed the limit of 4000000"):
        load_image(path, PRE)


def test_formats_decoded_whole_still_warn(tmp_path, monkeypatch):
    path = str(tmp_path / "large.png")
    large("chelsea.png", (1200, 800)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)
    with pytest.warns(Image.DecompressionBombWarning):
        load_image(path, PRE)
