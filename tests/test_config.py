"""Job files: defaults, --set overrides, fingerprints, and one-line errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

from xcv_batch import cli
from xcv_batch.config import job_from_mapping, load_job
from xcv_batch.errors import ConfigError
from xcv_batch.methods.registry import method_spec
from xcv_batch.methods.settings import METHOD_SETTINGS, IGSmoothGradSettings, LimeSettings, OcclusionSettings


def test_a_method_named_without_settings_takes_the_seed_report_defaults():
    job = job_from_mapping({"methods": {"occlusion": {}, "ig_smoothgrad": {}, "lime": {"num_samples": 50}}})
    assert job.methods["occlusion"] == OcclusionSettings(window=15, stride=8, baseline=0.0)
    assert job.methods["ig_smoothgrad"] == IGSmoothGradSettings(10, "smoothgrad_sq", 1.0, 50)
    assert job.methods["lime"] == LimeSettings(num_samples=50)
    # a method left out is not run; the control maps come after the methods (controls: true by default)
    assert list(job.methods) == ["occlusion", "ig_smoothgrad", "lime", "random", "edges", "centre"]
    assert (job.sensitivity.n_perturb_samples, job.sensitivity.perturb_radius) == (10, 0.02)


def test_sensitivity_null_turns_it_off():
    assert job_from_mapping({"methods": {"lime": {}}, "sensitivity": None}).sensitivity is None


def test_a_method_set_to_null_is_off_as_a_metric_is(tmp_path):
    """``methods.X: null`` means off, as ``metrics.x: null`` and ``sensitivity: null`` do (it used to mean X at its
    defaults: LIME with 1,000 samples)."""
    path = tmp_path / "job.yaml"
    path.write_text("methods:\n  occlusion: {window: 9}\n  lime:\n  guided_gradcam: {layer: auto}\n")
    job = load_job(str(path), ["methods.guided_gradcam=null"])
    assert list(job.methods) == ["occlusion", "random", "edges", "centre"]  # and the control maps
    assert job.fingerprint() == job_from_mapping({"methods": {"occlusion": {"window": 9}}}).fingerprint()
    # a null method still has to be a registered one
    with pytest.raises(ConfigError) as info:
        job_from_mapping({"methods": {"occlusion": {}, "gradcam": None}})
    assert info.value.key == "methods.gradcam"


def test_a_job_whose_methods_are_all_null_is_one_line_naming_methods(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("methods: {occlusion: {window: 9}, lime: {}}\n")
    code = cli.main(["run", str(path), "--dry-run", "--set", "methods.occlusion=null", "--set", "methods.lime=~",
                     "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    real = [name for name in METHOD_SETTINGS if not method_spec(name).control]  # a control map is no method
    assert lines == [f"error: methods: name at least one method of: {', '.join(real)}"]


@pytest.mark.parametrize(
    "raw, key, words",
    [
        ({"methods": {"occlusion": {"window": 4, "stride": 8}}}, "methods.occlusion.stride", "≤ window"),
        ({"methods": {"gradcam": {}}}, "methods.gradcam", "unknown method"),
        ({"methods": {"lime": {"num_samples": -5}}}, "methods.lime.num_samples", "> 0"),
        ({"methods": {"lime": {"num_samples": "many"}}}, "methods.lime.num_samples", "integer"),
        ({"methods": {"lime": {"segmentation": "felzenszwalb"}}}, "methods.lime.segmentation", "'quickshift'"),
        ({"methods": {"ig_smoothgrad": {"nt_type": "sg"}}}, "methods.ig_smoothgrad.nt_type", "'smoothgrad_sq'"),
        ({"methods": {"lime": {}}, "model": {"resolution": 8}}, "model.resolution", "16 … 2048"),
        ({"methods": {"lime": {}}, "model": {"resolution": 100000}}, "model.resolution", "16 … 2048"),
        ({"methods": {"lime": {}}, "seed": 2**70}, "seed", "0 … 2**63"),
        ({"methods": {"lime": {}}, "seed": -1}, "seed", "0 … 2**63"),
        ({"methods": {"lime": {}}, "model": {"depth": 3}}, "model.depth", "unknown key"),
        ({"methods": {"lime": {}}, "colour": "red"}, "colour", "unknown key"),
        ({"methods": {"lime": {}}, "target": "best"}, "target", "'predicted' or 'label'"),
        ({"methods": {"lime": {}}, "compute": {"workers": 0}}, "compute.workers", "'auto'"),
        ({"methods": {"lime": {}}, "compute": {"forward_batch": 0}}, "compute.forward_batch", "'auto' or ≥ 1"),
        ({"methods": {"lime": {}}, "compute": {"forward_batch": "max"}}, "compute.forward_batch", "'auto'"),
        ({"methods": {"lime": {}}, "compute": {"precision": "fp8"}}, "compute.precision", "'bf16'"),
        ({"methods": {"lime": {}}, "compute": {"fast_execution": "yes"}}, "compute.fast_execution", "true/false"),
        ({"methods": {"lime": {}}, "compute": {"segmentation_workers": -1}}, "compute.segmentation_workers", "≥ 1"),
        ({"methods": {"lime": {}}, "sensitivity": {"n_perturb_samples": 0}}, "sensitivity.n_perturb_samples", "≥ 1"),
        ({"methods": {}}, "methods", "at least one"),
        ({"methods": {"lime": None, "occlusion": None}}, "methods", "at least one"),
        ({"methods": {"lime": {}}, "data": "folder"}, "data", "mapping"),
    ],
)
def test_bad_values_name_their_key(raw, key, words):
    with pytest.raises(ConfigError) as info:
        job_from_mapping(raw)
    assert info.value.key == key
    assert words in info.value.message


def test_set_overrides_dotted_keys_with_yaml_values(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("methods:\n  occlusion: {window: 15, stride: 8}\nmodel: {weights: IMAGENET1K_V1}\n")
    job = load_job(str(path), ["methods.occlusion.window=9", "model.weights=none", "sensitivity=null",
                               "data.limit=3", "methods.lime.num_samples=20"], output=str(tmp_path / "o"))
    assert job.methods["occlusion"].window == 9
    assert job.model.weights == "none"
    assert job.sensitivity is None
    assert job.data.limit == 3
    assert job.methods["lime"].num_samples == 20
    assert job.output.path == str(tmp_path / "o")


def test_fingerprint_ignores_where_and_how_but_not_what():
    base = job_from_mapping({"methods": {"occlusion": {}}})
    same = dataclasses.replace(
        base, output=dataclasses.replace(base.output, path="elsewhere"),
        compute=dataclasses.replace(base.compute, batch_size=3, forward_batch=7, shard_size=5, workers=4),
    )
    assert same.fingerprint() == base.fingerprint()
    other = job_from_mapping({"methods": {"occlusion": {"window": 16}}})
    assert other.fingerprint() != base.fingerprint()
    assert job_from_mapping({"seed": 1, "methods": {"occlusion": {}}}).fingerprint() != base.fingerprint()


def test_shipped_jobs_are_valid():
    for name in ("smoke", "demo", "seed"):
        job = load_job(f"jobs/{name}.yaml")
        assert set(job.methods) == {"occlusion", "integrated_gradients", "ig_smoothgrad", "guided_gradcam", "lime",
                                    "random", "edges", "centre"}  # the control maps, on by default
    seed = load_job("jobs/seed.yaml")
    assert seed.methods["occlusion"] == OcclusionSettings()
    assert seed.methods["lime"] == LimeSettings()
    assert seed.model.resolution == 224


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
methods: {occlusion: {}}
"""


@pytest.mark.timeout(20)
def test_yaml_aliases_are_refused_before_anything_expands(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError) as info:
        load_job(str(path), ["data.limit=2"])
    assert "aliases (*a) are not allowed" in info.value.message and "line 2" in info.value.message
    # the same one line from every verb that reads a job file, before any connection is tried
    from xcv_batch import cli

    for verb in (["run", str(path)], ["submit", str(path), "--address", "http://127.0.0.1:1"],
                 ["status", str(path), "--address", "http://127.0.0.1:1"],
                 ["logs", str(path), "--address", "http://127.0.0.1:1"],
                 ["stop", str(path), "--address", "http://127.0.0.1:1"]):
        assert cli.main(verb) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "aliases (*a) are not allowed" in err, verb
    # in a --set value too; anchors without aliases stay allowed
    ok = tmp_path / "anchored.yaml"
    ok.write_text("methods: {occlusion: &o {window: 8, stride: 4}}\n")
    assert load_job(str(ok)).methods["occlusion"].window == 8
    with pytest.raises(ConfigError, match="aliases"):
        load_job(str(ok), ["methods.lime=[&x {}, *x]"])


def test_a_job_file_that_is_not_text_or_is_huge_is_one_error(tmp_path):
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_job(str(binary))
    huge = tmp_path / "huge.yaml"
    huge.write_text("methods: {occlusion: {}}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="at most 1048576 bytes"):
        load_job(str(huge))


def test_the_fingerprint_follows_the_weights_file_content_not_its_path(tmp_path):
    import os

    import torch

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    raw = {"model": {"weights": str(path)}, "methods": {"occlusion": {}}}
    first = job_from_mapping(raw).fingerprint()
    os.utime(path, ns=(1, 1))  # touched, same bytes: same fingerprint
    assert job_from_mapping(raw).fingerprint() == first
    torch.save({"w": torch.ones(3)}, path)  # replaced under the same path
    assert job_from_mapping(raw).fingerprint() != first
    # a weights name is not a file: the fingerprint does not change form
    named = job_from_mapping({"model": {"weights": "IMAGENET1K_V1"}, "methods": {"occlusion": {}}})
    assert "weights_sha256" not in named.to_dict()["model"]
