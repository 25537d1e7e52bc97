"""Ground-truth masks: the manifest's optional ``mask_path`` column, and masks preprocessed like their images."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from xcv_batch.data.sources import ImageRecord, list_images
from xcv_batch.data.images import load_image, load_mask
from xcv_batch.errors import ImageError
from xcv_batch.models.classifier import Preprocessing

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PRE = Preprocessing(resize_size=73, crop_size=64, mean=MEAN, std=STD)


def save(path, image: Image.Image) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return path


def square_mask(width: int = 64, height: int = 64, box=(20, 12, 41, 29)) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = True
    return mask


def nearest_reference(mask: np.ndarray) -> torch.Tensor:
    """torchvision's preset with nearest interpolation, on the mask as an RGB image: the independent reference."""
    preset = ImageClassification(crop_size=64, resize_size=73, mean=(0, 0, 0), std=(1, 1, 1),
                                 interpolation=InterpolationMode.NEAREST)
    rgb = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").convert("RGB")
    return preset(rgb)[0] > 0.5


# ------------------------------------------------------------------------------------------ manifests


def test_csv_mask_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    manifest = tmp_path / "data" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,mask_path\nimages/a.png,1,masks/a.png\nb.png,0,\n007.png,2,001.png\n")
    monkeypatch.chdir(tmp_path)  # relative mask paths must not depend on the working directory
    folder = str(tmp_path / "data")
    assert list_images(str(manifest)) == [
        ImageRecord("007.png", f"{folder}/007.png", 2, f"{folder}/001.png"),  # numeric-looking paths stay text
        ImageRecord("b.png", f"{folder}/b.png", 0, None),  # an empty cell: no mask
        ImageRecord("images/a.png", f"{folder}/images/a.png", 1, f"{folder}/masks/a.png"),
    ]


def test_parquet_mask_paths_and_manifests_without_masks(tmp_path):
    table = pa.table({"path": ["a.png", "b.png"], "mask_path": ["m/a.png", None]})
    pq.write_table(table, tmp_path / "m.parquet")
    records = list_images(str(tmp_path / "m.parquet"))
    assert [(r.image_id, r.mask_path) for r in records] == [("a.png", str(tmp_path / "m" / "a.png")), ("b.png", None)]

    (tmp_path / "plain.csv").write_text("path,label\na.png,3\n")
    (tmp_path / "list.txt").write_text("a.png\n")
    assert list_images(str(tmp_path / "plain.csv")) == [ImageRecord("a.png", str(tmp_path / "a.png"), 3, None)]
    assert list_images(str(tmp_path / "list.txt"))[0].mask_path is None


def test_url_manifest_mask_paths_stay_urls_and_load():
    import fsspec
    fs = fsspec.filesystem("memory")
    root = "memory://xcv-mask-bucket"
    try:
        buffer = io.BytesIO()
        Image.fromarray(np.where(square_mask(), 255, 0).astype(np.uint8), "L").save(buffer, "PNG")
        fs.pipe(f"{root}/d/masks/a.png", buffer.getvalue())
        fs.pipe(f"{root}/d/list.csv", b"path,mask_path\nimgs/a.png,masks/a.png\n")
        (record,) = list_images(f"{root}/d/list.csv")
        assert record.mask_path == f"{root}/d/masks/a.png"
        assert torch.equal(load_mask(record.mask_path, PRE), nearest_reference(square_mask()))
    finally:
        fs.rm("/xcv-mask-bucket", recursive=True)


# ------------------------------------------------------------------------------------------ load_mask


def test_load_mask_equals_torchvision_nearest_preprocessing(tmp_path):
    for size, box in (((64, 64), (20, 12, 41, 29)), ((80, 40), (0, 0, 30, 40)), ((40, 90), (5, 60, 39, 89))):
        mask = square_mask(*size, box=box)
        path = save(tmp_path / f"m{size[0]}x{size[1]}.png", Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)))
        loaded = load_mask(path, PRE)
        assert loaded.dtype == torch.bool and loaded.shape == (64, 64)
        assert torch.equal(loaded, nearest_reference(mask))


def test_mask_lines_up_with_its_image(tmp_path):
    # A white square on black: after the shared resize and crop, the mask covers the image's bright pixels.
    mask = square_mask(box=(10, 30, 30, 50))
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")
    pixels = load_image(save(tmp_path / "image.png", image), PRE)
    loaded = load_mask(save(tmp_path / "mask.png", Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))), PRE)
    bright = pixels[0] > 0.5
    iou = (bright & loaded).sum() / (bright | loaded).sum()
    assert loaded.sum() == 23 * 23  # 20 px at 73/64 scale = 22.8 px: nearest keeps 23 px a side
    assert iou > 0.9


def test_every_pixel_mode_thresholds_at_half(tmp_path):
    mask = square_mask()
    expected = nearest_reference(mask)
    grey = np.where(mask, 200, 100).astype(np.uint8)  # anti-aliased-looking levels on both sides of 128
    variants = {
        "L.png": Image.fromarray(grey, "L"),
        "one.png": Image.fromarray(mask).convert("1"),
        "rgba.png": Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").convert("RGBA"),
        "i16.png": Image.fromarray(np.where(mask, 65535, 0).astype(np.uint16)),
        "palette.gif": Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").convert("P"),
        "zero-one.png": Image.fromarray(mask.astype(np.uint8), "L"),  # a boolean array saved as 0/1 bytes
        "zero-one-i32.tif": Image.fromarray(mask.astype(np.int32)),
    }
    for name, image in variants.items():
        assert torch.equal(load_mask(save(tmp_path / name, image), PRE), expected), name
    empty = save(tmp_path / "empty_mask.png", Image.new("L", (64, 64), 0))
    assert int(load_mask(empty, PRE).sum()) == 0


def test_mask_follows_exif_orientation_like_its_image(tmp_path):
    mask = square_mask(80, 40, box=(0, 0, 30, 40))  # the left part of a landscape mask
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180°: the mask lies on the right once turned upright
    image.save(tmp_path / "turned.png", exif=exif)
    assert torch.equal(load_mask(str(tmp_path / "turned.png"), PRE), nearest_reference(mask[::-1, ::-1]))


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty mask file"), (b"not an image at all", "mask is not an image"), (None, "cannot read file")],
)
def test_unreadable_masks_are_image_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_mask(str(path), PRE)
