"""Pictures for the pages, drawn on demand and kept in a bounded cache: an image's input, and a method's map over it
drawn as ``show`` draws it (:func:`~xcv_batch.report.panel.display_map`, :func:`~xcv_batch.report.panel.overlay`:
channels summed, clipped at the value below which 98 % of Σ|·| lies, a diverging colour map for signed methods),
as PNG. A picture reads one input and one map, the ones it shows; :attr:`Renderer.reads` counts them.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ..errors import NotFound, OutputError
from ..report.panel import MAGNITUDE_CMAP, SIGNED_CMAP, display_map, is_signed, overlay
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
        self._busy: dict[tuple, threading.Lock] = {}
        #: Arrays read (inputs and maps), for the benchmark's "nothing read that the page does not show".
        self.reads = 0

    def input_png(self, snapshot: Snapshot, index: int, size: str) -> bytes:
        return self._cached(("input", index, size), lambda: Picture(_png(self._gray_input(snapshot, index, rgb=True),
                                                                        SIZES[size]))).png

    def map_picture(self, snapshot: Snapshot, index: int, method: str, size: str) -> Picture:
        """``method``'s map of image ``index`` over the image in grey; NotFound when it was never written."""
        return self._cached(("map", index, method, size), lambda: self._draw_map(snapshot, index, method, size))

    def _draw_map(self, snapshot: Snapshot, index: int, method: str, size: str) -> Picture:
        image_id = snapshot.image_id(index)
        settings = (snapshot.results.job.get("methods") or {}).get(method)
        self.count()
        shown = display_map(snapshot.results.attribution(image_id, method), is_signed(method, settings))
        if shown is None:
            raise NotFound(f"no map of {method} for image {index} (its row failed, or it is not written yet)")
        gray = self._gray_input(snapshot, index, rgb=False)
        rgba = overlay(shown)
        alpha = rgba[..., 3:]
        drawn = gray[..., None] * (1.0 - alpha) + rgba[..., :3] * alpha
        return Picture(_png(drawn, SIZES[size]), shown.scale, shown.signed)

    def _gray_input(self, snapshot: Snapshot, index: int, rgb: bool) -> np.ndarray:
        """The image as the model saw it (H, W, 3), or its grey (H, W) as ``show`` puts under a map; mid-grey when
        the run stores no inputs and the file cannot be read again."""
        image = self._cached(("input-pixels", index), lambda: Picture(b"", pixels=self._read_input(snapshot, index)))
        image = image.pixels
        return image if rgb else image.mean(axis=2)

    def _read_input(self, snapshot: Snapshot, index: int) -> np.ndarray:
        image_id = snapshot.image_id(index)
        self.count()
        try:
            image = snapshot.results.input_image(image_id)
        except OutputError:
            if not snapshot.results.maps.exists() or snapshot.results.maps.has_array("inputs"):
                raise
            side = int((snapshot.results.attrs.get("preprocessing") or {}).get("resolution") or 224)
            image = np.full((side, side, 3), 0.5, dtype=np.float32)
        # kept as read (the cache counts its bytes): read once for its thumbnail and every map drawn over it
        return np.asarray(image, dtype=np.float32)

    def count(self) -> None:
        with self._lock:
            self.reads += 1

    def _cached(self, key: tuple, draw) -> Picture:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:  # two requests for one picture draw it once
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            try:
                picture = draw()
            finally:
                with self._lock:
                    self._busy.pop(key, None)
            with self._lock:
                self._cache[key] = picture
                self._held += picture.size
                while self._held > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._held -= old.size
            return picture


def _png(pixels: np.ndarray, side: int) -> bytes:
    """``pixels`` (H, W[, 3]) in [0, 1] as a PNG whose longer side is ``side``: nearest neighbour when enlarging, so
    a 32-pixel map shows its own pixels, a box filter when shrinking."""
    image = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))
    scale = side / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    buffer = io.BytesIO()
    image.resize(new_size, resample).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_bar_png(signed: bool) -> bytes:
    """The colour bar under a map: ``show``'s colour map from −scale to +scale (signed) or 0 to scale."""
    ramp = np.linspace(0.0, 1.0, 256)
    colours = colormaps[SIGNED_CMAP if signed else MAGNITUDE_CMAP](ramp)[:, :3]
    return _png(np.repeat(colours[None, :, :], 12, axis=0), 256)
