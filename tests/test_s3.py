"""Object storage: images read from and results written to s3:// by Ray workers, against a real S3 server.

The server is moto's standalone server (werkzeug, real HTTP) started by the test on 127.0.0.1; the client side is the
production path — s3fs through fsspec for listing, decoding and Parquet, Zarr's fsspec store for the maps — with the
endpoint and keys taken from the standard AWS environment variables, which the driver forwards to its actors.
"""

from __future__ import annotations

import logging
import os

import fsspec
import pytest

from ray_helpers import IDS, METHODS, assert_same_results, maps_of, ray_run, rows_of
from xcv_batch.config import load_job
from xcv_batch.driver import run_job
from xcv_batch.errors import OutputError

pytestmark = pytest.mark.slow  # starts moto's S3 server


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fsspec.filesystem("s3").clear_instance_cache()  # instances made before remember another endpoint
    return s3_server


def upload(folder, prefix: str) -> None:
    fs = fsspec.filesystem("s3")
    bucket = prefix.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            fs.put(path, f"{prefix}/{os.path.relpath(path, folder)}")


def test_images_and_results_on_s3_equal_a_local_run(ray_session, s3_env, reference_run, tmp_path, photo_folder):
    upload(photo_folder, "data-bucket/photos")
    out = "s3://results-bucket/run1"
    fsspec.filesystem("s3").mkdir("results-bucket")

    # the first three images of the sorted listing (the local reference computed five)
    _, report = ray_run(tmp_path, "s3://data-bucket/photos", compute__workers=2, data__limit=3, out=out)
    assert report.n_images == 3 and report.n_failed == 0

    rows = rows_of(out)
    assert sorted(rows.image_id.unique()) == IDS[:3]  # ids are relative to the prefix, as to a local folder
    assert len(rows) == 3 * len(METHODS)
    assert rows.image_path.str.startswith("s3://data-bucket/photos/").all()
    # the same seeds (from the ids) and the same model give the same rows and maps as the local run
    assert_same_results(reference_run[0], rows, reference_run[1], maps_of(out), rows=[0, 1, 2])

    fs = fsspec.filesystem("s3")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("results-bucket/run1/metrics")) == [
        "part-00000000-00000001.parquet", "part-00000002-00000002.parquet"
    ]  # no temporary file left behind
    assert fs.exists("results-bucket/run1/job.yaml")

    # resuming a finished run on S3 finds every shard committed and writes nothing
    before = {p: fs.info(p)["LastModified"] for p in fs.find("results-bucket/run1/metrics")}
    job = load_job(str(tmp_path / "job.yaml"), output=out)
    with pytest.raises(OutputError, match="resume=True"):  # called from Python: the hint names the argument
        run_job(job)
    again = run_job(job, resume=True)
    assert (again.n_skipped, again.n_processed) == (3, 0)
    fs.invalidate_cache()
    assert {p: fs.info(p)["LastModified"] for p in fs.find("results-bucket/run1/metrics")} == before
