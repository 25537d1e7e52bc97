"""Ray for one run: the session already open in this process, the cluster in ``RAY_ADDRESS``, or a new local one.

Only a session this module started is shut down at the end. Joining a cluster uses a bare ``ray.init()``: passing
resources (``num_cpus`` …) to an existing cluster raises (NOTES, Ray section).
"""

from __future__ import annotations

import logging
import os

import ray

from ..errors import XcvError
from .placement import Resources, resources_from_nodes

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
                ray.init(
                    address="local",  # never attach to a cluster that happens to run here: RAY_ADDRESS says so
                    include_dashboard=False,
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
            ray.shutdown()
            self.owned = False

    @staticmethod
    def resources() -> Resources:
        return resources_from_nodes(ray.nodes())

    @staticmethod
    def worker_env() -> dict[str, str]:
        return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
