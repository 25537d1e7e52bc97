"""The local Ray of a run faces this machine only, and a killed run leaves no Ray processes behind.

The first two run ``python -m xcv_batch run`` in a subprocess with a local 2-worker Ray (no ``RAY_ADDRESS``) and a
worker that hangs on one image (``XCV_TEST_FAULTS``), so the run lives until the test ends it; the last two check
the clean-up's rules with stand-in processes, without Ray.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys

import pytest
import ray  # noqa: F401 - puts the psutil that Ray ships on sys.path

import psutil  # noqa: E402
from ray_helpers import write_job
from waiting import wait_until

pytestmark = pytest.mark.slow  # starts local Rays in subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTOR_TITLE = "ray::ShardActor"  # Ray renames an actor's process after its class
#: Processes of a local run that open ports: each must be seen listening, so the loopback check is not vacuous
#: (the dashboard agent opens its ports last and listened on every interface before)
LISTENING_SERVERS = ("gcs_server", "raylet", ACTOR_TITLE, "DashboardAgent")


def start_hanging_run(tmp_path, photo_folder) -> subprocess.Popen:
    """A local 2-worker run whose worker hangs on chelsea.png (no shard timeout): it runs until stopped."""
    job = write_job(tmp_path / "job.yaml", photo_folder)
    env = without_ray_address()
    env.update(XCV_TEST_FAULTS="hang:chelsea.png:always", XCV_PROGRESS_INTERVAL_S="0")
    command = [sys.executable, "-m", "xcv_batch", "run", job, "--out", str(tmp_path / "out"),
               "--set", "compute.workers=2", "--set", "compute.device=cpu"]
    with open(tmp_path / "driver.log", "w") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def without_ray_address() -> dict[str, str]:
    """This environment, for a run that starts its own local Ray."""
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return env


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def title(process: psutil.Process) -> str:
    """Name and command line: 'gcs_server /…/gcs_server --log_dir=…', 'ray::ShardActor ray::ShardActor'."""
    try:
        return f"{process.name()} {' '.join(process.cmdline())}"
    except psutil.Error:
        return "?"


def listeners(process: psutil.Process) -> list[tuple[str, int]]:
    """(address, port) of each listening TCP socket of ``process``."""
    try:
        return [(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN]
    except psutil.Error:  # gone, or exiting while we look
        return []


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # '::ffff:127.0.0.1': an IPv6 socket bound to IPv4 loopback
    return (mapped or ip).is_loopback


def wait_for_actors(driver: subprocess.Popen, tmp_path, timeout_s: float = 90) -> list[psutil.Process]:
    """The driver's process tree once both ShardActors run."""
    def both_actors_or_driver_gone():
        tree = process_tree(driver.pid)
        return tree if sum(title(p).startswith(ACTOR_TITLE) for p in tree) >= 2 else driver.poll() is not None

    tree = wait_until(both_actors_or_driver_gone, timeout_s, poll_s=0.5)
    if isinstance(tree, list):
        return tree
    pytest.fail(f"the run's actors did not start:\n{(tmp_path / 'driver.log').read_text()[-3000:]}")


def end_for_good(processes: list[psutil.Process]) -> None:
    """SIGKILL whatever is left of ``processes`` (``is_running`` also checks the pid was not reused)."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def still_there(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_a_local_two_worker_run_listens_on_loopback_only(tmp_path, photo_folder):
    driver = start_hanging_run(tmp_path, photo_folder)
    seen: list[psutil.Process] = []
    found: dict[tuple[str, int], str] = {}  # (address, port) → the process that listens there
    try:
        wait_for_actors(driver, tmp_path)

        def every_server_listens() -> bool:
            # Ray's helper processes open some of their ports late: look until each kind has been seen listening
            tree = process_tree(driver.pid)
            seen.extend(tree)
            for process in tree:
                for address in listeners(process):
                    found[address] = title(process)[:80]
            owners = " ".join(found.values())
            return all(name in owners for name in LISTENING_SERVERS)

        wait_until(every_server_listens, timeout_s=60, poll_s=0.5)
        assert driver.poll() is None, "the run ended before its sockets were all seen"
    finally:
        driver.send_signal(signal.SIGTERM)  # Ray shuts its processes down on SIGTERM
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        end_for_good(seen)

    owners = " ".join(found.values())
    assert all(name in owners for name in LISTENING_SERVERS), found  # not vacuous
    exposed = {f"{address}:{port}": owner for (address, port), owner in found.items() if not is_loopback(address)}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_next_local_start_stops_the_ray_processes_of_a_killed_driver(tmp_path, photo_folder):
    from xcv_batch.driver.orphans import OWNER_FILE, rays_folder

    driver = start_hanging_run(tmp_path, photo_folder)
    tree: list[psutil.Process] = []
    try:
        tree = wait_for_actors(driver, tmp_path)
        driver.kill()  # SIGKILL: no clean-up of any kind
        driver.wait()
        psutil.wait_procs(tree[1:], timeout=1)  # give them a second to end with the driver, as they should not
        assert still_there(tree[1:]), "nothing outlived the driver: this test would prove nothing"

        # the next local Ray (a run's, started and shut down) stops them before it starts
        next_start = (
            "from xcv_batch.driver.session import start_local_ray, stop_local_ray\n"
            "stop_local_ray(start_local_ray(num_cpus=1))"
        )
        result = subprocess.run([sys.executable, "-c", next_start], cwd=REPO, env=without_ray_address(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"left by a killed run (driver pid {driver.pid})" in result.stderr
        left = still_there(tree[1:])
        assert not left, [title(p)[:80] for p in left]
        assert not (rays_folder() / str(driver.pid) / OWNER_FILE).exists()  # nothing left for a later start
    finally:
        driver.kill()
        driver.wait()
        end_for_good(tree)


# ------------------------------------------------------------------ the clean-up's rules, without starting Ray


def hold_file(path, *extra_args) -> subprocess.Popen:
    """A process that keeps ``path`` open until killed; ``extra_args`` only change its command line."""
    # it lives until killed, or until this test process ends and its stdin closes
    code = "import sys; f = open(sys.argv[1], 'w'); print('ready', flush=True); sys.stdin.read()"
    process = subprocess.Popen([sys.executable, "-c", code, str(path), *extra_args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def owner_file(folder, pid: int, started: float) -> None:
    from xcv_batch.driver.orphans import OWNER_FILE

    folder.mkdir(parents=True)
    (folder / OWNER_FILE).write_text(f'{{"pid": {pid}, "started": {started}}}')


def test_only_the_ray_processes_of_a_dead_driver_are_stopped(tmp_path, monkeypatch):
    from xcv_batch.driver.orphans import OWNER_FILE, RAY_PACKAGE, rays_folder, stop_orphaned_rays

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = rays_folder() / gone.stdout.strip(), rays_folder() / str(os.getpid())
    owner_file(dead, int(gone.stdout), 0.0)
    owner_file(live, os.getpid(), psutil.Process().create_time())
    ray_like = RAY_PACKAGE + "dashboard/agent.py"  # what makes a process one of Ray's
    orphan = hold_file(dead / "raylet.out", ray_like)
    reader = hold_file(dead / "reader.txt")  # not Ray: a user reading the logs
    live_ray = hold_file(live / "raylet.out", ray_like)
    try:
        assert stop_orphaned_rays() == [orphan.pid]
        assert not psutil.pid_exists(orphan.pid)  # killed and reaped
        assert reader.poll() is None and live_ray.poll() is None
        assert not (dead / OWNER_FILE).exists() and (live / OWNER_FILE).exists()
        assert stop_orphaned_rays() == []
    finally:
        for process in (orphan, reader, live_ray):
            process.kill()
            process.wait()


def test_the_folder_of_local_rays_must_be_a_folder_of_ones_own(tmp_path, monkeypatch):
    from xcv_batch.driver.orphans import rays_folder
    from xcv_batch.errors import XcvError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"xcv-ray-{os.getuid()}").symlink_to(tmp_path / "elsewhere")  # planted by someone else
    with pytest.raises(XcvError, match="not a folder of yours"):
        rays_folder()
