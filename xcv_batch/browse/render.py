"""Pictures for the pages, drawn on demand and kept in a bounded cache: an image's input, and a method's map over it
drawn as ``show`` draws it (:func:`~xcv_batch.report.panel.display_map`, :func:`~xcv_batch.report.panel.overlay`:
channels summed, clipped at the value below which 98 % of Σ|·| lies, a diverging colour map for signed methods),
as PNG. A picture reads one input and one map, the ones it shows; :attr:`Renderer.reads` counts them.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ..errors import NotFound, OutputError
from ..report.panel import MAGNITUDE_CMAP, SIGNED_CMAP, DisplayMap, display_map, is_signed, overlay
from .index import Snapshot

#: Picture sides in pixels: the list's thumbnails and the image page's maps.
SIZES = {"thumb": 96, "large": 256}
#: Bytes of PNG kept (the least recently shown go first): thousands of thumbnails.
CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Picture:
    """A PNG and, for a map, the raw value drawn as ±1 (its colour bar's ends) and whether it is drawn signed."""

    png: bytes
    scale: float | None = None
    signed: bool | None = None
    #: an input's pixels (H, W, 3) in [0, 1], kept to draw the maps over it
    pixels: np.ndarray | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.png) + (self.pixels.nbytes if self.pixels is not None else 0)


class Renderer:
    """Draws and caches the pictures of one run (the cache is shared by every snapshot: committed maps do not change
    while a run adds more)."""

    def __init__(self, cache_bytes: int = CACHE_BYTES):
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, Picture] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        #: Inputs and maps read, for the benchmark's "nothing read that the page does not show".
        self.reads = 0

    # --- one picture (a URL of its own) -----------------------------------------------------------------------------

    def input_png(self, snapshot: Snapshot, index: int, size: str) -> bytes:
        key = ("input", index, size)
        picture = self._get(key)
        if picture is None:
            picture = self._put(key, Picture(_png(self._inputs(snapshot, [index])[index], SIZES[size])))
        return picture.png

    def map_picture(self, snapshot: Snapshot, index: int, method: str, size: str) -> Picture:
        """``method``'s map of image ``index`` over the image in grey; NotFound when it was never written."""
        picture = self.pictures(snapshot, [index], [method], size, inputs=False).get((index, method))
        if picture is None:
            raise NotFound(f"no map of {method} for image {index} (its row failed, or it is not written yet)")
        return picture

    # --- a page's pictures, read together ---------------------------------------------------------------------------

    def pictures(self, snapshot: Snapshot, indices, methods: list[str], size: str,
                 inputs: bool = True) -> dict[tuple[int, str], Picture | None]:
        """(image index, method or "input") → its picture, for every image in ``indices``: its input (if ``inputs``)
        and the map of each of ``methods`` with an ok row. Each array's missing pictures are read in one batch.
        None where a map was never written or cannot be decoded."""
        found: dict[tuple[int, str], Picture | None] = {}
        wanted: dict[str, list[int]] = {}
        for index in map(int, indices):
            statuses = snapshot.statuses(index)
            names = (["input"] if inputs else []) + [m for m in methods if statuses.get(m, ("",))[0] == "ok"]
            for name in names:
                picture = self._get(_key(index, name, size))
                if picture is not None:
                    found[(index, name)] = picture
                else:
                    wanted.setdefault(name, []).append(index)
        if not wanted:
            return found
        pixels = self._inputs(snapshot, sorted({i for needed in wanted.values() for i in needed}))
        for index in wanted.pop("input", []):
            found[(index, "input")] = self._put(_key(index, "input", size), Picture(_png(pixels[index], SIZES[size])))
        for method, needed in wanted.items():
            drawn = _draw_maps(self._maps(snapshot, needed, method), [pixels[i] for i in needed], snapshot, method,
                               size)
            for index, picture in zip(needed, drawn):
                found[(index, method)] = None if picture is None else self._put(_key(index, method, size), picture)
        return found

    def _maps(self, snapshot: Snapshot, indices: list[int], method: str) -> list[np.ndarray | None]:
        """The raw maps, read together; one at a time when one of them cannot be decoded (None for that one)."""
        ids = [snapshot.image_id(i) for i in indices]
        self.count(len(ids))
        try:
            return snapshot.results.attributions(ids, method)
        except OutputError:
            pass
        found = []
        for image_id in ids:
            try:
                found.append(snapshot.results.attribution(image_id, method))
            except OutputError:
                found.append(None)
        return found

    def _inputs(self, snapshot: Snapshot, indices: list[int]) -> dict[int, np.ndarray]:
        """Image index → the image as the model saw it (H, W, 3), read together and kept to draw maps over; mid-grey
        when the run stores no inputs and the file cannot be read again."""
        found = {}
        for index in indices:
            kept = self._get(("pixels", index))
            if kept is not None:
                found[index] = kept.pixels
        missing = [i for i in indices if i not in found]
        if missing:
            self.count(len(missing))
            results = snapshot.results
            try:
                images = results.input_images([snapshot.image_id(i) for i in missing])
            except OutputError:
                if not results.maps.exists() or results.maps.has_array("inputs"):
                    raise
                side = int((results.attrs.get("preprocessing") or {}).get("resolution") or 224)
                images = [self._one_input(snapshot, i, side) for i in missing]
            for index, image in zip(missing, images):
                found[index] = self._put(("pixels", index), Picture(b"", pixels=np.asarray(image, np.float32))).pixels
        return found

    @staticmethod
    def _one_input(snapshot: Snapshot, index: int, side: int) -> np.ndarray:
        try:
            return snapshot.results.input_image(snapshot.image_id(index))
        except OutputError:  # its file cannot be read again: the maps over grey, as show draws them
            return np.full((side, side, 3), 0.5, dtype=np.float32)

    # --- the cache --------------------------------------------------------------------------------------------------

    def count(self, n: int = 1) -> None:
        with self._lock:
            self.reads += n

    def _get(self, key: tuple) -> Picture | None:
        with self._lock:
            picture = self._cache.get(key)
            if picture is not None:
                self._cache.move_to_end(key)
            return picture

    def _put(self, key: tuple, picture: Picture) -> Picture:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = picture
                self._held += picture.size
                while self._held > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._held -= old.size
            return self._cache[key]


def _key(index: int, name: str, size: str) -> tuple:
    return ("input", index, size) if name == "input" else ("map", index, name, size)


def _draw_maps(attributions: list[np.ndarray | None], images: list[np.ndarray], snapshot: Snapshot, method: str,
               size: str) -> list[Picture | None]:
    """Each map over its image in grey, as show draws it; None for a map never written (all NaN) or unreadable.
    Maps of one shape are coloured in one call (the colour map's cost is per call, not per pixel)."""
    settings = (snapshot.results.job.get("methods") or {}).get(method)
    signed = is_signed(method, settings)
    shown = [None if a is None else display_map(a, signed) for a in attributions]
    pictures: list[Picture | None] = [None] * len(shown)
    groups: dict[tuple, list[int]] = {}
    for i, one in enumerate(shown):
        if one is not None:
            groups.setdefault((one.signed, one.values.shape, images[i].shape), []).append(i)
    for (is_signed_map, _, _), members in groups.items():
        rgba = overlay(DisplayMap(np.stack([shown[i].values for i in members]), 1.0, is_signed_map))
        alpha = rgba[..., 3:]
        gray = np.stack([images[i].mean(axis=2) for i in members])[..., None]
        drawn = gray * (1.0 - alpha) + rgba[..., :3] * alpha
        for j, i in enumerate(members):
            pictures[i] = Picture(_png(drawn[j], SIZES[size]), shown[i].scale, shown[i].signed)
    return pictures


def _png(pixels: np.ndarray, side: int) -> bytes:
    """``pixels`` (H, W[, 3]) in [0, 1] as a PNG whose longer side is at most ``side`` (a box filter when shrinking).
    A smaller picture is sent as it is: the page enlarges it pixel by pixel (``image-rendering: pixelated``), so a
    32-pixel map shows its own pixels and costs a 32-pixel encoding."""
    values = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    height, width = values.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        image = Image.fromarray(values).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                               Image.Resampling.BOX)
        values = np.asarray(image)
    return encode_png(values)


#: PNG's signature, and its filter type "Up" (each byte less the one above it): smooth pictures compress better.
_PNG_SIGNATURE, _UP = b"\x89PNG\r\n\x1a\n", 2


def encode_png(values: np.ndarray) -> bytes:
    """8-bit grey (H, W) or RGB (H, W, 3) pixels as a PNG: one zlib stream of filtered rows, written here because a
    page has a hundred small pictures and an image library's per-picture overhead (~0.5 ms) was most of their
    cost."""
    height, width = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    rows = values.reshape(height, width * channels)
    filtered = np.empty((height, 1 + width * channels), dtype=np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]
    filtered[1:, 1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"".join([_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)), _png_chunk(b"IEND", b"")])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def colour_bar_png(signed: bool) -> bytes:
    """The colour bar under a map: ``show``'s colour map from −scale to +scale (signed) or 0 to scale."""
    ramp = np.linspace(0.0, 1.0, 256)
    colours = colormaps[SIGNED_CMAP if signed else MAGNITUDE_CMAP](ramp)[:, :3]
    return _png(np.repeat(colours[None, :, :], 12, axis=0), 256)
