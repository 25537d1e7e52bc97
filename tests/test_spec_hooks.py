"""What a method's or metric's spec declares is what the rest of the package does: a toy method registered from
this file with every hook, and a toy metric, are checked against the job, the model, the fingerprint, the panel,
the diagnostics and the masks without any other module naming them."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from xcv_batch.config import job_from_mapping, job_from_raw
from xcv_batch.errors import ConfigError
from xcv_batch.execution.probe import probe_pass_times
from xcv_batch.methods import MethodSpec, registered
from xcv_batch.methods.registry import DiagnosticInfo, Passes, method_spec
from xcv_batch.metrics.registry import DIAGNOSTICS, MetricInfo, MetricSpec, masks_required_by, metric_spec
from xcv_batch.metrics.registry import registered as metric_registered
from xcv_batch.report.panel import is_signed
from xcv_batch.report.summarize import diagnostics_summary


@dataclass(frozen=True)
class HookedSettings:
    patch: int = 4  # must fit the model's resolution
    layer: str = "layer4"  # must be a module of the model
    workers_hint: int = 1  # how, not what: left out of the fingerprint
    signed: bool = True


def check_layer_exists(classifier, settings: HookedSettings) -> None:
    if settings.layer not in dict(classifier.net.named_modules()):
        raise ConfigError("methods.hooked.layer", f"'{settings.layer}' is not a layer of {classifier.arch}")


def patch_fits(settings: HookedSettings, job) -> None:
    if settings.patch > job.model.resolution:
        raise ConfigError("methods.hooked.patch", f"must be ≤ model.resolution ({job.model.resolution})")


HOOKED = MethodSpec(
    name="hooked", settings=HookedSettings, label="Hooked", implementation="never.loaded:Hooked",
    passes=lambda s, height, width: Passes(forward=1),
    signed=lambda s: s.get("signed", True),
    diagnostics=(DiagnosticInfo("hooked_gap", "Hooked gap", 0.1, "how far off the toy is"),),
    check_job=patch_fits, check_model=f"{__name__}:check_layer_exists", unhashed=("workers_hint",),
)

JOB = {
    "name": "hooks", "seed": 0, "data": {"source": "builtin:skimage", "limit": 1},
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}},
    "sensitivity": None, "compute": {"device": "cpu", "forward_batch": 4},
}


def with_hooked(**settings) -> dict:
    return {**JOB, "methods": {"hooked": settings}}


def test_a_methods_job_check_runs_when_the_job_loads():
    with registered(HOOKED):
        assert job_from_raw(with_hooked(patch=32)).methods["hooked"].patch == 32
        with pytest.raises(ConfigError, match=r"^methods\.hooked\.patch: must be ≤ model\.resolution \(32\)"):
            job_from_raw(with_hooked(patch=33))
    # The built-in one, now declared by occlusion's spec.
    with pytest.raises(ConfigError, match=r"^methods\.occlusion\.window: must be ≤ model\.resolution \(32\), got 40"):
        job_from_raw({**JOB, "methods": {"occlusion": {"window": 40, "stride": 8}}})


def test_a_methods_model_check_runs_in_the_dry_runs_probe():
    with registered(HOOKED):
        times = probe_pass_times(job_from_raw(with_hooked(layer="layer4")), repeats=1, budget_s=0.0)
        assert times.forward_s > 0 and times.forward_backward_s > 0
        with pytest.raises(ConfigError, match=r"^methods\.hooked\.layer: 'nope' is not a layer of resnet18"):
            probe_pass_times(job_from_raw(with_hooked(layer="nope")), repeats=1, budget_s=0.0)
    with pytest.raises(ConfigError, match=r"^methods\.guided_gradcam\.layer: 'nope' is not a layer of resnet18"):
        probe_pass_times(job_from_raw({**JOB, "methods": {"guided_gradcam": {"layer": "nope"}}}), repeats=1, budget_s=0.0)


def test_unhashed_keys_leave_the_fingerprint_and_the_others_enter_it():
    with registered(HOOKED):
        base = job_from_mapping(with_hooked()).fingerprint()
        assert job_from_mapping(with_hooked(workers_hint=8)).fingerprint() == base
        assert job_from_mapping(with_hooked(patch=8)).fingerprint() != base
    occlusion = {**JOB, "methods": {"occlusion": {"window": 8, "stride": 8}}}
    assert method_spec("occlusion").unhashed == ("incremental",)
    assert (job_from_mapping(occlusion).fingerprint()
            == job_from_mapping({**occlusion, "methods": {"occlusion": {"window": 8, "stride": 8,
                                                                        "incremental": False}}}).fingerprint())


def test_a_metric_hashed_when_off_keeps_its_null_in_the_fingerprint_and_a_new_one_does_not():
    assert "infidelity" in job_from_mapping(JOB).fingerprint_fields()["metrics"]
    assert metric_spec("infidelity").hashed_when_off and not metric_spec("complexity").hashed_when_off
    assert "complexity" not in job_from_mapping(JOB).fingerprint_fields()["metrics"]


def test_the_panel_reads_signed_from_the_spec():
    with registered(HOOKED):
        assert is_signed("hooked", {}) is True and is_signed("hooked", {"signed": False}) is False
    assert is_signed("hooked", {}) is None  # unregistered: decided by the map's content


def test_diagnostics_are_declared_by_their_methods_spec():
    assert DIAGNOSTICS["ig_completeness_gap"].method == "integrated_gradients"
    with registered(HOOKED):
        assert DIAGNOSTICS["hooked_gap"] == DiagnosticInfo("hooked_gap", "Hooked gap", 0.1, "how far off the toy is",
                                                           method="hooked")
        ok = pd.DataFrame({"image_id": ["a", "b", "a"], "method": ["hooked", "hooked", "occlusion"],
                           "hooked_gap": [0.05, 0.3, 0.9]})
        found = diagnostics_summary(ok)["hooked_gap"]  # the method's own rows only: occlusion's 0.9 is not its
        assert (found.method, found.n, found.n_above, found.above[0].image_id) == ("hooked", 2, 1, "b")
    assert "hooked_gap" not in DIAGNOSTICS


@dataclass(frozen=True)
class NeedsMasksSettings:
    strict: bool = False


def test_a_metric_says_when_every_image_needs_a_mask():
    spec = MetricSpec(name="needs_masks", settings=NeedsMasksSettings, implementation="never.loaded:NeedsMasks",
                      columns=(MetricInfo("needs_masks_score", "higher", "Needs masks"),), uses_masks=True,
                      masks_required=lambda settings: settings.strict)
    off = job_from_mapping({**JOB, "metrics": {"localisation": "auto"}})
    assert masks_required_by(off.sensitivity, off.metrics) is None
    strict = job_from_mapping({**JOB, "metrics": {"localisation": True}})
    assert masks_required_by(strict.sensitivity, strict.metrics) is metric_spec("localisation")
    with metric_registered(spec):
        job = job_from_mapping({**JOB, "metrics": {"localisation": False, "needs_masks": {"strict": True}}})
        assert masks_required_by(job.sensitivity, job.metrics) is spec
        job = job_from_mapping({**JOB, "metrics": {"localisation": False, "needs_masks": {"strict": False}}})
        assert masks_required_by(job.sensitivity, job.metrics) is None


def test_the_api_refuses_a_call_without_the_masks_a_metric_requires():
    import torch
    import torchvision

    from xcv_batch import Explainer

    torch.manual_seed(0)
    explainer = Explainer(torchvision.models.resnet18(num_classes=3), methods=["integrated_gradients"],
                          sensitivity=None, resolution=32, metrics={"localisation": True})
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"^masks: metrics\.localisation is on: give a mask for every image"):
        explainer.explain(images, masks=[torch.ones(32, 32, dtype=torch.bool), None])


def test_a_run_fails_the_rows_of_an_image_without_the_mask_a_metric_requires(tmp_path):
    import os

    from xcv_batch.driver import run_job
    from xcv_batch.output.results import open_results

    job = job_from_mapping({**JOB, "metrics": {"localisation": True}, "output": {"path": str(tmp_path / "out")},
                            "compute": {**JOB["compute"], "workers": 1}})
    run_job(job, stream=open(os.devnull, "w"))
    rows = open_results(job.output.path).rows()
    # one row per method and control map (controls: true by default), each failed for the same reason
    assert len(rows) == 4 and rows.status.tolist() == ["error"] * 4
    assert rows.error.tolist() == ["metrics.localisation is on but this image has no mask_path in the manifest"] * 4


# --- no module names a method or a metric but its own ------------------------------------------------------------
#: (file under xcv_batch/, name) pairs that stay, and why. A new special case fails the test below: declare it in
#: the spec instead.
NAMED_ON_PURPOSE = {
    # examples of job keys in help and error texts, not behaviour
    ("cli.py", "occlusion"), ("cli.py", "sensitivity_max"), ("cli.py", "deletion_auc"),
    ("config.py", "occlusion"), ("report/summarize.py", "sensitivity_max"), ("report/summarize.py", "deletion_auc"),
    # Max-Sensitivity is the seed report's headline column: a top-level job key (``sensitivity:``), a column of the
    # row schema written even when off, the order of the report's gallery and the panels' subtitles
    ("api.py", "sensitivity"), ("config.py", "sensitivity"), ("driver/run.py", "sensitivity"),
    ("execution/explain.py", "sensitivity_max"), ("output/layout.py", "sensitivity_max"),
    ("report/html.py", "sensitivity_max"), ("report/html.py", "sensitivity"),
    ("report/panel.py", "sensitivity_max"), ("report/panel.py", "sensitivity"),
    ("report/summarize.py", "sensitivity"), ("report/summary_text.py", "sensitivity"),
    # the seed report's Table I: its figures per method, compared with a run that matches its settings
    ("report/summary_text.py", "sensitivity_max"), ("report/summary_text.py", "occlusion"),
    ("report/summary_text.py", "integrated_gradients"), ("report/summary_text.py", "ig_smoothgrad"),
    ("report/summary_text.py", "guided_gradcam"), ("report/summary_text.py", "lime"),
    # the 'auto' layer exists for Guided Grad-CAM alone, and its message names that key
    ("models/layers.py", "guided_gradcam"),
    # the words, not the control maps of the same names: random weights, a centre crop
    ("models/timm_models.py", "random"), ("models/torchvision_models.py", "random"), ("report/html.py", "random"),
    ("models/timm_models.py", "centre"),
}


def test_no_module_names_a_method_or_metric_outside_its_own_files():
    import ast
    import pathlib
    import re

    from xcv_batch.methods.registry import method_specs
    from xcv_batch.metrics.registry import metric_specs

    package = pathlib.Path(__file__).resolve().parent.parent / "xcv_batch"
    names = ({spec.name for spec in method_specs()} | {spec.name for spec in metric_specs()}
             | {column.name for spec in metric_specs() for column in spec.columns})
    own = ({"methods/settings.py", "metrics/settings.py", "methods/oracles.py"}
           | {f"methods/{spec.module.rsplit('.', 1)[1]}.py" for spec in method_specs()}
           | {f"metrics/{spec.module.rsplit('.', 1)[1]}.py" for spec in metric_specs()})
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(names, key=len, reverse=True)) + r")(?![A-Za-z0-9_])")
    found = set()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        # a method's helper modules carry its module's name as a prefix (methods/occlusion_path.py)
        if relative in own or any(relative.startswith(name.removesuffix(".py") + "_") for name in own
                                  if name.startswith("methods/")):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found |= {(relative, name) for name in word.findall(node.value)}
    assert found - NAMED_ON_PURPOSE == set(), "declare the trait in the method's or metric's spec instead"
