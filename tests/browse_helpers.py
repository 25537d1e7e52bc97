"""The run the browse tests look at, and a server of it on a free loopback port in a thread.

The run is real and tiny: five photos at 32 px (one with HTML characters in its name, one in a subfolder) and one
file that is not an image, three methods, Max-Sensitivity and the complexity metrics (so two ranked metric families
disagree somewhere), in one process without Ray.
"""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager

import yaml

from xcv_batch.browse.server import make_server

#: The photos' ids in index order (sorted), the odd one's name escaping-worthy.
ODD_NAME = "odd <b>&'name\".png"
IDS = ["camera.png", "chelsea.png", "coffee.png", "nested/rocket.jpg", "notes.jpg", ODD_NAME]
METHODS = ["guided_gradcam", "integrated_gradients", "occlusion"]
JOB = {
    "name": "browse-tests",
    "seed": 3,
    "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
    "methods": {"occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 4},
                "guided_gradcam": {}},
    "sensitivity": {"n_perturb_samples": 1, "perturb_radius": 0.02},
    "metrics": {"complexity": {}},
    "controls": False,  # the pages list the methods' maps; the control maps' rows have tests of their own
    "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16, "shard_size": 2},
}


def photo_folder(folder) -> str:
    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    os.makedirs(os.path.join(folder, "nested"), exist_ok=True)
    for name in ("camera.png", "chelsea.png", "coffee.png"):
        shutil.copy(os.path.join(data, name), os.path.join(folder, name))
    shutil.copy(os.path.join(data, "astronaut.png"), os.path.join(folder, ODD_NAME))
    shutil.copy(os.path.join(data, "rocket.jpg"), os.path.join(folder, "nested", "rocket.jpg"))
    with open(os.path.join(folder, "notes.jpg"), "w") as f:
        f.write("this is not a picture")
    return str(folder)


def tiny_run(folder, out: str, output: dict | None = None, limit: int | None = None) -> str:
    """Run JOB on the photos in ``folder`` into ``out`` (``output``: output.* storage keys); returns ``out``."""
    from xcv_batch.config import load_job
    from xcv_batch.driver import run_job

    job = yaml.safe_load(yaml.safe_dump(JOB))
    job["data"] = {"source": str(folder), **({"limit": limit} if limit else {})}
    job["output"] = dict(output or {})
    path = os.path.join(os.path.dirname(out), "job.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(job, f)
    run_job(load_job(path, output=out))
    return out


@contextmanager
def serving(out: str, refresh_seconds: float = 2.0):
    """A browse server of ``out`` on 127.0.0.1 and a free port, serving from a thread; yields the server."""
    server = make_server(out, "127.0.0.1", 0, refresh_seconds=refresh_seconds)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def tree(out: str) -> dict[str, tuple[int, int]]:
    """Every file under ``out``: relative path → (size, modification time in ns)."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            info = os.stat(path)
            found[os.path.relpath(path, out)] = (info.st_size, info.st_mtime_ns)
    return found
