"""The folder a local Ray runs in, and the clean-up of the Ray processes a killed driver left behind.

A driver that is SIGKILLed (OOM killer, ``kill -9``) shuts nothing down: some of the Ray processes it started live
on, ports open, for minutes. So each local Ray gets a folder of its own, ``<tmp>/xcv-ray-<uid>/<driver pid>``, with
an owner file naming the driver (pid and start time). Every Ray process keeps files open in that folder (logs,
sockets), which is how they are found again: the next local start stops the processes of every folder whose driver
is gone. A Ray that xcv_batch did not start (a user's cluster, another tool's) lives elsewhere and is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import ray  # noqa: F401 - puts the psutil that Ray ships on sys.path

import psutil  # noqa: E402

from ..errors import XcvError

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
RAY_PACKAGE = os.path.dirname(ray.__file__) + os.sep
KILL_WAIT_S = 5.0  # how long SIGKILLed processes may take to exit before the owner file is kept for a retry


def rays_folder() -> Path:
    """This user's folder of local Rays, made private on first use.

    Short on purpose: Ray puts Unix sockets several levels below it, and a socket path may not exceed 107 bytes.
    ``RAY_TMPDIR`` moves it, as it moves Ray's own folder.
    """
    folder = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / f"xcv-ray-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as err:
        raise XcvError(f"cannot use {folder} for the local Ray: {err}") from err
    # In a shared /tmp someone else could have made it first, to read the sockets or plant a link.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise XcvError(f"{folder} is not a folder of yours; remove it or set RAY_TMPDIR to a folder of your own")
    return folder


def claim_folder() -> Path:
    """A folder for a new local Ray of this process, after stopping what killed drivers left behind."""
    stop_orphaned_rays()
    folder = rays_folder() / str(os.getpid())
    me = psutil.Process()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        _write_atomically(folder / OWNER_FILE, json.dumps({"pid": me.pid, "started": me.create_time()}))
    except OSError as err:
        raise XcvError(f"cannot use {folder} for the local Ray: {err}") from err
    return folder


def release_folder(folder: Path) -> None:
    """The local Ray in ``folder`` was shut down: nothing there for a later start to clean up (its logs stay)."""
    (folder / OWNER_FILE).unlink(missing_ok=True)


def stop_orphaned_rays() -> list[int]:
    """Stop the processes of every local Ray whose driver is gone; returns their pids."""
    stopped: list[int] = []
    for owner_file in sorted(rays_folder().glob(f"*/{OWNER_FILE}")):
        if _driver_alive(owner_file):
            continue
        folder = owner_file.parent
        processes = _processes_using(folder)
        if processes:
            logger.warning("stopping %d Ray processes left by a killed run (driver pid %s)",
                           len(processes), folder.name)
        if not _stop(processes):
            owner_file.unlink(missing_ok=True)  # nothing left: the next start need not look again
        stopped += [p.pid for p in processes]
    return stopped


def _write_atomically(path: Path, text: str) -> None:
    # A start that looks while this one writes must see a whole owner file or none.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _driver_alive(owner_file: Path) -> bool:
    try:
        owner = json.loads(owner_file.read_text())
        driver = psutil.Process(owner["pid"])
        # the start time tells the driver from a later process that got its pid
        return abs(driver.create_time() - owner["started"]) < 1.0
    except psutil.NoSuchProcess:
        return False
    except FileNotFoundError:  # released, or cleaned by another start, while we looked
        return True
    except (ValueError, KeyError, TypeError, psutil.Error):  # unreadable: leave it alone rather than guess
        return True


def _processes_using(folder: Path) -> list[psutil.Process]:
    """This user's Ray processes with ``folder`` on their command line or a file open in it.

    Open files, because Ray renames its agents' and workers' processes (``ray::IDLE``), which hides their command
    line; they keep their log files open. Only Ray's own processes: not a ``tail -f`` on one of its logs.
    """
    inside = str(folder) + os.sep
    found = []
    for process in psutil.process_iter(["uids", "cmdline"]):
        try:
            command = process.info["cmdline"] or []
            if process.pid == os.getpid() or process.info["uids"].real != os.getuid() or not _is_ray(command):
                continue
            if any(inside in arg for arg in command) or any(f.path.startswith(inside) for f in process.open_files()):
                found.append(process)
        except (psutil.Error, AttributeError, TypeError):  # gone, a zombie, or not ours to inspect
            continue
    return found


def _is_ray(command: list[str]) -> bool:
    """Ray's binaries and scripts run from its package folder; its workers and agents are renamed ``ray::…``."""
    return bool(command) and (command[0].startswith("ray::") or any(arg.startswith(RAY_PACKAGE) for arg in command))


def _stop(processes: list[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL ``processes``; returns any still there after a few seconds.

    No SIGTERM first: their driver and GCS are gone, so they have nothing left to finish (Ray's agents would take
    their time over it), and a run's outputs never depend on a worker exiting cleanly.
    """
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(processes, timeout=KILL_WAIT_S)
    return survivors
