"""``show`` / ``plot``: the panel has no blank band at the top; the figure is as tall as what it draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from xcv_batch.api import Explainer
from xcv_batch.report.panel import _PANEL_INCHES


@pytest.fixture(scope="module")
def explanation():
    explainer = Explainer("resnet18", methods=["integrated_gradients", "occlusion"], sensitivity=None,
                          weights="none", resolution=32, device="cpu")
    return explainer.explain(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5)


def content_rows(path) -> np.ndarray:
    """Which pixel rows of the image hold anything but the white background."""
    rgb = imread(str(path))[..., :3]
    return (rgb < 0.97).any(axis=(1, 2))


def test_the_panel_starts_with_its_titles_not_a_blank_band(explanation, tmp_path):
    path = tmp_path / "panel.png"
    explanation.plot(0, str(path))
    rows = content_rows(path)
    height = rows.shape[0]
    first, last = int(np.argmax(rows)), height - 1 - int(np.argmax(rows[::-1]))
    assert first <= 0.06 * height  # the titles start at the top (after a 15 % band before)
    assert height - 1 - last <= 0.06 * height  # and the colour bars' labels end at the bottom
    assert rows[: int(0.15 * height)].sum() >= 0.1 * height  # the top 15 % holds the titles and the images' tops
    width = imread(str(path)).shape[1]
    assert width == pytest.approx(3 * _PANEL_INCHES * 100, abs=2)  # as wide as before: one panel per column
    assert height < _PANEL_INCHES * 1.7 * 100  # shorter than the fixed height that held the band


def test_the_returned_figure_is_as_tall_as_the_file(explanation, tmp_path):
    figure = explanation.plot(1)
    path = tmp_path / "panel.png"
    figure.savefig(path)
    rows = content_rows(path)
    assert int(np.argmax(rows)) <= 0.06 * rows.shape[0]
