"""report.html as a person sees it: rendered by headless Chromium (tests/browser.py) at a laptop's 1,366 px and at
1,920 px, from a real run of five photos, and from that run grown past the gallery's cap (tests/scale_helpers.py).
Screenshots are kept in the test's temporary folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium_browser  # pytest puts tests/ on sys.path
from ray_helpers import ray_run
from scale_helpers import make_large_out
from xcv_batch.report.html import GALLERY_CAP, write_report
from xcv_batch.report.summarize import summarize

PHOTOS = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg"]
WIDTHS = [1366, 1920]
#: The run's methods: three cheap ones at 32 px, with a second quality metric (complexity) so that every section
#: (agreement heat map, several distributions and CD diagrams) has something to draw.
METHODS = {"occlusion": {"window": 16, "stride": 16}, "integrated_gradients": {"n_steps": 2}, "guided_gradcam": {}}

# What the page shows, measured in the browser: the page's and the main table's widths, every figure's natural and
# rendered width, the table of contents' targets and the gallery.
_MEASURE = """() => {
  const main = document.querySelector('table.main');
  const gallery = document.getElementById('gallery');
  return {
    viewport: window.innerWidth,
    pageWidth: document.scrollingElement.scrollWidth,
    mainWidth: main.scrollWidth,
    mainBox: main.parentElement.clientWidth,
    figures: [...document.images].map(i => ({alt: i.alt, natural: i.naturalWidth,
                                             rendered: i.getBoundingClientRect().width})),
    contents: [...document.querySelectorAll('nav#contents a')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    sections: document.querySelectorAll('section').length,
    panels: [...gallery.querySelectorAll('figure')].map(f => [f.querySelector('figcaption').innerText,
                                                              f.querySelectorAll('img').length]),
    galleryText: gallery.innerText,
  };
}"""


@pytest.fixture(scope="module")
def five_photos(tmp_path_factory):
    """A real run of five photos (every one decodes) with three methods, sensitivity and complexity."""
    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    folder = tmp_path_factory.mktemp("five-photos")
    for name in PHOTOS:
        shutil.copy(os.path.join(data, name), folder / name)
    out, report = ray_run(tmp_path_factory.mktemp("five-run"), folder, methods=METHODS, metrics={"complexity": {}})
    assert report.n_images == 5 and report.n_failed == 0
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as started:
        yield started


def _look(browser, path: str, shots: Path, name: str) -> dict[int, dict]:
    """The report at each width: measured with every collapsible part closed and open, and screenshotted."""
    seen = {}
    for width in WIDTHS:
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(Path(path).as_uri())
        closed = page.evaluate(_MEASURE)
        page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
        opened = page.evaluate(_MEASURE)
        shot = shots / f"{name}-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
        seen[width] = {"closed": closed, "open": opened, "shot": shot}
    return seen


def _assert_fits(seen: dict[int, dict]) -> None:
    for width, views in seen.items():
        for state in ("closed", "open"):
            page = views[state]
            assert page["viewport"] == width
            # Nothing scrolls sideways: neither the page nor the main ranking inside its box.
            assert page["pageWidth"] <= width, (width, state, page["pageWidth"])
            assert 0 < page["mainWidth"] <= page["mainBox"], (width, state)
            # Every figure decoded and drawn at 60 % of its own width or more.
            assert page["figures"]
            for figure in page["figures"]:
                assert figure["natural"] > 0, figure
                assert figure["rendered"] >= 0.6 * figure["natural"], (width, state, figure)
            # The contents list every section, each link lands on an element of the page.
            assert len(page["contents"]) == page["sections"] >= 8
            assert all(href.startswith("#") and href[1:] in page["ids"] for href in page["contents"])
        # The screenshot: the page's width, and not blank (text and figures, not one colour).
        pixels = np.asarray(Image.open(views["shot"]).convert("L"), dtype=float)
        assert pixels.shape[1] == width and pixels.shape[0] > 2000
        assert pixels.std() > 20 and (pixels < 128).mean() > 0.01


def test_report_of_five_photos_fits_a_laptop_and_shows_every_image(five_photos, browser, tmp_path):
    path = write_report(five_photos, summarize(five_photos, n_boot=50))
    seen = _look(browser, path, tmp_path, "five")
    _assert_fits(seen)
    page = seen[1366]["open"]
    # One small figure per ranked metric in the distributions, all five photos in the gallery, one panel each.
    assert sum(f["alt"].startswith("distribution of ") for f in page["figures"]) >= 2
    shown = sorted(caption.split(":")[0] for caption, images in page["panels"])
    assert shown == sorted(PHOTOS) and all(images == 1 for _, images in page["panels"])
    assert "All 5 images with a map" in page["galleryText"] and "not shown" not in page["galleryText"]


def test_report_past_the_gallery_cap_says_how_many_images_it_leaves_out(five_photos, browser, tmp_path):
    n_images = GALLERY_CAP + 5
    out = make_large_out(five_photos, str(tmp_path / "grown"), n_images, parts=2, images_per_object=4,
                         error_every=1000)
    path = write_report(out, summarize(out, n_boot=50))
    seen = _look(browser, path, tmp_path, "grown")
    _assert_fits(seen)
    page = seen[1920]["open"]
    assert len(page["panels"]) == GALLERY_CAP
    assert f"{GALLERY_CAP} of {n_images} images with a map, the most and least stable" in page["galleryText"]
    assert f"{n_images - GALLERY_CAP} images are not shown" in page["galleryText"]


def test_report_of_every_registered_metric_and_five_methods_still_fits(browser, tmp_path):
    """The widest report: every registered quality metric (11 at this writing) on five methods, an OUT built by hand
    (test_summarize.write_out). Before, its ranking had 28 columns and scrolled sideways at 1,920 px."""
    from test_summarize import seed_like_rows, write_out
    from xcv_batch.metrics.registry import registered_metrics

    rows = seed_like_rows(10)
    rng = np.random.default_rng(0)
    names = [info.name for info in registered_metrics()]
    for name in names[1:]:
        rows[name] = rng.random(len(rows))
    out = write_out(tmp_path / "out", rows, n_images=10)
    summary = summarize(str(out), n_boot=50)
    assert len(summary.metrics) == len(names) >= 11
    seen = _look(browser, write_report(str(out), summary, gallery=2), tmp_path, "wide")  # the cap, given
    _assert_fits(seen)
    page = seen[1366]["open"]
    assert sum(f["alt"].startswith("distribution of ") for f in page["figures"]) == len(names)
    assert sum(f["alt"].startswith("critical-difference diagram") for f in page["figures"]) == len(names)
    assert len(page["panels"]) == 2 and "8 images are not shown" in page["galleryText"]
