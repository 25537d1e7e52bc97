"""A synthetic benchmark whose right answer is known: the class is decided by one small object, and we know its pixels.

Each image is a textured, cluttered background (muted colours: smooth blobs, a stripe grating, pixel noise), a few
*distractors*, and one *class object* drawn last (never occluded). The class is the object's shape × colour. The
distractors' number, kinds, places and colours are drawn independently of the label, and they can never look like
a class object: they use shapes no class uses (ring, bar, elongated ellipse) **and** colours no class uses (class
objects are saturated red or blue; distractors green, yellow, cyan, white or black; the background is low
saturation). So the only pixels that carry label information are the object's, and a faithful attribution map must
point there — the setup of ground-truth benchmarks such as CLEVR-XAI (Arras et al. 2022).

The object lies wholly inside the centre crop that torchvision's preprocessing keeps (resize to 256/224 of the crop
size, then centre-crop), so the mask survives :func:`xcv_batch.data.images.load_mask` at the generated size.

Layout of ``out_dir``::

    images/00000.png …       RGB, size × size
    masks/00000.png …        L, 255 on the object's pixels, 0 elsewhere
    manifest.csv             path,label,mask_path,split  (every image; paths relative to out_dir)
    train.csv, test.csv      path,label,mask_path        (one split each; usable as data.source)
    categories.txt           class names, one a line, in label order ("red circle", …)
    dataset.json             the generation parameters

Same arguments → byte-identical files: every image draws from its own generator seeded by (seed, index).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError

# Class objects: shape × colour. Shapes are taken in this order, two colours each, so 4 classes (the default) need
# both shape and colour to tell apart (red/blue circle, red/blue cross).
CLASS_SHAPES = ("circle", "cross", "square", "triangle")
CLASS_COLOURS = {"red": (220, 35, 35), "blue": (35, 75, 230)}
# Distractors: shapes and colours that no class uses.
DISTRACTOR_SHAPES = ("ring", "bar", "ellipse")
DISTRACTOR_COLOURS = {
    "green": (45, 170, 60),
    "yellow": (235, 215, 45),
    "cyan": (55, 205, 215),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
MAX_CLASSES = len(CLASS_SHAPES) * len(CLASS_COLOURS)

SUPERSAMPLE = 4  # shapes are drawn 4× larger and box-filtered down: anti-aliased edges, exact coverage for masks
OBJECT_SCALE = (0.18, 0.30)  # object size as a fraction of the image side (12–19 px at 64 px)
DISTRACTOR_SCALE = (0.10, 0.24)
DISTRACTOR_COUNT = (2, 5)  # inclusive
# torchvision's classification presets resize the short side to 256/224 of the crop size before the centre crop.
CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class ObjectClass:
    shape: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def class_list(n_classes: int) -> list[ObjectClass]:
    """The classes of an ``n_classes`` dataset, in label order."""
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ConfigError("n_classes", f"must be between 2 and {MAX_CLASSES}, got {n_classes}")
    return [ObjectClass(shape, colour) for shape in CLASS_SHAPES for colour in CLASS_COLOURS][:n_classes]


def generate(
    out_dir: str,
    n_images: int = 2000,
    size: int = 64,
    n_classes: int = 4,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> str:
    """Write the dataset to ``out_dir`` and return the path of ``manifest.csv`` (all images, with a split column).

    Labels are balanced (image ``i`` gets class ``i mod n_classes`` before a seeded shuffle); the test split holds
    ``test_fraction`` of every class. ``train.csv`` / ``test.csv`` next to it list one split each.
    """
    if n_images < 2 * n_classes:
        raise ConfigError("n_images", f"must be at least 2 × n_classes = {2 * n_classes}, got {n_images}")
    if size < 24:
        raise ConfigError("size", f"must be at least 24 px (objects would be a few pixels), got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", f"must be between 0 and 1, got {test_fraction}")
    classes = class_list(n_classes)
    labels = np.random.default_rng([seed, 0x5EED]).permutation(np.arange(n_images) % n_classes)
    splits = _stratified_split(labels, n_classes, test_fraction)

    for folder in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    rows = []
    for index in range(n_images):
        label = int(labels[index])
        image, mask = render_image(np.random.default_rng([seed, index]), classes[label], size)
        name = f"{index:05d}.png"
        _write_bytes(os.path.join(out_dir, "images", name), _png_bytes(image))
        _write_bytes(os.path.join(out_dir, "masks", name), _png_bytes(mask))
        rows.append({"path": f"images/{name}", "label": label, "mask_path": f"masks/{name}", "split": splits[index]})

    _write_csv(os.path.join(out_dir, "manifest.csv"), rows, ["path", "label", "mask_path", "split"])
    for split in ("train", "test"):
        _write_csv(os.path.join(out_dir, f"{split}.csv"), [r for r in rows if r["split"] == split],
                   ["path", "label", "mask_path"])
    _write_bytes(os.path.join(out_dir, "categories.txt"), "".join(f"{c.name}\n" for c in classes).encode())
    params = {"n_images": n_images, "size": size, "n_classes": n_classes, "seed": seed, "test_fraction": test_fraction,
              "categories": [c.name for c in classes], "generator": "xcv_batch.groundtruth.synth"}
    _write_bytes(os.path.join(out_dir, "dataset.json"), (json.dumps(params, indent=2, sort_keys=True) + "\n").encode())
    return os.path.join(out_dir, "manifest.csv")


def _stratified_split(labels: np.ndarray, n_classes: int, test_fraction: float) -> list[str]:
    """The first ``test_fraction`` of each class's images (index order, rounded half up) are test; ≥ 1 of each split."""
    splits = ["train"] * len(labels)
    for label in range(n_classes):
        members = np.flatnonzero(labels == label)
        n_test = min(len(members) - 1, max(1, math.floor(test_fraction * len(members) + 0.5)))
        for index in members[:n_test]:
            splits[index] = "test"
    return splits


# --------------------------------------------------------------------------------------------------- rendering


def render_image(rng: np.random.Generator, object_class: ObjectClass, size: int) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, L mask) pair. The label's only influence is the object's shape and colour."""
    pixels = _background(rng, size)
    for _ in range(int(rng.integers(DISTRACTOR_COUNT[0], DISTRACTOR_COUNT[1] + 1))):
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        colour = list(DISTRACTOR_COLOURS.values())[int(rng.integers(len(DISTRACTOR_COLOURS)))]
        extent = rng.uniform(*DISTRACTOR_SCALE) * size
        centre = rng.uniform(0, size, 2)  # anywhere, also partly outside the crop: clutter, not content
        coverage = _coverage(shape, centre, extent, float(rng.uniform(0, math.pi)), size)
        pixels = _paint(pixels, coverage, colour, rng)

    extent = rng.uniform(*OBJECT_SCALE) * size
    margin = math.ceil(size * (1 - CROP_FRACTION) / 2) + 1  # stay inside the centre crop, with a pixel to spare
    low, high = margin + extent / 2, size - margin - extent / 2
    centre = rng.uniform(low, high, 2)
    coverage = _coverage(object_class.shape, centre, extent, 0.0, size)
    pixels = _paint(pixels, coverage, CLASS_COLOURS[object_class.colour], rng)
    mask = np.where(coverage >= 0.5, 255, 0).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), Image.fromarray(mask, "L")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted texture: a grey-ish base, smooth blobs, maybe a stripe grating, pixel noise. Low saturation throughout."""
    base = rng.uniform(70, 180) + rng.uniform(-18, 18, 3)
    # Blobs: a coarse random grid upsampled smoothly; mostly shared by the channels so colours stay muted.
    coarse = int(rng.integers(3, 7))
    grid = rng.normal(0, 1, (coarse, coarse, 1)) * rng.uniform(15, 35) + rng.normal(0, 6, (coarse, coarse, 3))
    blobs = np.stack(
        [np.asarray(Image.fromarray(grid[..., c].astype(np.float32), "F").resize((size, size), Image.BICUBIC))
         for c in range(3)], axis=-1)
    texture = base + blobs
    if rng.random() < 0.6:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(3, 12)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
        texture = texture + (rng.uniform(8, 25) * np.sin(phase + rng.uniform(0, 2 * math.pi)))[..., None]
    texture = texture + rng.normal(0, rng.uniform(3, 10), (size, size, 1)) + rng.normal(0, 2, (size, size, 3))
    return np.clip(np.round(texture), 0, 255).astype(np.uint8)


def _coverage(shape: str, centre: np.ndarray, extent: float, angle: float, size: int) -> np.ndarray:
    """(size, size) float in [0, 1]: the share of each pixel that ``shape`` covers (box-filtered supersampling)."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre * s
    r = extent * s / 2

    def polygon(points: list[tuple[float, float]], fill: int = 255) -> None:
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points], fill=fill)

    def ellipse_points(rx: float, ry: float, n: int = 48) -> list[tuple[float, float]]:
        return [(rx * math.cos(2 * math.pi * k / n), ry * math.sin(2 * math.pi * k / n)) for k in range(n)]

    if shape == "circle":
        polygon(ellipse_points(r, r))
    elif shape == "square":
        side = r * 0.85  # a square of the same extent looks bigger than a circle; even the areas out a little
        polygon([(-side, -side), (side, -side), (side, side), (-side, side)])
    elif shape == "triangle":
        polygon([(0, -r), (r * math.sqrt(3) / 2, r / 2), (-r * math.sqrt(3) / 2, r / 2)])
    elif shape == "cross":
        arm = r * 0.36
        polygon([(-r, -arm), (r, -arm), (r, arm), (-r, arm)])
        polygon([(-arm, -r), (arm, -r), (arm, r), (-arm, r)])
    elif shape == "ring":
        polygon(ellipse_points(r, r))
        polygon(ellipse_points(r * 0.55, r * 0.55), fill=0)
    elif shape == "bar":
        polygon([(-r, -r * 0.16), (r, -r * 0.16), (r, r * 0.16), (-r, r * 0.16)])
    elif shape == "ellipse":
        polygon(ellipse_points(r, r * 0.42))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas.reduce(s), dtype=np.float64) / 255.0


def _paint(pixels: np.ndarray, coverage: np.ndarray, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Alpha-blend a flat colour (with a little jitter, so no two objects are pixel-identical) by its coverage."""
    tone = np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-12, 12, 3), 0, 255)
    alpha = coverage[..., None]
    blended = pixels.astype(np.float64) * (1 - alpha) + tone * alpha
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------- writing


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)  # no metadata: the same bytes every time
    return buffer.getvalue()


def _write_bytes(path: str, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_bytes(path, buffer.getvalue().encode())
