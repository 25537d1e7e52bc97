"""Fig. 1-style panels: an image and each method's map over it, for ``show`` and the report's gallery.

The maps are normalised here for display only (the stored maps stay raw): Σ|attr| over channels, divided by its
99.5th percentile so that one hot pixel does not wash the rest of the map out.
"""

from __future__ import annotations

import textwrap

import fsspec
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend (Agg renders savefig)

from .results import Results, method_label

_PANEL_INCHES = 2.7


def display_map(attribution: np.ndarray) -> np.ndarray | None:
    """Σ|attr| over channels scaled to [0, 1] by its 99.5th percentile; None for a map never written (all NaN)."""
    magnitude = np.abs(np.asarray(attribution, dtype=np.float64)).sum(axis=0)
    if not np.isfinite(magnitude).any():
        return None
    magnitude = np.nan_to_num(magnitude, nan=0.0)
    scale = np.percentile(magnitude, 99.5)
    if scale <= 0:
        scale = magnitude.max()
    return np.clip(magnitude / scale, 0.0, 1.0) if scale > 0 else magnitude


def overlay(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """RGBA heatmap whose opacity grows with the value, so the image shows through where the map is cold."""
    rgba = colormaps[cmap](heat)
    rgba[..., 3] = 0.15 + 0.7 * heat
    return rgba


def _target_text(row: pd.Series, categories: list | None) -> str:
    name = row.get("target_name")
    if name is None or pd.isna(name):
        target = int(row["target"]) if pd.notna(row.get("target")) else None
        name = categories[target] if categories and target is not None and 0 <= target < len(categories) else target
    prob = row.get("target_prob")
    if prob is None or pd.isna(prob):
        return f"{name}"
    # A random-init model spreads ~1/1000 over ImageNet's classes: two decimals would print 0.00.
    return f"{name} ({prob:.2f})" if prob >= 0.01 else f"{name} ({prob:.1e})"


def panel_figure(results: Results, image_id: str) -> Figure:
    """The panel of one image: the image, then one subplot per method the run has (in the job's order)."""
    image = results.input_image(image_id)  # raises ConfigError for an unknown id
    rows = results.image_rows(image_id)
    rows = rows.sort_values("status", key=lambda s: s == "ok").drop_duplicates("method", keep="last")
    by_method = {str(r["method"]): r for _, r in rows.iterrows()}
    methods = list(results.methods)
    categories = results.categories

    figure = Figure(figsize=(_PANEL_INCHES * (len(methods) + 1), _PANEL_INCHES * 1.45), dpi=100)
    axes = figure.subplots(1, len(methods) + 1, squeeze=False)[0]
    first = next(iter(by_method.values()), None)
    title = [str(image_id)]
    if first is not None:
        title.append(f"target {_target_text(first, categories)}")
        if pd.notna(first.get("label")):
            title.append(f"label {int(first['label'])}")
    axes[0].imshow(image)
    axes[0].set_title("\n".join(title), fontsize=9)

    gray = image.mean(axis=2)
    for ax, method in zip(axes[1:], methods):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        row = by_method.get(method)
        heat = display_map(results.attribution(image_id, method))
        if row is not None and row["status"] != "ok":
            subtitle = textwrap.fill("failed: " + textwrap.shorten(str(row.get("error")), 60), 30)
        elif row is None:
            subtitle = "not computed yet"
        else:
            sensitivity = row.get("sensitivity_max")
            subtitle = (f"{_target_text(row, categories)}\nsensitivity "
                        + (f"{sensitivity:.3g}" if sensitivity is not None and pd.notna(sensitivity) else "–"))
        if heat is not None:
            ax.imshow(overlay(heat))
        ax.set_title(f"{method_label(method)}\n{subtitle}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure


def render_panel(results: Results, image_id: str, output_path: str) -> str:
    """Write the panel of ``image_id`` as a PNG to ``output_path`` (a local path or URL); returns the path."""
    figure = panel_figure(results, image_id)
    with fsspec.open(str(output_path), "wb") as f:
        figure.savefig(f, format="png")
    return str(output_path)
