"""Decoding and preprocessing images (listing them is :mod:`xcv_batch.data.sources`).

* :func:`decode_image` reads one file into an 8-bit RGB ``PIL.Image`` (EXIF orientation applied, first frame,
  every pixel mode converted); any failure becomes an :class:`ImageError` that names the reason in plain words.
  Given the size the model needs, a large image is reduced while it is decoded (JPEG draft, ``reduce``), never
  below twice that size, so a big photo costs about what a small one does (see :func:`decode_image`).
* :func:`preprocess` is torchvision's ``ImageClassification`` transform without its normalisation (the worker
  normalises on the device). :func:`load_image` chains the two; :func:`decode_many` runs it on a thread pool
  so the next batch decodes while the model works.
* :func:`load_mask` reads a ground-truth object mask (a manifest's optional ``mask_path`` column) through the same
  resize and centre crop as its image, so mask pixels line up with attribution pixels.

Local paths go through ``open`` and never need fsspec; URLs (anything with ``://``) go through fsspec; a record of a
source whose images are not files names its own ``reader`` (:mod:`xcv_batch.data.registry`).
"""

from __future__ import annotations

import io
import re
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from ..errors import ImageError
from ..models.classifier import Preprocessing
from .registry import read_with
from .sources import ImageRecord, is_url

# Resizing the short side of a very elongated image makes its long side huge (a 100000×2 strip at 256 px would be
# 3.3 G pixels) before the centre crop throws nearly all of it away; refuse instead of running out of memory.
MAX_RESIZED_PIXELS = 1 << 26

# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def read_bytes(path: str, reader: str = "") -> bytes:
    """The whole file; local paths with ``open``, URLs with fsspec, and with ``reader`` (``"module:function"``, a
    source's own way to open its images) when one is given."""
    try:
        if reader:
            return read_with(reader, path)
        if is_url(path):
            import fsspec

            with fsspec.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, ImportError, ValueError) as err:
        raise ImageError(f"cannot read file: {err}") from err


def decode_image(path: str, min_short_side: int | None = None, reader: str = "") -> Image.Image:
    """The image at ``path`` as 8-bit RGB: EXIF orientation applied, first frame only, see :func:`to_rgb`.

    ``min_short_side``: a larger JPEG is decoded at the smallest scale (1/2, 1/4 or 1/8, by its decoder) whose short
    side stays at least this, and opens without PIL's DecompressionBombWarning (the warning is about the memory of a
    full decode, which it does not get). PIL's guard stays on otherwise: an image over twice
    ``Image.MAX_IMAGE_PIXELS`` is refused, and other formats warn as PIL does. Truncated files fail
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False).
    """
    return _decode(path, min_short_side, reader)[0]


#: A large JPEG is decoded reduced, but to no less than this many times the short side it is then resized to.
#: Measured on scikit-image photos (astronaut, rocket) enlarged and textures (grass, brick) tiled to 2048 and 4096 px
#: JPEGs (quality 95), at 224 px (resize 256): the preprocessed input differs from the full decode's by 0.3/255 per
#: pixel on average and at most 2/255 (4/255 at a few pixels of the rocket's edges at 3073×2049); at 2× it was up to
#: 7/255 (1.3/255 on average), at 8× 1/255 (0.1/255). What remains is the decoder's own scaling (it filters in the
#: DCT domain) against the antialiased resize from the full image.
DECODE_MARGIN = 4

_JPEG = b"\xff\xd8\xff"
#: Held while a JPEG opens with PIL's bomb warning filtered: filters are process-wide, decoding threads take turns.
_QUIET_OPEN = threading.Lock()


@dataclass(frozen=True)
class Reduced:
    """How an image decoded reduced relates to the full one (both oriented as shown)."""

    full_size: tuple[int, int]  # (width, height) at full resolution
    box: tuple[float, float, float, float]  # the full image's extent in the reduced pixels: the decoder rounds the
    # reduced size up, so the last row and column are partly outside it


def _decode(path: str, min_short_side: int | None = None, reader: str = "") -> tuple[Image.Image, Reduced | None]:
    """The RGB image, reduced as :func:`decode_image` says, and how (None: decoded whole)."""
    data = read_bytes(path, reader)
    if not data:
        raise ImageError("empty file: the file has 0 bytes")
    try:
        image = _open(data, reducible=min_short_side is not None)  # an animated file opens on its first frame
        reduced = _reduce_while_decoding(image, min_short_side)
        if reduced is not None:
            image.load()
            reduced = _turned(reduced, image.size, image.getexif().get(ExifTags.Base.Orientation, 1))
        ImageOps.exif_transpose(image, in_place=True)  # loads the pixels, then rotates/flips as EXIF says
    except Image.DecompressionBombError as err:
        raise ImageError(_bomb_message(err)) from err
    except UnidentifiedImageError as err:
        kind = _signature(data)
        if kind is None:
            raise ImageError("not an image: PIL cannot identify the file's format") from err
        raise ImageError(f"corrupt header: the file starts like a {kind} but its header cannot be read") from err
    except MemoryError as err:
        raise ImageError("cannot decode: not enough memory for this image") from err
    except Exception as err:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, zlib.error, …
        raise ImageError(_decode_failure_message(err, data)) from err
    return to_rgb(image), reduced


def _open(data: bytes, reducible: bool) -> Image.Image:
    """PIL's open; a JPEG that will be decoded reduced opens without the bomb warning (the error stays)."""
    if not (reducible and data.startswith(_JPEG)):
        return Image.open(io.BytesIO(data))
    with _QUIET_OPEN, warnings.catch_warnings():  # opening reads the header only: the lock is held briefly
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _reduce_while_decoding(image: Image.Image, min_short_side: int | None) -> Reduced | None:
    """Ask a JPEG's decoder for the largest power-of-two reduction that keeps the short side ≥ ``min_short_side``
    (other formats have no reduced decoding in PIL and are decoded whole); None when nothing is reduced."""
    if min_short_side is None or image.format != "JPEG":
        return None
    width, height = image.size
    if min(width, height) < 2 * min_short_side:
        return None
    # The decoder divides by the largest of 8, 4, 2 that fits both sides of the request; asking 1 px of the long
    # side leaves the short side alone to decide.
    drafted = image.draft(image.mode, (min_short_side, 1) if width <= height else (1, min_short_side))
    if drafted is None or image.size == (width, height):
        return None
    return Reduced((width, height), drafted[1])


#: Where a point (x, y) of a W×H image lands under each EXIF orientation's transposition (as ImageOps.exif_transpose
#: applies them: 6 is PIL's ROTATE_270, clockwise; 8 its ROTATE_90).
_ORIENTED_POINT = {
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (h - y, x),
    7: lambda x, y, w, h: (h - y, w - x),
    8: lambda x, y, w, h: (y, w - x),
}


def _turned(reduced: Reduced, size: tuple[int, int], orientation: int) -> Reduced:
    """``reduced`` (of an image of ``size`` as stored) as it is once EXIF ``orientation`` has been applied."""
    move = _ORIENTED_POINT.get(orientation)
    if move is None:
        return reduced
    (x0, y0), (x1, y1) = (move(x, y, *size) for x, y in ((reduced.box[0], reduced.box[1]),
                                                          (reduced.box[2], reduced.box[3])))
    full = reduced.full_size if orientation < 5 else (reduced.full_size[1], reduced.full_size[0])
    return Reduced(full, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in _SIGNATURES if data.startswith(magic)), None)


def _bomb_message(err: Exception) -> str:
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(err))
    if match is None:
        return f"decompression bomb: {err}"
    return (
        f"decompression bomb: {match[1]} pixels exceed the limit of {match[2]} "
        "(PIL.Image.MAX_IMAGE_PIXELS guards against malicious files; raise it only for images you trust)"
    )


def _decode_failure_message(err: Exception, data: bytes) -> str:
    text = str(err) or type(err).__name__
    lowered = text.lower()
    # WebP's decoder says only "could not create decoder object"; its RIFF header tells whether bytes are missing.
    riff_cut = data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)
    if "truncated" in lowered or isinstance(err, EOFError) or riff_cut:
        return f"truncated image: {text}"
    return f"corrupt image data: {text}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL pixel mode → 8-bit RGB.

    Transparency (alpha channels, palette or colour-key transparency) is composited onto a **white** background.
    16-bit modes are scaled by 255/65535 (not clipped at 255). Mode ``I`` with values in 0..65535 is treated as
    16-bit; mode ``F`` in [0, 1] as fractions; other ``I``/``F`` ranges are stretched min..max to 0..255.
    CMYK and YCbCr use PIL's conversions (embedded ICC profiles are ignored).
    """
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has zero size ({image.width}×{image.height} px)")
    mode = image.mode
    try:
        if mode in ("I", "F") or mode.startswith("I;"):
            values = np.asarray(image)
            bad = int(values.size - np.isfinite(values).sum()) if values.dtype.kind == "f" else 0
            if bad:  # a float image's NaN is missing data: explaining it as some grey level would hide that
                raise ImageError(f"input has {bad} non-finite pixels (NaN or ±inf)")
            gray = Image.fromarray(_scale_to_uint8(values), mode="L")
            return gray.convert("RGB")
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image if mode == "RGB" else image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"unsupported pixel mode: PIL cannot convert {mode} to RGB ({err})") from err


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if is_float and low >= 0.0 and high <= 1.0:
        fraction = values
    elif not is_float and low >= 0 and high <= 65535:
        fraction = values / np.float32(65535)
    elif high > low:
        fraction = (values - low) / np.float32(high - low)
    else:
        fraction = np.zeros_like(values)
    return np.round(fraction * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------


def preprocess(image: Image.Image, preprocessing: Preprocessing, reduced: Reduced | None = None) -> torch.Tensor:
    """RGB image → (3, crop, crop) float32 in [0, 1].

    torchvision's ``ImageClassification`` preset step for step (the same functional calls on the PIL image: resize
    the short side with antialiasing, centre-crop, scale to [0, 1]) but without ``normalize``: the worker
    normalises on the device (the stored ``inputs`` array holds the normalised model inputs). ``reduced``: how the image was decoded
    reduced, if it was (see :func:`decode_image`).
    """
    image = _resize_and_crop(image, preprocessing, InterpolationMode(preprocessing.interpolation), reduced)
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:  # not 8-bit (to_rgb's images always are): torchvision's scaling for its dtype
        return TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float32).contiguous()
    return _unit_tensor(pixels if pixels.ndim == 3 else pixels[:, :, None])


def _unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 → (C, H, W) float32 in [0, 1], contiguous: the values of torchvision's ``pil_to_tensor`` then
    ``convert_image_dtype`` (a float32 division by 255, correctly rounded either way) in one pass instead of four
    tensor operations (at 32 px, about half of what preprocessing an image cost)."""
    unit = np.empty((pixels.shape[2], *pixels.shape[:2]), dtype=np.float32)
    np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=unit)
    return torch.from_numpy(unit)


def _resize_and_crop(image: Image.Image, preprocessing: Preprocessing, interpolation: InterpolationMode,
                     reduced: Reduced | None = None):
    """The geometry of the preset, shared by images and their masks so that they stay aligned.

    An image decoded reduced is resized to the size torchvision computes from the full image, from the part of its
    pixels the full image covers (PIL's ``box``): its size is rounded up, so resizing it whole would stretch it by
    a fraction of a pixel and shift the centre crop.
    """
    _check_resized_size(reduced.full_size if reduced else image.size, preprocessing.resize_size)
    # What TF.resize and TF.center_crop do with a PIL image (PIL's resampling always antialiases), called on PIL
    # directly: their checks and dispatch cost more than resizing a small image does.
    if reduced is None:
        height, width = _resized_size(image.size, preprocessing.resize_size)
        if (width, height) != image.size:  # TF.resize leaves an image of the size asked alone
            image = image.resize((width, height), TF.pil_modes_mapping[interpolation])
    else:
        height, width = _resized_size(reduced.full_size, preprocessing.resize_size)
        image = image.resize((width, height), TF.pil_modes_mapping[interpolation], box=reduced.box)
    return _center_crop(image, preprocessing.crop_size)


def _center_crop(image: Image.Image, crop: int) -> Image.Image:
    """TF.center_crop of a PIL image to ``crop`` × ``crop`` (its rounding of the offsets); an image smaller than the
    crop goes to TF.center_crop, which pads it."""
    width, height = image.size
    if crop > width or crop > height:
        return TF.center_crop(image, [crop])
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _resized_size(size: tuple[int, int], resize_size: int) -> list[int]:
    """[height, width] of an image of ``size`` (width, height) resized to a short side of ``resize_size``, as
    torchvision computes it."""
    width, height = size
    new_long = int(resize_size * max(width, height) / min(width, height))
    return [resize_size, new_long] if height <= width else [new_long, resize_size]


def _check_resized_size(size: tuple[int, int], resize_size: int) -> None:
    width, height = size
    short, long = min(width, height), max(width, height)
    if short == 0:
        raise ImageError(f"image has zero size ({width}×{height} px)")
    new_long = int(resize_size * long / short)  # as torchvision computes it
    if new_long * resize_size > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image too elongated: resizing {width}×{height} px to a short side of {resize_size} px would make "
            f"{new_long * resize_size} pixels (limit {MAX_RESIZED_PIXELS}); crop it before processing"
        )


def load_image(path: str, preprocessing: Preprocessing, reader: str = "") -> torch.Tensor:
    """The model input for one file, before normalisation: (3, R, R) float32 in [0, 1]; fails with ImageError.

    Transparent pixels come out as if the image lay on a white background (see :func:`to_rgb`). A large JPEG is
    decoded reduced to no less than DECODE_MARGIN times the resized short side (see there for how close that is).
    """
    image, reduced = _decode(path, DECODE_MARGIN * preprocessing.resize_size, reader)
    return preprocess(image, preprocessing, reduced)


def load_mask(path: str, preprocessing: Preprocessing, reader: str = "") -> torch.Tensor:
    """A ground-truth mask as (R, R) bool, aligned with :func:`load_image` of its image; fails with ImageError.

    Any pixel mode is read as grey levels and a pixel is in the mask when it is at least half the full level (≥ 128
    of 255, ≥ 32768 of 65535), so 0/255 masks, mode ``1`` and anti-aliased masks all work; a mask whose only levels
    are 0 and 1 (a boolean array saved as integers) is read as such. EXIF orientation is applied as for images. The
    mask goes through the image's resize (short side) and centre crop with **nearest** interpolation, so it stays
    binary; it must have its image's aspect ratio to line up with it.
    """
    data = read_bytes(path, reader)
    if not data:
        raise ImageError("empty mask file: the file has 0 bytes")
    try:
        mask = Image.open(io.BytesIO(data))
        ImageOps.exif_transpose(mask, in_place=True)  # loads the pixels; the image is turned the same way
    except Image.DecompressionBombError as err:
        raise ImageError(f"mask: {_bomb_message(err)}") from err
    except UnidentifiedImageError as err:
        raise ImageError("mask is not an image: PIL cannot identify the file's format") from err
    except Exception as err:  # PIL's decoders raise many types for damaged files
        raise ImageError(f"mask: {_decode_failure_message(err, data)}") from err
    if mask.width == 0 or mask.height == 0:
        raise ImageError(f"mask has zero size ({mask.width}×{mask.height} px)")
    if mask.mode in ("I", "F") or mask.mode.startswith("I;"):
        levels = np.asarray(mask)
        inside = levels >= 0.5 if levels.max(initial=0) <= 1 else _scale_to_uint8(levels) >= 128
    else:
        levels = np.asarray(mask.convert("L"))
        inside = levels >= 1 if levels.max(initial=0) == 1 else levels >= 128
    binary = Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), mode="L")
    binary = _resize_and_crop(binary, preprocessing, InterpolationMode.NEAREST)
    return torch.from_numpy(np.asarray(binary) >= 128)


def _load_or_error(record: ImageRecord, preprocessing: Preprocessing,
                   cpu: Callable[[float], None] | None = None) -> torch.Tensor | ImageError:
    started = time.thread_time()
    try:
        return load_image(record.path, preprocessing, record.reader)
    except ImageError as err:
        return err
    finally:
        if cpu is not None:
            cpu(time.thread_time() - started)


def decode_many(
    records: Iterable[ImageRecord],
    preprocessing: Preprocessing,
    max_workers: int = 2,
    prefetch: int | None = None,
    cpu: Callable[[float], None] | None = None,
) -> Iterator[tuple[ImageRecord, torch.Tensor | ImageError]]:
    """``(record, tensor or ImageError)`` in the order of ``records``, decoded on ``max_workers`` threads.

    PIL releases the GIL while decoding and resampling, so threads overlap with each other and with the model.
    At most ``prefetch`` (default ``2 * max_workers``) images are decoded ahead of the consumer, which bounds
    memory; other exceptions (bugs, not bad images) propagate. ``cpu``, when given, is called from the decoding
    thread with the CPU seconds each image's decode took (a worker's stage times).
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, not {max_workers}")
    ahead = max(1, prefetch if prefetch is not None else 2 * max_workers)
    return _decode_in_threads(iter(records), preprocessing, max_workers, ahead, cpu)


def _decode_in_threads(
    pending_records: Iterator[ImageRecord], preprocessing: Preprocessing, max_workers: int, ahead: int,
    cpu: Callable[[float], None] | None = None,
) -> Iterator[tuple[ImageRecord, torch.Tensor | ImageError]]:
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="xcv-decode")
    pending: deque = deque()

    def submit_next() -> None:
        record = next(pending_records, None)
        if record is not None:
            pending.append((record, pool.submit(_load_or_error, record, preprocessing, cpu)))

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            record, future = pending.popleft()
            submit_next()
            yield record, future.result()
    finally:
        # A consumer that stops early (an exception, a closed generator) should not wait for queued decodes.
        pool.shutdown(wait=True, cancel_futures=True)
