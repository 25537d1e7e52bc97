"""Listing image sources, decoding every pixel mode, torchvision-equal preprocessing, and bad files as ImageErrors."""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from xcv_batch.data import images as data
from xcv_batch.data.sources import ImageRecord, list_images
from xcv_batch.data.images import decode_image, decode_many, load_image, preprocess, to_rgb
from xcv_batch.errors import DataError, ImageError
from xcv_batch.models.classifier import Preprocessing

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PRE = Preprocessing(resize_size=73, crop_size=64, mean=MEAN, std=STD)
SKIMAGE_DATA = os.path.join(os.path.dirname(__import__("skimage").__file__), "data")


def save(path, image: Image.Image, fmt: str | None = None, **options) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, fmt, **options)
    return path


def touch(path, content: bytes = b"") -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    return path


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def torchvision_reference(image: Image.Image, interpolation=InterpolationMode.BILINEAR) -> torch.Tensor:
    """The preset's output, un-normalised back to [0, 1]."""
    preset = ImageClassification(crop_size=64, resize_size=73, mean=MEAN, std=STD, interpolation=interpolation)
    normalised = preset(image)
    return normalised * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


def rgb_pixels(path) -> np.ndarray:
    return np.asarray(decode_image(str(path)))


def image_error(path, preprocessing: Preprocessing = PRE) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(str(path), preprocessing)
    return str(caught.value)


# --------------------------------------------------------------------------------------------- listing


@pytest.fixture
def folder(tmp_path):
    """A small tree: images at several depths and cases, plus things that must be skipped."""
    root = tmp_path / "images"
    touch(root / "a.png")
    touch(root / "sub" / "B.JPG")
    touch(root / "sub" / "d.TIFF")
    touch(root / "sub" / "deep" / "c.webp")
    touch(root / "broken.png", b"not decodable, but listed")
    touch(root / "notes.txt", b"skip me")
    touch(root / ".hidden.png")
    touch(root / ".cache" / "x.png")
    touch(root / "sub" / ".git" / "y.jpg")
    return root


def test_folder_is_recursive_sorted_and_skips_hidden_and_non_images(folder):
    records = list_images(str(folder))
    assert [r.image_id for r in records] == ["a.png", "broken.png", "sub/B.JPG", "sub/d.TIFF", "sub/deep/c.webp"]
    assert [r.path for r in records] == [str(folder / r.image_id) for r in records]
    assert all(os.path.isabs(r.path) and r.label is None for r in records)


def test_relative_folder_gives_absolute_paths(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    records = list_images("images/sub")
    assert [(r.image_id, r.path) for r in records] == [
        ("B.JPG", str(folder / "sub" / "B.JPG")),
        ("d.TIFF", str(folder / "sub" / "d.TIFF")),
        ("deep/c.webp", str(folder / "sub" / "deep" / "c.webp")),
    ]


def test_limit_takes_the_first_ids_after_sorting(folder):
    assert [r.image_id for r in list_images(str(folder), limit=2)] == ["a.png", "broken.png"]
    assert len(list_images(str(folder), limit=100)) == 5
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="positive integer"):
            list_images(str(folder), limit=bad)


def test_glob_ids_are_relative_to_the_pattern_prefix(folder, monkeypatch):
    recursive = list_images(str(folder / "sub" / "**" / "*"))
    assert [r.image_id for r in recursive] == ["B.JPG", "d.TIFF", "deep/c.webp"]
    assert recursive[2].path == str(folder / "sub" / "deep" / "c.webp")

    one_level = list_images(str(folder / "*" / "*.JPG"))
    assert [(r.image_id, r.path) for r in one_level] == [("sub/B.JPG", str(folder / "sub" / "B.JPG"))]

    monkeypatch.chdir(folder)
    assert [r.image_id for r in list_images("*.png")] == ["a.png", "broken.png"]


@pytest.mark.timeout(30)
def test_symlink_loops_are_not_followed_and_each_file_is_listed_once(tmp_path):
    root = tmp_path / "loops"
    (root / "a" / "b").mkdir(parents=True)
    for name in ("x.png", "a/y.png", "a/b/z.png"):
        Image.new("RGB", (4, 4)).save(root / name)
    os.symlink(root, root / "a" / "up")  # two loops: globbing ** through them never ends
    os.symlink(root / "a", root / "a" / "b" / "back")
    os.symlink(root / "x.png", root / "a" / "x-again.png")  # one file under two names
    expected = ["a/b/z.png", "a/y.png", "x.png"]
    assert [r.image_id for r in list_images(str(root / "**" / "*.png"))] == expected
    assert [r.image_id for r in list_images(str(root / "**"))] == expected
    assert [r.image_id for r in list_images(str(root))] == expected
    assert [r.image_id for r in list_images(str(root / "a" / "*" / "*.png"))] == ["b/z.png"]


def test_single_image_file_is_a_source(folder):
    assert list_images(str(folder / "sub" / "B.JPG")) == [ImageRecord("B.JPG", str(folder / "sub" / "B.JPG"))]


def test_txt_manifest_paths_are_relative_to_its_folder(folder, tmp_path, monkeypatch):
    outside = touch(tmp_path / "elsewhere" / "z.png")
    manifest = folder / "list.txt"
    manifest.write_text(f"# chosen images\n\nsub/deep/c.webp\n  a.png  \n./sub/B.JPG\n{outside}\n")
    monkeypatch.chdir(tmp_path)  # relative entries must not depend on the working directory
    records = list_images(str(manifest))
    assert [(r.image_id, r.path) for r in records] == [
        (outside, outside),  # outside the manifest's folder: the id is the full path
        ("a.png", str(folder / "a.png")),
        ("sub/B.JPG", str(folder / "sub" / "B.JPG")),
        ("sub/deep/c.webp", str(folder / "sub" / "deep" / "c.webp")),
    ]


def test_csv_manifest_with_labels(folder):
    manifest = folder / "labels.csv"
    manifest.write_text("path,label,comment\nsub/B.JPG,3,x\na.png,,y\n007.png,12,z\n")
    records = list_images(str(manifest))
    assert records == [
        ImageRecord("007.png", str(folder / "007.png"), 12),  # a numeric-looking path stays text
        ImageRecord("a.png", str(folder / "a.png"), None),
        ImageRecord("sub/B.JPG", str(folder / "sub" / "B.JPG"), 3),
    ]


def test_parquet_manifest_with_null_and_float_labels(folder):
    # pandas writes an int column with a gap as float64 with NaN; whole floats are accepted as class indices.
    table = pa.table({"path": ["a.png", "sub/d.TIFF", "sub/B.JPG"], "label": [5.0, float("nan"), 0.0]})
    pq.write_table(table, folder / "m.parquet")
    assert [(r.image_id, r.label) for r in list_images(str(folder / "m.parquet"))] == [
        ("a.png", 5),
        ("sub/B.JPG", 0),
        ("sub/d.TIFF", None),
    ]
    pq.write_table(pa.table({"path": ["a.png"]}), folder / "nolabel.parquet")
    assert list_images(str(folder / "nolabel.parquet")) == [ImageRecord("a.png", str(folder / "a.png"))]


def test_builtin_skimage_lists_the_natural_photos():
    records = list_images("builtin:skimage")
    assert [r.image_id for r in records] == [
        "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
    ]
    assert all(r.path == os.path.join(SKIMAGE_DATA, r.image_id) and os.path.isfile(r.path) for r in records)
    assert [r.image_id for r in list_images("builtin:skimage", limit=1)] == ["astronaut.png"]


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda root: str(root / "missing"), "does not exist"),
        (lambda root: str(root / "missing" / "*.png"), "does not exist"),
        (lambda root: "builtin:nothing", "not a builtin source"),
        (lambda root: str(root / "empty"), "no images found"),
        (lambda root: str(root / "*.gif"), "matched no image files"),
        (lambda root: str(root / "notes.txt"), "lists no images"),
        (lambda root: str(root / "README.md"), "not a manifest or an image"),
        (lambda root: str(root / "nopath.csv"), "no 'path' column"),
        (lambda root: str(root / "word.csv"), "label 'cat' is not an integer"),
        (lambda root: str(root / "half.parquet"), "label 2.5 is not an integer"),
        (lambda root: str(root / "emptypath.csv"), "empty path"),
        (lambda root: str(root / "dupes.txt"), "twice"),
        (lambda root: str(root / "dupes.csv"), "twice"),
        (lambda root: str(root / "binary.txt"), "not UTF-8 text"),
        (lambda root: str(root / "garbage.parquet"), "cannot read manifest"),
    ],
)
def test_unusable_sources_raise_data_error(tmp_path, make_source, message):
    root = tmp_path
    (root / "empty").mkdir()
    touch(root / "empty" / "readme.txt", b"no images here")
    (root / "notes.txt").write_text("# only comments\n\n")
    (root / "README.md").write_text("hi")
    (root / "nopath.csv").write_text("file,label\na.png,1\n")
    (root / "word.csv").write_text("path,label\na.png,1\nb.png,cat\n")
    pq.write_table(pa.table({"path": ["a.png"], "label": [2.5]}), root / "half.parquet")
    (root / "emptypath.csv").write_text('path,label\na.png,1\n"",2\n')
    (root / "dupes.txt").write_text("a.png\nsub/../a.png\n")
    (root / "dupes.csv").write_text("path\nb.png\n./b.png\n")
    touch(root / "binary.txt", b"\xff\xfe\x00\x81 not text")
    touch(root / "garbage.parquet", b"PAR1 but not really")
    with pytest.raises(DataError, match=message):
        list_images(make_source(root))


def test_duplicate_message_names_both_places(tmp_path):
    (tmp_path / "dupes.txt").write_text("# header\na.png\nsub/../a.png\n")
    with pytest.raises(DataError, match=r"'a.png' twice \(line 2 and line 3\)"):
        list_images(str(tmp_path / "dupes.txt"))


@pytest.fixture
def memory_bucket():
    import fsspec
    fs = fsspec.filesystem("memory")
    root = "memory://xcv-test-bucket"
    yield fs, root
    fs.rm("/xcv-test-bucket", recursive=True)


def test_url_sources_through_fsspec(memory_bucket, tmp_path):
    fs, root = memory_bucket
    photo = noise_rgb(30, 20)
    for name in ("imgs/one.png", "imgs/deep/two.png", "imgs/.hidden/three.png"):
        buffer = io.BytesIO()
        photo.save(buffer, "PNG")
        fs.pipe(f"{root}/{name}", buffer.getvalue())
    fs.pipe(f"{root}/imgs/list.csv", b"path,label\none.png,4\ndeep/two.png,\n")

    assert [(r.image_id, r.path) for r in list_images(f"{root}/imgs")] == [
        ("deep/two.png", f"{root}/imgs/deep/two.png"),
        ("one.png", f"{root}/imgs/one.png"),
    ]
    assert [r.image_id for r in list_images(f"{root}/imgs/*.png")] == ["one.png"]
    manifest = list_images(f"{root}/imgs/list.csv")
    assert [(r.image_id, r.path, r.label) for r in manifest] == [
        ("deep/two.png", f"{root}/imgs/deep/two.png", None),
        ("one.png", f"{root}/imgs/one.png", 4),
    ]
    local = save(tmp_path / "one.png", photo)
    assert torch.equal(load_image(manifest[1].path, PRE), load_image(local, PRE))
    assert image_error(f"{root}/imgs/missing.png").startswith("cannot read file")
    with pytest.raises(DataError, match="does not exist"):
        list_images(f"{root}/nothing")


# --------------------------------------------------------------------------------------------- decoding


def test_mode_1_and_L_become_gray_rgb(tmp_path):
    bilevel = Image.new("1", (4, 3), 0)
    bilevel.putpixel((1, 2), 1)
    pixels = rgb_pixels(save(tmp_path / "bilevel.png", bilevel))
    expected = np.zeros((3, 4, 3), np.uint8)
    expected[2, 1] = 255
    np.testing.assert_array_equal(pixels, expected)

    gray = Image.new("L", (4, 3), 77)
    np.testing.assert_array_equal(rgb_pixels(save(tmp_path / "gray.png", gray)), np.full((3, 4, 3), 77, np.uint8))


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    pixels = rgb_pixels(save(tmp_path / "rgba.png", rgba))
    assert pixels[0, 0].tolist() == [255, 255, 255]  # fully transparent → the white background
    assert pixels[0, 1].tolist() == [10, 20, 30]  # opaque → unchanged
    assert np.abs(pixels[0, 2].astype(int) - 127).max() <= 1  # half-transparent black over white

    gray_alpha = Image.new("LA", (2, 1))
    gray_alpha.putdata([(40, 0), (40, 255)])
    pixels = rgb_pixels(save(tmp_path / "la.png", gray_alpha))
    assert pixels[0].tolist() == [[255, 255, 255], [40, 40, 40]]


def _palette_image(mode: str) -> Image.Image:
    image = Image.new(mode, (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    if mode == "P":
        image.putdata([0, 1, 2])
    else:
        image.putdata([(0, 255), (1, 255), (2, 0)])
    return image


def test_palette_modes(tmp_path):
    pixels = rgb_pixels(save(tmp_path / "p.png", _palette_image("P")))
    assert pixels[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]

    # Palette index 2 marked transparent (a PNG tRNS chunk) → white.
    pixels = rgb_pixels(save(tmp_path / "p_trns.png", _palette_image("P"), transparency=2))
    assert pixels[0].tolist() == [[255, 0, 0], [0, 255, 0], [255, 255, 255]]

    path = save(tmp_path / "pa.tif", _palette_image("PA"))
    assert Image.open(path).mode == "PA"
    assert rgb_pixels(path)[0].tolist() == [[255, 0, 0], [0, 255, 0], [255, 255, 255]]


def test_cmyk_and_ycbcr(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 255, 255, 0), (0, 0, 0, 255)])
    path = save(tmp_path / "cmyk.tif", cmyk)
    assert Image.open(path).mode == "CMYK"
    assert rgb_pixels(path)[0].tolist() == [[255, 0, 0], [0, 0, 0]]

    ycbcr = Image.new("YCbCr", (2, 1), (200, 128, 128))  # neutral chroma → gray of the luma
    path = save(tmp_path / "ycbcr.tif", ycbcr)
    assert Image.open(path).mode == "YCbCr"
    assert rgb_pixels(path)[0].tolist() == [[200, 200, 200], [200, 200, 200]]


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(tmp_path / "gray16.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    assert rgb_pixels(path)[0, :, 0].tolist() == [0, 1, 128, 255]
    full = save(tmp_path / "white16.png", Image.fromarray(np.full((5, 7), 65535, np.uint16)))
    assert torch.equal(load_image(full, PRE), torch.ones(3, 64, 64))


def test_32_bit_int_and_float_modes(tmp_path):
    sixteen_bit_range = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    path = save(tmp_path / "int.tif", sixteen_bit_range)
    assert Image.open(path).mode == "I"
    assert rgb_pixels(path)[0, :, 0].tolist() == [0, 255]

    wide_range = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))  # stretched min..max
    assert rgb_pixels(save(tmp_path / "int_wide.tif", wide_range))[0, :, 0].tolist() == [0, 128, 255]

    fractions = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    path = save(tmp_path / "float.tif", fractions)
    assert Image.open(path).mode == "F"
    assert rgb_pixels(path)[0, :, 0].tolist() == [0, 64, 255]

    other = Image.fromarray(np.array([[-1.0, 1.0, 3.0]], dtype=np.float32))
    assert rgb_pixels(save(tmp_path / "float_wide.tif", other))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(tmp_path / "rotated.jpg", stored, "JPEG", quality=95, exif=exif.tobytes())

    upright = decode_image(path)
    assert upright.size == (20, 40)  # width and height swap
    pixels = np.asarray(upright).astype(int)
    assert np.abs(pixels[5, 10] - [255, 0, 0]).max() < 10  # the stored left half is now on top
    assert np.abs(pixels[35, 10] - [0, 0, 255]).max() < 10

    tensor = load_image(path, PRE)
    assert tensor[0, 0].min() > 0.9 and tensor[2, 0].max() < 0.1  # top row red
    assert tensor[2, -1].min() > 0.9 and tensor[0, -1].max() < 0.1  # bottom row blue


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    np.testing.assert_array_equal(rgb_pixels(path), np.asarray(frames[0]))


# --------------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg", "camera.png"])
def test_equals_torchvision_preset_on_real_photos(name):
    path = os.path.join(SKIMAGE_DATA, name)
    expected = torchvision_reference(Image.open(path).convert("RGB"))
    result = load_image(path, PRE)
    assert result.shape == (3, 64, 64) and result.dtype == torch.float32 and result.is_contiguous()
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    assert 0.0 <= result.min() and result.max() <= 1.0
    if name == "camera.png":  # grayscale: three equal channels
        assert torch.equal(result[0], result[1]) and torch.equal(result[1], result[2])


@pytest.mark.parametrize("size", [(5, 3), (2000, 20), (20, 2000), (64, 64), (333, 97)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_equals_torchvision_preset_at_any_size(tmp_path, size, interpolation):
    image = noise_rgb(*size, seed=sum(size))
    path = save(tmp_path / "noise.png", image)
    preprocessing = Preprocessing(73, 64, MEAN, STD, interpolation=interpolation)
    expected = torchvision_reference(image, InterpolationMode(interpolation))
    torch.testing.assert_close(load_image(path, preprocessing), expected, rtol=0, atol=1e-6)


def test_tiny_and_wide_images_are_resized_then_cropped(tmp_path):
    tiny = save(tmp_path / "tiny.png", Image.new("RGB", (5, 3), (255, 0, 51)))
    assert torch.allclose(load_image(tiny, PRE), torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1).expand(3, 64, 64))

    wide = Image.new("RGB", (2000, 20), (0, 0, 0))
    wide.paste((255, 255, 255), (990, 0, 1010, 20))  # a white square in the middle survives the centre crop
    tensor = load_image(save(tmp_path / "wide.png", wide), PRE)
    assert tensor.shape == (3, 64, 64)
    # 2000×20 → 7300×73: the white square becomes 73×73 and covers the whole 64×64 centre crop.
    assert torch.equal(tensor, torch.ones(3, 64, 64))


def test_preprocess_takes_crop_and_resize_from_the_preprocessing():
    image = noise_rgb(50, 40)
    out = preprocess(image, Preprocessing(40, 32, MEAN, STD))
    # 50×40 → resized short side 40 (no change) → centre 32×32 crop: rows 4..36, cols 9..41.
    expected = torch.from_numpy(np.array(image)[4:36, 9:41]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32), (37, 37), (20, 20), (50, 30), (30, 71), (300, 200)])
@pytest.mark.parametrize("resize, crop, interpolation", [(37, 32, "bilinear"), (40, 32, "bicubic"),
                                                         (32, 32, "nearest"), (30, 32, "bilinear")])
def test_preprocess_is_torchvisions_functional_transform_to_the_bit(size, resize, crop, interpolation):
    """preprocess calls PIL and numpy itself: the values of TF.resize, TF.center_crop (padding a resize smaller than
    the crop), pil_to_tensor and convert_image_dtype, exactly."""
    import torchvision.transforms.functional as TF

    image = noise_rgb(*size, seed=size[0])
    mode = InterpolationMode(interpolation)
    reference = TF.center_crop(TF.resize(image, [resize], interpolation=mode, antialias=True), [crop])
    expected = TF.convert_image_dtype(TF.pil_to_tensor(reference), torch.float32)
    out = preprocess(image, Preprocessing(resize, crop, MEAN, STD, interpolation))
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, expected)


# --------------------------------------------------------------------------------------------- bad files


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_empty_file(tmp_path):
    assert image_error(touch(tmp_path / "empty.png")).startswith("empty file")


def test_text_file_renamed_png(tmp_path):
    message = image_error(touch(tmp_path / "notes.png", b"these are my notes, not pixels\n"))
    assert message.startswith("not an image")


@pytest.mark.parametrize(
    "fmt, name", [("PNG", "cut.png"), ("JPEG", "cut.jpg"), ("WEBP", "cut.webp"), ("GIF", "cut.gif")]
)
def test_truncated_files(tmp_path, fmt, name):
    whole = _encoded(noise_rgb(48, 40), fmt)
    assert image_error(touch(tmp_path / name, whole[: len(whole) // 2])).startswith("truncated image")


def test_corrupt_header(tmp_path):
    png = bytearray(_encoded(noise_rgb(16, 16), "PNG"))
    png[12:24] = b"\xff" * 12  # the IHDR chunk right after the 8-byte signature
    message = image_error(touch(tmp_path / "header.png", bytes(png)))
    assert message.startswith("corrupt header: the file starts like a PNG")


def test_corrupt_image_data(tmp_path):
    # A well-formed PNG (valid CRCs) whose IDAT payload is not a zlib stream.
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", b"this is not deflate data" * 4)
        + _png_chunk(b"IEND", b"")
    )
    assert image_error(touch(tmp_path / "data.png", png)).startswith("corrupt image data")


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert image_error(path).startswith("decompression bomb: 10000 pixels exceed the limit of 2000")


def test_unreadable_paths(tmp_path):
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "gone.png", dangling)
    assert image_error(dangling).startswith("cannot read file: [Errno 2]")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert image_error(folder).startswith("cannot read file: [Errno 21]")


def test_zero_size_and_elongated_images(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="image has zero size"):
        to_rgb(Image.new("RGB", (0, 5)))
    path = save(tmp_path / "strip.png", Image.new("RGB", (2000, 20)))
    monkeypatch.setattr(data, "MAX_RESIZED_PIXELS", 10_000)
    assert image_error(path).startswith("image too elongated: resizing 2000×20 px")


def test_undecodable_files_are_listed_and_fail_only_when_loaded(tmp_path):
    touch(tmp_path / "bad.png", b"oops")
    save(tmp_path / "good.png", noise_rgb(20, 20))
    records = list_images(str(tmp_path))
    assert [r.image_id for r in records] == ["bad.png", "good.png"]
    assert image_error(records[0].path).startswith("not an image")


# --------------------------------------------------------------------------------------------- decode_many


def test_decode_many_keeps_order_and_turns_bad_files_into_errors(tmp_path):
    records = []
    for index in range(7):
        name = f"{index}.png"
        if index in (2, 5):
            touch(tmp_path / name, b"")
        else:
            save(tmp_path / name, noise_rgb(30 + index, 25, seed=index))
        records.append(ImageRecord(name, str(tmp_path / name)))

    for workers, prefetch in [(1, None), (2, 1), (3, 10)]:
        results = list(decode_many(iter(records), PRE, max_workers=workers, prefetch=prefetch))
        assert [record for record, _ in results] == records
        for record, result in results:
            if record.image_id in ("2.png", "5.png"):
                assert isinstance(result, ImageError) and str(result).startswith("empty file")
            else:
                assert torch.equal(result, load_image(record.path, PRE))


def test_decode_many_can_stop_early(tmp_path):
    records = [ImageRecord(f"{i}.png", save(tmp_path / f"{i}.png", noise_rgb(20, 20, seed=i))) for i in range(6)]
    stream = decode_many(records, PRE, max_workers=2)
    first = list(itertools.islice(stream, 2))
    stream.close()
    assert [record.image_id for record, _ in first] == ["0.png", "1.png"]
    assert torch.equal(first[1][1], load_image(records[1].path, PRE))
    with pytest.raises(ValueError, match="max_workers"):
        decode_many(records, PRE, max_workers=0)
