"""Control maps (random, edges, centre): what each map is, that they cost no model pass, that every metric scores them,
and that the job key and the dry run count them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ray_helpers import JOB, write_job
from xcv_batch import cli
from xcv_batch.config import ConfigError, job_from_raw, load_job
from xcv_batch.execution.explain import BatchExplainer
from xcv_batch.methods import build_method, method_spec
from xcv_batch.methods.controls import sobel_magnitude, uniform_noise
from xcv_batch.methods.registry import control_names
from xcv_batch.plan import method_passes
from xcv_batch.seeding import derive_seed

CONTROLS = ["random", "edges", "centre"]
SHARED = [{"image_id": i, "image_path": i, "index": k, "label": None} for k, i in enumerate(["a", "b"])]


def test_the_controls_are_registered_as_methods_marked_control_with_no_passes():
    assert list(control_names()) == CONTROLS
    for name in CONTROLS:
        spec = method_spec(name)
        assert spec.control and spec.passes(spec.settings(), 32, 32).work == 0
    assert not method_spec("occlusion").control


def test_controls_default_on_after_the_methods_and_off_with_the_key():
    raw = {"methods": {"integrated_gradients": {"n_steps": 4}}}
    assert list(job_from_raw(raw).methods) == ["integrated_gradients", *CONTROLS]
    off = job_from_raw({**raw, "controls": False})
    assert list(off.methods) == ["integrated_gradients"] and off.to_dict()["controls"] is False
    # OUT/job.yaml lists the controls with the methods; read back, it is the same job
    on = job_from_raw(raw)
    assert job_from_raw(on.to_dict()).fingerprint() == on.fingerprint() != off.fingerprint()
    with pytest.raises(ConfigError, match="name at least one method of: occlusion"):
        job_from_raw({"methods": {"random": {}}})


def test_the_dry_run_counts_the_metric_passes_the_controls_add(tmp_path, photo_folder, capsys):
    job = write_job(tmp_path / "job.yaml", photo_folder, metrics={"deletion": {"n_steps": 4}}, controls=True)
    passes = method_passes(load_job(job))
    # no map pass: Max-Sensitivity re-explains with the control (no model), deletion runs its n_steps + 1 forwards
    assert {name: passes[name].describe() for name in CONTROLS} == {name: "5 forward" for name in CONTROLS}
    assert cli.main(["run", job, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in CONTROLS:
        assert any(line.split()[:3] == [name, "5", "forward"] and "(control" in line for line in lines), lines


@pytest.fixture(scope="module")
def explained(classifier):
    job = job_from_raw({"methods": {"integrated_gradients": {"n_steps": 4}}, "seed": 11,
                        "sensitivity": {"n_perturb_samples": 2},
                        "metrics": {"deletion": {"n_steps": 4}, "complexity": {}}})
    explainer = BatchExplainer(classifier, job.methods, job.sensitivity, job.metrics, job.compute, job.seed)
    g = torch.Generator().manual_seed(3)
    inputs = classifier.preprocessing.normalize(torch.rand((2, 3, 32, 32), generator=g))
    return explainer, inputs, explainer.explain_batch(inputs, ["a", "b"])


def test_random_is_its_seeds_uniform_draw_and_costs_no_forward(explained):
    explainer, inputs, result = explained
    for position, image_id in enumerate(["a", "b"]):
        expected = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(derive_seed(11, image_id, "random")))
        np.testing.assert_array_equal(result.result(position, "random").attribution, expected.numpy())
    np.testing.assert_array_equal(uniform_noise(5, (2, 3)), torch.rand((2, 3), generator=torch.Generator()
                                                                          .manual_seed(5)).numpy())
    forwards = []
    hook = explainer.executed.net.register_forward_hook(lambda *args: forwards.append(1))
    try:
        for name in CONTROLS:
            explainer.methods[name].attribute(inputs, torch.tensor([1, 2]), [1, 2])
    finally:
        hook.remove()
    assert forwards == []


def test_edges_is_scipys_sobel_magnitude_of_the_input(explained):
    _, inputs, result = explained
    for position in range(2):
        channels = inputs[position].double().numpy()
        expected = np.stack([np.hypot(ndimage.sobel(c, axis=0), ndimage.sobel(c, axis=1)) for c in channels])
        np.testing.assert_allclose(result.result(position, "edges").attribution, expected, rtol=1e-5, atol=1e-5)
    x = torch.rand((1, 3, 7, 9), dtype=torch.float64)
    expected = np.stack([np.hypot(ndimage.sobel(c, axis=0), ndimage.sobel(c, axis=1)) for c in x[0].numpy()])
    np.testing.assert_allclose(sobel_magnitude(x)[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_centre_is_one_centred_gaussian_for_every_image(explained):
    _, _, result = explained
    a, b = result.result(0, "centre").attribution, result.result(1, "centre").attribution
    np.testing.assert_array_equal(a, b)
    assert a[0, 15, 15] == a[0].max() and a[0, 0, 0] == pytest.approx(np.exp(-0.5 * 2 * (15.5 / 8) ** 2), rel=1e-6)
    np.testing.assert_array_equal(a[0], a[2])


def test_every_metric_scores_the_controls_as_it_scores_a_method(explained):
    _, _, result = explained
    rows = result.rows(SHARED)
    assert {row["method"] for row in rows} == {"integrated_gradients", *CONTROLS}
    columns = ["sensitivity_max", "deletion_auc", "sparseness", "effective_complexity"]
    for row in rows:
        assert row["status"] == "ok" and all(np.isfinite(row[c]) for c in columns), row
    by = {(row["image_id"], row["method"]): row for row in rows}
    # A control map is a function of the image alone, so its perturbed copies keep it: Max-Sensitivity 0
    for image_id in "ab":
        assert by[(image_id, "random")]["sensitivity_max"] == 0.0
        assert by[(image_id, "centre")]["sensitivity_max"] == 0.0
        edges, ig = by[(image_id, "edges")], by[(image_id, "integrated_gradients")]
        assert 0 < edges["sensitivity_max"] < ig["sensitivity_max"]


def test_a_control_under_methods_is_the_same_map_and_a_method_of_every_job_is_refused_without_real_ones():
    job = job_from_raw({"methods": {"occlusion": {}, "random": {}}, "controls": False})
    assert list(job.methods) == ["occlusion", "random"]
    random = build_method("random", None, job.methods["random"], forward_batch=4)
    first = random.attribute(torch.zeros((1, 3, 4, 4)), torch.tensor([0]), [9])
    torch.testing.assert_close(first[0], uniform_noise(9, (3, 4, 4)))
