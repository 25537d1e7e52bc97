"""Fixtures shared by several test files."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def classifier():
    """A random-init ResNet-18 at 32 px (seed 0): offline, and fast enough for metric tests."""
    from xcv_batch.models.classifier import build_classifier

    return build_classifier("resnet18", "none", 32, seed=0)


@pytest.fixture(scope="module")
def batch(classifier):
    """Three seeded random images as model inputs, with three different targets."""
    import torch

    g = torch.Generator().manual_seed(1)
    inputs = classifier.preprocessing.normalize(torch.rand((3, 3, 32, 32), generator=g))
    return inputs, torch.tensor([3, 500, 999])


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test run, started on first use; yields its GCS address (for RAY_ADDRESS).

    2 CPUs and 2 fake GPUs (Ray accepts ``num_gpus`` on a CPU machine): jobs with ``compute.device: cpu`` and
    ``workers: auto`` drive the one-actor-per-GPU path here, ``workers: 2`` the CPU-worker path. Started like a run's
    local Ray (loopback only, in a folder of its own).
    """
    import ray

    from xcv_batch.driver.session import SINGLE_MACHINE_ENV, start_local_ray, stop_local_ray

    folder = start_local_ray(num_cpus=2, num_gpus=2, object_store_memory=128 * 1024**2, logging_level=logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        # A test's subprocess that joins by RAY_ADDRESS must be in Ray's single-machine mode too: otherwise Ray swaps
        # the address's 127.0.0.1 for this machine's network address, where this Ray does not listen.
        patch.setenv(SINGLE_MACHINE_ENV, "0")
        yield ray.get_runtime_context().gcs_address
    stop_local_ray(folder)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """Four real photos (one in a subfolder) and one file that is not an image: ids sort as
    camera.png, chelsea.png, coffee.png, nested/rocket.jpg, notes.jpg."""
    import os
    import shutil

    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("camera.png", "chelsea.png", "coffee.png"):
        shutil.copy(os.path.join(data, name), folder / name)
    (folder / "nested").mkdir()
    shutil.copy(os.path.join(data, "rocket.jpg"), folder / "nested" / "rocket.jpg")
    (folder / "notes.jpg").write_text("this is not a picture")
    return folder


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, photo_folder):
    """The in-process run (one worker, no Ray) of ray_helpers.JOB that every Ray run must reproduce: (rows, maps)."""
    from ray_helpers import maps_of, ray_run, rows_of

    out, report = ray_run(tmp_path_factory.mktemp("reference"), photo_folder)
    assert report.n_images == 5 and report.n_failed == 1  # notes.jpg is not an image
    return rows_of(out), maps_of(out)


@pytest.fixture(scope="session")
def browse_run(tmp_path_factory):
    """The browse tests' real tiny run (tests/browse_helpers.py), with what summarize writes beside it (report.html,
    map_agreement.parquet): its OUT."""
    import contextlib
    import io

    from browse_helpers import photo_folder, tiny_run
    from xcv_batch import cli

    folder = photo_folder(tmp_path_factory.mktemp("browse-photos"))
    out = tiny_run(folder, str(tmp_path_factory.mktemp("browse") / "out"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):  # in this process: no start-up
        assert cli.main(["summarize", out, "--bootstrap", "20"]) == 0, printed.getvalue()
    return out
