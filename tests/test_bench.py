"""The benchmark (``python scripts/bench``) end to end on a tiny configuration: it times the engine through
explain_batch, counts each method's rows from the registry, and its maps equal an fp32 engine's at fp32."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from xcv_batch.config import SensitivityConfig
from xcv_batch.plan import Passes, classify_passes
from xcv_batch.methods import method_spec
from xcv_batch.methods.settings import METHOD_SETTINGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES, IMAGES, FORWARD_BATCH = 32, 2, 2
#: A forward method and a gradient one. Guided Grad-CAM's 2 rows fit in few forward batches: timed as two repeats
#: of the whole-batch call; Occlusion's 2 × 17 rows at forward batch 2 do not: timed as slices, an image per piece.
SETTINGS = {"occlusion": METHOD_SETTINGS["occlusion"](), "guided_gradcam": METHOD_SETTINGS["guided_gradcam"]()}
pytestmark = pytest.mark.slow  # a benchmark in a subprocess: 15 s on an idle 2-core machine, 40 s under load
TIMINGS = ("seconds", "seconds_per_image", "efficiency", "raw_rate", "rows")


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "scripts/bench", "--res", str(RES), "--images", str(IMAGES), "--pieces", "2",
               "--forward-batch", str(FORWARD_BATCH), "--methods", ",".join(SETTINGS),
               "--sens-images", "1", "--seed-images", "0",
               "--parity-images", str(IMAGES), "--segmentation-res", "0", "--threads", "1", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(out / "bench.json", encoding="utf-8") as fh:
        report = json.load(fh)
    assert (out / "bench.md").read_text(encoding="utf-8").count("\n| ") == 1 + len(SETTINGS)  # header + a row each
    return report


def test_every_method_and_its_sensitivity_is_timed(report):
    assert list(report["engine"]) == list(SETTINGS)
    assert report["forward_batches"] == {name: FORWARD_BATCH for name in SETTINGS}
    for name, entry in report["engine"].items():
        for part in ("method", "sensitivity"):
            assert all(positive_finite(entry[part][key]) for key in TIMINGS), (name, part, entry[part])
            assert all(positive_finite(e) for e in entry[part]["piece_efficiencies"])
    for kind in ("forward", "forward_backward"):
        assert positive_finite(report["execution_gain"][kind]["gain"])


def test_rows_come_from_the_registry_with_the_classifying_forward(report):
    for name, settings in SETTINGS.items():
        spec = method_spec(name)
        per_image = spec.passes(settings, RES, RES).rows
        one_row = Passes(forward_backward=1) if spec.differentiates else Passes(forward=1)
        method = report["engine"][name]["method"]
        assert method["kind"] == ("forward_backward" if spec.differentiates else "forward")
        # Guided Grad-CAM's own forward picks the target: no classifying forward is counted for it
        classify = classify_passes([name]).work / one_row.work
        assert classify == (0 if name == "guided_gradcam" else 1)
        assert method["classify_rows_per_image"] == pytest.approx(classify)
        assert method["rows_per_image"] == pytest.approx(per_image + classify)
        short = per_image * IMAGES <= 16 * FORWARD_BATCH
        timed_images = 2 * IMAGES if short else IMAGES  # two whole-batch repeats, or each image once
        assert len(method["piece_seconds"]) == 2
        assert method["rows"] == pytest.approx(timed_images * method["rows_per_image"])
        sensitivity = report["engine"][name]["sensitivity"]
        assert sensitivity["rows"] == per_image * SensitivityConfig().n_perturb_samples


def test_the_engines_maps_equal_an_fp32_engines_at_fp32(report):
    """Equal up to float rounding: the timed calls batch the images differently from the reference's one call."""
    assert set(report["parity"]) == set(SETTINGS)
    for name, parity in report["parity"].items():
        assert parity["relative_l2_median"] < 1e-5, name
        assert parity["cosine_median"] == pytest.approx(1.0, abs=1e-9)
        assert parity["max_abs_difference"] < 1e-4
