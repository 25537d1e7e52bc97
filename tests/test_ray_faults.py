"""Workers that die (SIGKILL, as the OOM killer does) or hang mid-run: replaced, retried, isolated, never duplicated.

Faults come from the test-only ``XCV_TEST_FAULTS`` hook (xcv_batch/driver/faults.py): the actor SIGKILLs itself, or
hangs, after computing the batch that holds the chosen image and before its shard commits. One Ray session
(conftest ``ray_session``) serves every test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ray_helpers import METHODS, assert_same_results, each_image_once, maps_of, ray_run, rows_of
from xcv_batch.driver.faults import ENV as FAULTS_ENV

pytestmark = pytest.mark.slow  # kills and hangs Ray workers


def test_killed_workers_are_replaced_and_an_image_that_always_kills_becomes_its_error_rows(
        ray_session, reference_run, tmp_path, photo_folder, monkeypatch):
    # coffee.png kills its worker on the first attempt only; chelsea.png on every attempt. chelsea shares its shard
    # with camera.png: after 2 deaths the shard is split, camera is computed alone and chelsea dies twice more.
    monkeypatch.setenv(FAULTS_ENV, "kill:coffee.png:once;kill:chelsea.png:always")
    out, report = ray_run(tmp_path, photo_folder, compute__workers=2)
    rows = rows_of(out)
    assert each_image_once(rows)
    errors = rows[rows.status == "error"].groupby("image_id").error.unique().map(list).to_dict()
    assert errors == {"chelsea.png": ["worker died 2 times while processing this image"],
                      "notes.jpg": [rows[rows.image_id == "notes.jpg"].error.iloc[0]]}
    assert "not an image" in errors["notes.jpg"][0]
    assert report.retries == 1 + 2 + 2 and report.n_failed == 2
    # every other image, the once-killed coffee.png included, equals the uninterrupted in-process run
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out), rows=[0, 2, 3, 4])
    assert np.isnan(maps_of(out)["occlusion"][1]).all()  # chelsea's partial writes were reset
    names = sorted(os.listdir(os.path.join(out, "metrics")))
    assert names == ["part-00000000-00000000.parquet", "part-00000001-00000001.parquet",
                     "part-00000002-00000003.parquet", "part-00000004-00000004.parquet"]


def test_a_hung_shard_times_out_and_is_retried(ray_session, reference_run, tmp_path, photo_folder, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "hang:camera.png:once")
    # 15 s: the retry runs on a fresh worker whose first shard (kernel warm-up) took over 6 s on a loaded CI core.
    out, report = ray_run(tmp_path, photo_folder, compute__workers=2, compute__shard_timeout_s=15,
                          data__limit=1)
    rows = rows_of(out)
    assert report.retries == 1 and (rows.status == "ok").all() and len(rows) == len(METHODS)
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out), rows=[0])
