"""What ``submit`` uploads, read from the zips a fake Ray job server on 127.0.0.1 receives.

Ray's JobSubmissionClient speaks plain HTTP to the dashboard: ``GET /api/version``; for each local ``working_dir`` or
``py_modules`` folder, ``GET /api/packages/gcs/_ray_pkg_HASH.zip`` (404: not cached) then ``PUT`` of the zip to the
same route; ``GET /api/jobs/`` to list jobs and ``POST /api/jobs/`` with the job's JSON. The fake answers just these,
keeping every zip and job, so the tests see byte for byte what would leave this machine; no Ray runs.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ray_helpers import write_job
from xcv_batch import cli


class FakeJobServer:
    def __init__(self):
        self.packages: dict[str, bytes] = {}  # package name → uploaded zip
        self.jobs: list[dict] = []  # the POSTed job JSONs
        self.requests: list[str] = []  # "METHOD /path", in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _answer(self, code: int, body=None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                server.requests.append(f"GET {self.path}")
                if self.path == "/api/version":
                    self._answer(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "fake"})
                elif self.path.startswith("/api/packages/"):
                    name = self.path.rsplit("/", 1)[1]
                    self._answer(200 if name in server.packages else 404, {})
                elif self.path == "/api/jobs/":
                    self._answer(200, [])
                else:
                    self._answer(404, {})

            def do_PUT(self):
                server.requests.append(f"PUT {self.path}")
                server.packages[self.path.rsplit("/", 1)[1]] = self._body()
                self._answer(200, {})

            def do_POST(self):
                server.requests.append(f"POST {self.path}")
                job = json.loads(self._body())
                server.jobs.append(job)
                self._answer(200, {"job_id": job["submission_id"], "submission_id": job["submission_id"]})

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def zip_names(self, uri: str) -> set[str]:
        """The file names in the zip a ``gcs://NAME`` uri of the job's runtime_env refers to."""
        with zipfile.ZipFile(io.BytesIO(self.packages[uri.rsplit("/", 1)[1]])) as archive:
            return set(archive.namelist())

    def reset(self):
        self.packages.clear()
        self.jobs.clear()
        self.requests.clear()


@pytest.fixture(scope="module")
def server():
    fake = FakeJobServer()
    thread = threading.Thread(target=fake.http.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.http.shutdown()
    fake.http.server_close()


@pytest.fixture
def project(tmp_path, server, monkeypatch):
    """A current directory with a job file, secrets, data, outputs and one big unrelated file; a private TMPDIR."""
    root = tmp_path / "project"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the project")
    write_job(root / "job.yaml", "data", name="upload test")
    files = {
        ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----",
        ".aws/credentials": "[default]\naws_secret_access_key = x",
        ".env": "TOKEN=x",
        ".git/config": "[core]",
        "data/a.png": "png",
        "data/sub/b.png": "png",
        "data/.netrc": "machine x password y",
        "data/.cache/c.png": "png",
        "data/__pycache__/m.pyc": "pyc",
        "data/results/part-0.parquet": "rows",
        "data/table.parquet": "rows",
        "manifest.parquet": "rows",
        "results/old/part-0.parquet": "rows",
        "notes.txt": "unrelated",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "big.bin").write_bytes(b"\0" * 3_000_000)
    (root / "data" / "link-out.png").symlink_to(outside / "secret.txt")
    (root / "data" / "link-in.png").symlink_to(root / "notes.txt")
    (root / "data" / "folder-link").symlink_to(root / ".ssh")
    (root / "outside-link").symlink_to(outside)
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(staging))
    monkeypatch.chdir(root)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    server.reset()
    return root, staging


def package_py_files() -> set[str]:
    import xcv_batch

    package = os.path.dirname(xcv_batch.__file__)
    return {os.path.relpath(os.path.join(folder, name), os.path.dirname(package))
            for folder, dirs, names in os.walk(package) if "__pycache__" not in folder
            for name in names if name.endswith(".py")}


def hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def the_job_and_its_zips(server: FakeJobServer) -> tuple[dict, set[str], set[str]]:
    (job,) = server.jobs
    env = job["runtime_env"]
    (package_uri,) = env["py_modules"]
    return job, server.zip_names(env["working_dir"]), server.zip_names(package_uri)


def test_submit_uploads_the_job_file_and_the_package_only(project, server, capsys):
    root, staging = project
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--no-wait"]) == 0
    captured = capsys.readouterr()

    job, working_dir, package = the_job_and_its_zips(server)
    assert working_dir == {"job.yaml"}
    assert package == package_py_files() and "xcv_batch/cli.py" in package
    assert all(name.startswith("xcv_batch/") and name.endswith(".py") for name in package)
    assert not any(hidden(name) for name in working_dir | package)
    assert len(server.packages) == 2  # nothing else was put on the server
    assert job["entrypoint"].startswith("python -m xcv_batch run job.yaml --out ")
    assert job["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")

    size = (root / "job.yaml").stat().st_size
    uploading = [line for line in captured.out.splitlines() if line.startswith("uploading ")]
    assert uploading == [f"uploading 1 file, {size} B (job.yaml) + package xcv_batch ({len(package)} files, "
                         f"{uploading[0].rsplit(', ', 1)[1]}"]
    assert uploading[0].endswith(" KB)")
    assert "note: data.source data is not uploaded" in captured.err  # the job reads it on the cluster
    assert [name for name in os.listdir(staging) if name.startswith("xcv-upload-")] == []  # the staging copy is gone


def test_included_paths_travel_without_hidden_cached_or_linked_out_files(project, server, capsys):
    root, _ = project
    (root / "jobs").mkdir()
    write_job(root / "jobs" / "demo.yaml", "data", name="upload include test")
    assert cli.main(["submit", "jobs/demo.yaml", "--address", server.url, "--no-wait",
                     "--include", "data", "--include", "manifest.parquet"]) == 0
    captured = capsys.readouterr()

    job, working_dir, _ = the_job_and_its_zips(server)
    assert working_dir == {"jobs/demo.yaml", "data/a.png", "data/sub/b.png", "data/link-in.png", "manifest.parquet"}
    assert job["entrypoint"].startswith("python -m xcv_batch run jobs/demo.yaml ")
    uploading = [line for line in captured.out.splitlines() if line.startswith("uploading ")]
    # left out inside data: .netrc, .cache, __pycache__, results, table.parquet, link-out.png, folder-link
    assert uploading[0].startswith("uploading 5 files, ")
    assert ("(jobs/demo.yaml, data, manifest.parquet; 7 hidden, cached or output paths left out, among them links "
            "to hidden paths: data/folder-link)") in uploading[0]
    assert "note: data.source" not in captured.err


@pytest.mark.parametrize("include, complaint", [
    ("../outside/secret.txt", "lies outside the current directory"),
    ("outside-link", "lies outside the current directory"),
    ("data/link-out.png", "lies outside the current directory"),
    (".ssh", "is hidden or a cache"),
    (".aws/credentials", "is hidden or a cache"),
    ("data/.cache/c.png", "is hidden or a cache"),
    ("no-such-folder", "does not exist"),
])
def test_paths_outside_the_project_hidden_or_missing_are_refused_before_any_request(project, server, capsys,
                                                                                   include, complaint):
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--include", include]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: --include: {include} ") and complaint in err
    assert server.requests == []


def test_a_job_file_outside_the_project_is_refused_also_through_a_link(project, server, capsys, tmp_path):
    root, _ = project
    write_job(tmp_path / "elsewhere.yaml", "data", name="elsewhere")
    (root / "linked.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    for job_file in (str(tmp_path / "elsewhere.yaml"), "linked.yaml"):
        assert cli.main(["submit", job_file, "--address", server.url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: JOB: {job_file} lies outside the current directory ")
    assert server.requests == []


@pytest.fixture
def links_to_secrets(project):
    """Visible names that lead to the project's hidden files: a file link, a folder link, a link inside data/."""
    root, _ = project
    (root / "creds.txt").symlink_to(root / ".aws" / "credentials")
    (root / "visible_ssh").symlink_to(root / ".ssh")
    (root / "data" / "x.png").symlink_to(os.path.join("..", ".ssh", "id_rsa"))
    return root


def uploaded_bytes(server: FakeJobServer) -> bytes:
    """Every byte of every zip the server received, to look for a secret's content whatever its name."""
    found = b""
    for data in server.packages.values():
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found += b"".join(archive.read(name) for name in archive.namelist())
    return found


def test_links_to_hidden_files_are_left_out_of_an_included_folder_and_named(links_to_secrets, server, capsys):
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--no-wait", "--include", "."]) == 0
    captured = capsys.readouterr()
    _, working_dir, _ = the_job_and_its_zips(server)
    assert {"creds.txt", "data/x.png"}.isdisjoint(working_dir)
    assert not any(name.startswith("visible_ssh") for name in working_dir)
    assert {"job.yaml", "data/a.png", "notes.txt", "data/link-in.png"} <= working_dir
    secrets = uploaded_bytes(server)
    assert b"OPENSSH PRIVATE KEY" not in secrets and b"aws_secret_access_key" not in secrets
    uploading = [line for line in captured.out.splitlines() if line.startswith("uploading ")]
    assert ("among them links to hidden paths: creds.txt, data/folder-link, data/x.png, visible_ssh)"
            in uploading[0])


def test_a_folder_holding_a_link_to_a_hidden_file_uploads_the_rest(links_to_secrets, server, capsys):
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--no-wait", "--include", "data"]) == 0
    _, working_dir, _ = the_job_and_its_zips(server)
    assert working_dir == {"job.yaml", "data/a.png", "data/sub/b.png", "data/link-in.png"}
    assert b"OPENSSH PRIVATE KEY" not in uploaded_bytes(server)
    assert "links to hidden paths: data/folder-link, data/x.png)" in capsys.readouterr().out


@pytest.mark.parametrize("include, target", [
    ("creds.txt", ".aws/credentials"),
    ("visible_ssh", ".ssh"),
    ("data/x.png", ".ssh/id_rsa"),
])
def test_a_named_link_to_a_hidden_path_is_refused_before_any_request(links_to_secrets, server, capsys, include,
                                                                     target):
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--include", include]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: --include: {include} is a link to {target}, which is hidden or a cache")
    assert server.requests == []


def test_a_job_file_that_links_to_a_hidden_file_is_refused(links_to_secrets, server, capsys):
    root = links_to_secrets
    (root / ".private").mkdir()
    write_job(root / ".private" / "job.yaml", "data", name="hidden job")
    (root / "visible.yaml").symlink_to(root / ".private" / "job.yaml")
    assert cli.main(["submit", "visible.yaml", "--address", server.url]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "error: JOB: visible.yaml is a link to .private/job.yaml, which is hidden or a cache")
    assert server.requests == []


def test_submit_says_which_callable_the_cluster_will_import(project, server, capsys):
    root, _ = project
    write_job(root / "own.yaml", "data", name="own model", model__arch="my_models.nets:build", model__weights="none")
    assert cli.main(["submit", "own.yaml", "--address", server.url, "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert ("model.arch: the cluster will import my_models.nets and call build() — a job file runs code: submit only "
            "job files you trust") in out.splitlines()
    server.reset()
    assert cli.main(["submit", "job.yaml", "--address", server.url, "--no-wait"]) == 0  # a torchvision name: no line
    assert "model.arch:" not in capsys.readouterr().out
