"""How a run's worker executes the methods: the fast model copy, precision, forward-batch sizing, out-of-memory
halving and LIME's segmentation processes, each driven through ``compute`` and checked on a real run's output."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fake_device import FakeMemory, RefusesBigBatches
from ray_helpers import METHODS, maps_of, rows_of, write_job
from xcv_batch.methods import segmentation
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.driver.local import InProcessExecutor
from xcv_batch.execution.explain import CPU_FORWARD_BATCH, segmentation_workers
from xcv_batch.execution.worker import ShardWorker


def run(tmp_path, photo_folder, executor_type=InProcessExecutor, **changes):
    job = load_job(write_job(tmp_path / "job.yaml", photo_folder, **changes), output=str(tmp_path / "out"))
    executor = executor_type(job)
    report = run_job(job, executor=executor)
    return report, rows_of(job.output.path), maps_of(job.output.path), executor


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference relative to the map's largest value: what the methods' own tests bound."""
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.BatchNorm2d) for module in net.modules())


def test_fast_execution_runs_on_the_folded_copy_and_changes_maps_only_by_rounding(
    tmp_path, photo_folder, reference_run
):
    """The reference run has the default ``fast_execution: true``; the stock model must give the same maps."""
    reference_rows, reference_maps = reference_run
    report, rows, maps, executor = run(tmp_path, photo_folder, compute__fast_execution=False)
    assert report.n_failed == 1  # notes.jpg, as in the reference
    stock_worker = ShardWorker(executor.job)
    assert all(has_batchnorm(method.classifier.net) for method in stock_worker.methods.values())

    fast_worker = ShardWorker(load_job(write_job(tmp_path / "fast.yaml", photo_folder)))
    for method in fast_worker.methods.values():
        assert not has_batchnorm(method.classifier.net)  # folded into the convolutions
        assert method.classifier.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert has_batchnorm(fast_worker.classifier.net)  # the model as built is untouched

    ok = rows.status == "ok"
    assert ok.sum() == (reference_rows.status == "ok").sum() == 4 * len(METHODS)
    assert (rows.target[ok].to_numpy() == reference_rows.target[ok].to_numpy()).all()
    np.testing.assert_allclose(rows.target_prob[ok], reference_rows.target_prob[ok], rtol=1e-4)
    for name in METHODS:
        for index in range(4):  # the four photos; index 4 is the broken file
            assert relative_error(maps[name][index], reference_maps[name][index]) < 1e-4, (name, index)


def test_bf16_precision_is_applied_and_stays_close_to_fp32(tmp_path, photo_folder, reference_run):
    reference_rows, reference_maps = reference_run
    report, rows, maps, _ = run(tmp_path, photo_folder, compute__precision="bf16")
    assert report.n_failed == 1
    # bf16 keeps 8 bits of mantissa: maps differ visibly from fp32 (so the setting reached the passes) …
    differences = [relative_error(maps[name][i], reference_maps[name][i]) for name in METHODS for i in range(4)]
    assert max(differences) > 1e-3
    # … but they explain the same thing: each map points the same way as its fp32 twin.
    for name in ("occlusion", "integrated_gradients", "guided_gradcam"):
        for index in range(4):
            a, b = maps[name][index].ravel(), reference_maps[name][index].ravel()
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert cosine > 0.95, (name, index, cosine)


def test_precision_and_execution_change_the_fingerprint_but_batch_sizes_do_not(tmp_path, photo_folder):
    def fingerprint(**changes):
        return load_job(write_job(tmp_path / "job.yaml", photo_folder, **changes)).fingerprint()

    base = fingerprint()
    assert fingerprint(compute__precision="bf16") != base
    assert fingerprint(compute__fast_execution=False) != base
    assert fingerprint(compute__forward_batch="auto") == base
    assert fingerprint(compute__segmentation_workers=3) == base


def test_auto_forward_batch_is_probed_from_device_memory_per_kind_of_pass(tmp_path, photo_folder, monkeypatch):
    job = load_job(write_job(tmp_path / "job.yaml", photo_folder, compute__forward_batch="auto"))
    assert all(m.forward_batch == CPU_FORWARD_BATCH for m in ShardWorker(job).methods.values())  # CPU: no probe

    # As on a GPU: 1e6 free bytes at 80 % headroom → 800 rows forward-only, 200 with a backward.
    monkeypatch.setattr("xcv_batch.execution.device.device_memory", lambda device: FakeMemory(1_000_000, 1_000, 4_000))
    worker = ShardWorker(job)
    assert {name: m.forward_batch for name, m in worker.methods.items()} == {
        "occlusion": 800, "integrated_gradients": 200, "guided_gradcam": 200, "lime": 800,
    }
    assert worker.explainer.forward_batch == 200  # the metrics' forwards take the smallest, safe for all


class TightMemoryExecutor(InProcessExecutor):
    """The in-process executor whose Occlusion and IG run out of memory above 5 rows a pass."""

    def __enter__(self):
        super().__enter__()
        for name in ("occlusion", "integrated_gradients"):
            method = self.worker.methods[name]
            method.classifier = dataclasses.replace(method.classifier, net=RefusesBigBatches(method.classifier.net, 5))
        return self

    def __exit__(self, *exc):
        self.remembered = dict(self.worker.oom.remembered)
        super().__exit__(*exc)


def test_out_of_memory_in_a_run_halves_the_batch_and_loses_nothing(tmp_path, photo_folder, reference_run):
    reference_rows, reference_maps = reference_run
    report, rows, maps, executor = run(tmp_path, photo_folder, TightMemoryExecutor)
    assert report.n_failed == 1  # only the broken file: no image fails for memory
    assert executor.remembered == {"occlusion": 4, "integrated_gradients": 4}  # 16 → 8 → 4, kept for later calls
    ok = reference_rows.status == "ok"
    np.testing.assert_allclose(rows.sensitivity_max[ok], reference_rows.sensitivity_max[ok], rtol=2e-3)
    for name in ("occlusion", "integrated_gradients"):
        for index in range(4):
            assert relative_error(maps[name][index], reference_maps[name][index]) < 1e-4, (name, index)


def test_segmentation_processes_follow_the_device_and_the_setting(tmp_path, photo_folder, monkeypatch):
    job = load_job(write_job(tmp_path / "job.yaml", photo_folder))
    try:
        ShardWorker(job)
        assert segmentation.segmentation_workers() == 1  # CPU: inline, the model's threads hold the cores
        ShardWorker(load_job(write_job(tmp_path / "job.yaml", photo_folder, compute__segmentation_workers=3)))
        assert segmentation.segmentation_workers() == 3

        monkeypatch.setattr("xcv_batch.execution.explain.usable_cores", lambda: 8)
        cuda = torch.device("cuda")
        assert segmentation_workers("auto", cuda, torch_threads=None) == 7  # a GPU worker: all cores but the feeder's
        assert segmentation_workers("auto", cuda, torch_threads=4) == 3  # a GPU worker's share of a shared node
        assert segmentation_workers(3, cuda, torch_threads=4) == 3
    finally:
        segmentation.set_segmentation_workers(None)


def test_target_label_explains_the_manifest_label_and_an_unlabelled_image_fails_alone(tmp_path, photo_folder):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label\n{photo_folder / 'chelsea.png'},281\n{photo_folder / 'coffee.png'},\n")
    job = load_job(write_job(tmp_path / "job.yaml", manifest, target="label"), output=str(tmp_path / "out"))
    report = run_job(job)
    rows = rows_of(job.output.path)
    assert report.n_failed == 1
    chelsea, coffee = rows[rows.image_id.str.endswith("chelsea.png")], rows[rows.image_id.str.endswith("coffee.png")]
    assert (chelsea.status == "ok").all() and (chelsea.target == 281).all()
    assert (coffee.status == "error").all() and len(coffee) == len(METHODS)
    assert coffee.error.str.contains("target is 'label' but this image has no label").all()
