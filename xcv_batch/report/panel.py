"""Fig. 1-style panels: an image and each method's map over it, for ``show`` and the report's gallery.

The maps are scaled here for display only (the stored maps stay raw), as Captum's ``visualize_image_attr`` does:
the channels are summed, and the map is divided by the value below which 98 % of its Σ|·| lies and clipped to
[−1, 1], so a few hot pixels do not wash out the rest (a per-pixel percentile would instead saturate whole LIME
superpixels). A **signed** method's map — Occlusion, IG, LIME, Guided Grad-CAM, IG + SmoothGrad with ``nt_type:
smoothgrad`` — is drawn with a diverging colour map centred at 0 (blue against the class, red for it), on every image
alike even when one map happens to be all positive; IG + SmoothGrad's ``smoothgrad_sq`` and ``vargrad`` are never
negative and are drawn as a magnitude, white to red. Each method's spec says which (``MethodSpec.signed``); a method
whose spec does not say, or that is not registered, is signed when its map has a negative value. Each map has a
colour bar in the map's own units.
"""

from __future__ import annotations

import io
import os
import textwrap
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend (Agg renders savefig)

from ..errors import ConfigError, OutputError, cli_or_python, first_line
from ..methods.registry import method_names, method_spec
from ..output.results import Results
from .labels import method_label

_PANEL_INCHES = 2.7
#: Share of a map's Σ|·| above the clipping value (Captum's ``outlier_perc`` default).
OUTLIER_PERCENT = 2.0
SIGNED_CMAP, MAGNITUDE_CMAP = "bwr", "Reds"


def is_signed(method: str, settings: dict | None = None) -> bool | None:
    """Whether a method's maps are signed, as its spec says for these settings; None when unknown (a method not
    registered here, or whose spec does not say: decide by content)."""
    if method not in method_names():
        return None
    return method_spec(method).is_signed(settings)


@dataclass(frozen=True)
class DisplayMap:
    """A map ready to draw: ``values`` (H, W) in [−1, 1] (signed) or [0, 1]; ``scale`` the raw value shown as ±1."""

    values: np.ndarray
    scale: float
    signed: bool


def clipping_value(magnitude: np.ndarray, outlier_percent: float = OUTLIER_PERCENT) -> float:
    """The smallest value v such that the values ≤ v hold at least (100 − outlier_percent) % of the total."""
    ordered = np.sort(np.asarray(magnitude, dtype=np.float64).ravel())
    cumulative = np.cumsum(ordered)
    if cumulative[-1] <= 0:
        return 0.0
    return float(ordered[np.argmax(cumulative >= cumulative[-1] * 0.01 * (100.0 - outlier_percent))])


def display_map(attribution: np.ndarray, signed: bool | None = None) -> DisplayMap | None:
    """The channel-summed map scaled by its clipping value; None for a map never written (all NaN). ``signed``: how
    to draw it (None: signed when it has a negative value)."""
    summed = np.asarray(attribution, dtype=np.float64).sum(axis=0)
    if not np.isfinite(summed).any():
        return None
    summed = np.nan_to_num(summed, nan=0.0)
    if signed is None:
        signed = bool((summed < 0).any())
    scale = clipping_value(np.abs(summed))
    values = np.clip(summed / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(summed)
    return DisplayMap(values, scale, signed)


def overlay(shown: DisplayMap) -> np.ndarray:
    """RGBA heatmap whose opacity grows with |value|, so the image shows through where the map is near 0."""
    if shown.signed:
        rgba = colormaps[SIGNED_CMAP]((shown.values + 1.0) / 2.0)
    else:
        rgba = colormaps[MAGNITUDE_CMAP](shown.values)
    rgba[..., 3] = 0.15 + 0.7 * np.abs(shown.values)
    return rgba


def _colour_bar(figure: Figure, ax, shown: DisplayMap) -> None:
    """A horizontal colour bar in the map's raw units (channel sum), its ends the clipping value."""
    scale = shown.scale if shown.scale > 0 else 1.0
    norm = Normalize(-scale, scale) if shown.signed else Normalize(0.0, scale)
    cmap = colormaps[SIGNED_CMAP if shown.signed else MAGNITUDE_CMAP]
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, orientation="horizontal", fraction=0.06,
                          pad=0.04)
    # Three ticks at most (the ends are the clipping value): default ticks crowd a 2.7-inch bar.
    bar.set_ticks([-scale, 0.0, scale] if shown.signed else [0.0, scale], labels=None)
    bar.ax.set_xticklabels([f"{t:.2g}" for t in bar.get_ticks()])
    bar.ax.tick_params(labelsize=7)
    bar.set_label(("signed" if shown.signed else "magnitude") + ", Σ channels, clipped", fontsize=7)


def class_text(index, categories: list | None, name=None) -> str:
    """``name (#index)`` when the class has a name, else ``class index``."""
    if index is None or pd.isna(index):
        return "–"
    index = int(index)
    if name is None or pd.isna(name):
        name = categories[index] if categories and 0 <= index < len(categories) else None
    return f"{name} (#{index})" if name else f"class {index}"


def _target_text(row: pd.Series, categories: list | None) -> str:
    text = class_text(row.get("target"), categories, row.get("target_name"))
    prob = row.get("target_prob")
    if prob is None or pd.isna(prob):
        return text
    # A random-init model spreads ~1/1000 over ImageNet's classes: two decimals would print 0.00.
    return f"{text}, p {prob:.2f}" if prob >= 0.01 else f"{text}, p {prob:.1e}"


def panel_figure(results: Results, image_id: str, columns: int | None = None) -> Figure:
    """The panel of one image: the image, then one subplot per method the run has (in the job's order); in rows of
    ``columns`` subplots (default: one row), so that a page can bound its width whatever the number of methods."""
    try:
        image = results.input_image(image_id)  # raises ConfigError for an unknown id
        missing_input = False
    except OutputError:
        if not results.maps.exists() or results.maps.has_array("inputs"):
            raise
        # output.inputs false and the source file cannot be read again: the maps alone, with a note why
        resolution = int((results.attrs.get("preprocessing") or {}).get("resolution") or 224)
        image, missing_input = np.full((resolution, resolution, 3), 0.5, dtype=np.float32), True
    rows = results.image_rows(image_id)
    rows = rows.sort_values("status", key=lambda s: s == "ok").drop_duplicates("method", keep="last")
    by_method = {str(r["method"]): r for _, r in rows.iterrows()}
    methods = list(results.methods)
    categories = results.categories

    n_cols = min(columns or len(methods) + 1, len(methods) + 1)
    n_rows = -(-(len(methods) + 1) // n_cols)
    figure = Figure(figsize=(_PANEL_INCHES * n_cols, _PANEL_INCHES * 1.7 * n_rows), dpi=100)
    grid = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for unused in grid[len(methods) + 1:]:
        unused.remove()
    axes = grid[:len(methods) + 1]
    first = next((r for r in by_method.values() if pd.notna(r.get("target"))), None)
    title = [str(image_id)]
    if first is not None:
        title.append(textwrap.fill(f"target {_target_text(first, categories)}", 34))
        if pd.notna(first.get("label")):
            title.append(f"label {class_text(first['label'], categories)}")
    image = np.asarray(image)  # a tensor from the notebook API, an array from a run's results
    axes[0].imshow(image)
    if missing_input:
        title.append(textwrap.fill("image not shown (inputs not stored); its file cannot be read again", 34))
    axes[0].set_title("\n".join(title), fontsize=9)

    gray = image.mean(axis=2)
    for ax, method in zip(axes[1:], methods):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        row = by_method.get(method)
        settings = (results.job.get("methods") or {}).get(method)
        try:
            shown = display_map(results.attribution(image_id, method), is_signed(method, settings))
            unreadable = None
        except OutputError as err:  # a damaged chunk file: this map is missing from the panel, the others are drawn
            shown, unreadable = None, str(err)
        if row is not None and row["status"] != "ok":
            subtitle = textwrap.fill("failed: " + textwrap.shorten(str(row.get("error")), 60), 30)
        elif unreadable is not None:
            subtitle = textwrap.fill("unreadable: " + textwrap.shorten(unreadable, 60), 30)
        elif row is None:
            subtitle = "not computed yet"
        else:
            sensitivity = row.get("sensitivity_max")
            subtitle = "sensitivity " + (f"{sensitivity:.3g}" if sensitivity is not None and pd.notna(sensitivity)
                                         else "–")
        if shown is not None:
            ax.imshow(overlay(shown))
            _colour_bar(figure, ax, shown)
        ax.set_title(f"{method_label(method)}\n{subtitle}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    _fit_height(figure)
    return figure


def _fit_height(figure: Figure, pad_inches: float = 0.08) -> None:
    """Shrink the figure to its content's height. Square images in a figure of fixed height leave empty bands
    above and below them (the title, bars and subtitles take less than was set aside); the height is set from what
    was drawn, then laid out again, twice, since the layout moves with the size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    width = figure.get_size_inches()[0]
    for _ in range(2):
        content = figure.get_tightbbox(canvas.get_renderer())
        height = figure.get_size_inches()[1]
        wanted = content.height + 2 * pad_inches
        if wanted >= height - 0.01:
            break
        figure.set_size_inches(width, wanted)
        figure.tight_layout()


def image_format(output_path: str) -> str:
    """The file format named by the path's extension (``.jpg`` → JPEG), one matplotlib can write; else ConfigError."""
    suffix = os.path.splitext(str(output_path))[1].lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if not suffix or suffix not in supported:
        named = f"'.{suffix}'" if suffix else "no extension"
        raise ConfigError(cli_or_python("--output", "path"), f"{output_path} has {named}; the extension picks the format, one of: "
                                      f"{', '.join('.' + s for s in sorted(supported))}")
    return suffix


def render_panel(results: Results, image_id: str, output_path: str) -> str:
    """Write the panel of ``image_id`` to ``output_path`` (a local path or URL) in the format its extension names;
    returns the path."""
    file_format = image_format(output_path)
    figure = panel_figure(results, image_id)
    drawn = io.BytesIO()  # drawn first, so that a failure below is the file's, not the figure's
    figure.savefig(drawn, format=file_format)
    try:
        with fsspec.open(str(output_path), "wb") as f:
            f.write(drawn.getvalue())
    except Exception as err:  # noqa: BLE001 - OSError locally; a URL's backend raises its own (missing credentials…)
        raise OutputError(f"cannot write {output_path} ({type(err).__name__}: {first_line(err)})") from err
    return str(output_path)
