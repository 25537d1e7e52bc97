"""Ray for one run: the session already open in this process, the cluster in ``RAY_ADDRESS``, or a new local one.

Only a session this module started is shut down at the end. Joining a cluster uses a bare ``ray.init()``: passing
resources (``num_cpus`` …) to an existing cluster raises in Ray.

A new local Ray faces this machine only: every server it starts (GCS, raylet, agents, workers, the dashboard's API
server) listens on loopback, since anyone who reaches a Ray port can run code on it. It runs in a folder of its own
(:mod:`.orphans`), so the processes a killed driver leaves behind are stopped by the next local start.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray
import ray._private.ray_constants as ray_constants

from ..errors import XcvError
from . import orphans
from .placement import Resources, resources_from_nodes

LOOPBACK = "127.0.0.1"

# "0" there puts Ray in its single-machine mode (its default on macOS and Windows): the node's address stays loopback
# instead of being replaced by this machine's network address, and Ray's servers then bind loopback, not all interfaces.
SINGLE_MACHINE_ENV = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR

# Nothing big travels through the object store (workers write their own outputs; reports are a few hundred bytes),
# so a small store spares the 30 % of RAM that Ray reserves in /dev/shm by default.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2

#: S3/fsspec settings the workers need as much as the driver; forwarded to actors because a Ray session that was
#: already running (a test's, a cluster's) does not see environment variables set after it started.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


class RaySession:
    def __init__(self) -> None:
        self.owned = False
        self.where = ""
        self.folder: Path | None = None  # the local Ray's folder, when this session started one

    def __enter__(self) -> "RaySession":
        if ray.is_initialized():
            self.where = "the Ray session of this process"
            return self
        address = os.environ.get("RAY_ADDRESS")
        try:
            if address:
                self.where = f"the Ray cluster at {address}"
                ray.init(logging_level=logging.WARNING)
            else:
                self.where = "a local Ray"
                # Ray 2.60 turns token auth on for a new local cluster, and says so in a warning on every run.
                # (Setting RAY_AUTH_MODE here instead would be too late: Ray reads it when first imported.)
                logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
                self.folder = start_local_ray(
                    log_to_driver=False,  # workers' logs stay in Ray's session folder, not on the terminal
                    logging_level=logging.WARNING,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise XcvError(f"cannot start or join Ray ({self.where}): {err}") from err
        self.owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            stop_local_ray(self.folder)
            self.owned = False
            self.folder = None

    @staticmethod
    def resources() -> Resources:
        return resources_from_nodes(ray.nodes())

    @staticmethod
    def worker_env() -> dict[str, str]:
        return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def start_local_ray(**settings) -> Path:
    """Start a new Ray on this machine, reachable from this machine only; returns its folder (for stop_local_ray).

    ``settings`` are ``ray.init`` arguments (resources, logging); the address, the dashboard and the network are
    fixed here.
    """
    folder = orphans.claim_folder()
    with _single_machine_mode():
        ray.init(
            address="local",  # never attach to a cluster that happens to run here: RAY_ADDRESS says so
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            _temp_dir=str(folder),
            **settings,
        )
    if ray.util.get_node_ip_address() != LOOPBACK:  # a Ray that changed how it picks addresses: fail closed
        stop_local_ray(folder)
        raise RuntimeError(f"the local Ray would listen on {ray.util.get_node_ip_address()}, not on {LOOPBACK}")
    return folder


def stop_local_ray(folder: Path | None) -> None:
    """Shut down this process's Ray; ``folder`` (None for a joined cluster) is the one start_local_ray returned."""
    ray.shutdown()
    if folder is not None:
        orphans.release_folder(folder)


@contextmanager
def _single_machine_mode() -> Iterator[None]:
    """Ray's single-machine mode while a local Ray starts, and only then: a later join of a cluster needs the usual
    mode, which finds the address by which the cluster can reach this machine.

    Ray reads the mode from the environment once, when first imported, so it is set in both places: in the
    environment for the processes Ray starts now (and the workers they start later), and on the module already
    imported here.
    """
    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env
