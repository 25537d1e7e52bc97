"""The run lock: one run at a time writes into an OUT.

A run takes ``OUT/.lock`` before it reads or lays out anything there and removes it when it ends, however it ends.
The lock is a small JSON object naming its holder (host, PID, start time, a random token) and a lease that a
daemon thread renews while the run lives. Another run into the same OUT — fresh or ``--resume`` — is refused with
one line naming the holder, unless the lock is stale: its process is gone (same host and PID namespace only: a PID
means nothing on another machine or in another container) or its lease ran out without renewal (any host). A
stale lock is taken over with a warning.

Every step that could race is decided by the file system or the store, never by a look followed by a write:

* local (and any POSIX file system): the lock is written to a private file and hard-linked into place, which fails
  if a lock exists (``O_CREAT | O_EXCL`` where links are not supported); a stale lock is replaced in one
  ``os.replace`` (so OUT never lacks a lock, and no fresh run slips into a gap) by the one contender that holds a
  short-lived takeover mutex (``.lock.takeover``, exclusive create) and still finds that very stale lock there.
* S3: ``PutObject`` with ``If-None-Match: *`` creates, ``If-Match: <ETag>`` takes over or renews only the version
  that was judged, ``DeleteObject`` with ``If-Match`` releases only our own. Stores that ignore these headers (older
  S3-compatible servers; s3fs drops parameters that its botocore does not know) are covered by a read-back: after
  writing, the lock is read again after a short settling pause and must hold our token.
* other fsspec stores: a plain write and the same read-back.

fsspec and the standard library only: the driver imports this before zarr, torch or Ray.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import TextIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import OutputError, cli_or_python, first_line

#: The lock's name in OUT: hidden, so Parquet datasets, ``submit`` uploads and the checks of OUT pass over it.
LOCK_FILE = ".lock"
#: Seconds a lock stays valid without renewal (the holder renews every quarter of it); tests shorten it.
LEASE_ENV = "XCV_LOCK_LEASE_S"
DEFAULT_LEASE_S = 600.0
#: Seconds between writing a lock to an object store and reading it back to see that the write was ours.
SETTLE_ENV = "XCV_LOCK_SETTLE_S"
DEFAULT_SETTLE_S = 1.0
#: Seconds a contender waits for another's takeover of a stale local lock (which takes milliseconds), and after
#: which a takeover mutex is taken to be left by a process that died in the middle of one.
TAKEOVER_WAIT_S = 5.0
TAKEOVER_STALE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Holder:
    """What a lock says about the run holding it."""

    token: str
    host: str
    pid: int
    started: str  # ISO 8601, UTC
    renewed: str  # ISO 8601, UTC
    lease_s: float
    job: str = ""
    pid_started: str | None = None  # the process's start on its host (Linux), to tell a reused PID
    pid_namespace: str | None = None  # where its PID means something (Linux): containers may share a host name

    @classmethod
    def parse(cls, data: bytes) -> "Holder":
        raw = json.loads(data)
        return cls(token=str(raw["token"]), host=str(raw["host"]), pid=int(raw["pid"]), started=str(raw["started"]),
                   renewed=str(raw["renewed"]), lease_s=float(raw["lease_s"]), job=str(raw.get("job") or ""),
                   pid_started=raw.get("pid_started"), pid_namespace=raw.get("pid_namespace"))

    def dump(self) -> bytes:
        return json.dumps({"tool": "xcv_batch", **self.__dict__}, indent=1).encode()

    def describe(self) -> str:
        job = f"job {self.job}, " if self.job else ""
        return f"{job}PID {self.pid} on {self.host}, started {self.started}"

    def pids_visible_here(self) -> bool:
        """Whether the holder's PID can be looked up from this process: same host, same PID namespace (where known)."""
        here = _pid_namespace()
        return self.host == socket.gethostname() and (None in (here, self.pid_namespace) or here == self.pid_namespace)

    def seconds_since_renewal(self, now: float) -> float:
        return now - _parse_time(self.renewed)

    def stale_because(self, now: float) -> str | None:
        """Why this lock no longer protects a live run, or None while it may."""
        if self.pids_visible_here() and not _process_alive(self.pid, self.pid_started):
            return "its process is gone"
        age = self.seconds_since_renewal(now)
        if age > self.lease_s:
            return f"its lease of {self.lease_s:g} s ran out (last renewed {age:.0f} s ago)"
        return None


class RunLock:
    """The lock of one run on one OUT: :meth:`acquire`, then :meth:`release` in a ``finally``."""

    def __init__(self, out: str, job: str = "", stream: TextIO | None = None):
        self.out = out.rstrip("/")
        self.job = job
        self.stream = stream or sys.stderr
        self.lease_s = _seconds_from_env(LEASE_ENV, DEFAULT_LEASE_S, positive=True)
        fs, root = fsspec.core.url_to_fs(self.out)
        self.backend = _LocalLock(root) if isinstance(fs, LocalFileSystem) else _StoreLock(fs, root)
        self.holder: Holder | None = None
        #: Set when the lock was found taken over by another run while this one held it: what the run reports.
        self.lost: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._guard = threading.Lock()  # renewal and release never interleave

    def acquire(self) -> "RunLock":
        """Take the lock, taking over a stale one with a warning; :class:`OutputError` while another run holds it."""
        now = time.time()
        self.holder = Holder(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                             started=_format_time(now), renewed=_format_time(now, "milliseconds"), lease_s=self.lease_s,
                             job=self.job, pid_started=_process_start(os.getpid()), pid_namespace=_pid_namespace())
        try:
            self._acquire()
        except OSError as err:
            self.backend.cleanup()
            raise OutputError(f"cannot take the lock {self.out}/{LOCK_FILE}: {first_line(err)}") from None
        except OutputError:
            self.backend.cleanup()
            raise
        self._heartbeat = threading.Thread(target=self._renew_until_released, name="xcv-run-lock", daemon=True)
        self._heartbeat.start()
        return self

    def _acquire(self) -> None:
        for _ in range(5):  # a lock released or taken over while we looked: look again
            if self.backend.create(self.holder.dump(), self.holder.token):
                return
            found = self.backend.read()
            if found is None:
                continue
            data, version = found
            try:
                other = Holder.parse(data)
            except (ValueError, KeyError, TypeError):
                raise OutputError(f"{self.out}/{LOCK_FILE} is not a lock this tool wrote; remove it if no run is "
                                  "writing into this OUT") from None
            reason = other.stale_because(time.time())
            if reason is None:
                expires = _format_time(_parse_time(other.renewed) + other.lease_s)
                raise OutputError(f"{self.out} is in use by another run ({other.describe()}); wait for it to end "
                                  f"or choose another {cli_or_python('--out', 'out')} (if that run is gone, its lock {self.out}/{LOCK_FILE} "
                                  f"expires at {expires})")
            if self.backend.take_over(data, version, self.holder.dump(), self.holder.token):
                print(f"warning: took over the lock of a stale run in {self.out} ({other.describe()}): {reason}",
                      file=self.stream, flush=True)
                return
        raise OutputError(f"cannot take the lock {self.out}/{LOCK_FILE}: other runs keep taking and releasing it")

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._guard:
                if self._stop.is_set():
                    return
                self.renew()

    def renew(self) -> None:
        """Write a new renewal time, if the lock is still ours (the heartbeat calls this every quarter lease)."""
        if self.lost is not None or self.holder is None:
            return
        renewed = dataclasses.replace(self.holder, renewed=_format_time(time.time(), "milliseconds"))
        try:
            kept = self.backend.renew(renewed.dump(), renewed.token)
        except OSError as err:  # a store that cannot be reached for a moment: the next beat tries again
            print(f"warning: cannot renew the lock {self.out}/{LOCK_FILE}: {first_line(err)}", file=self.stream,
                  flush=True)
            return
        if kept:
            self.holder = renewed
        else:
            self.lost = "another run took over the lock of this OUT while this run held it"
            print(f"warning: {self.out}: {self.lost}", file=self.stream, flush=True)

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours (and folders made only for it)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._guard:
            if self.holder is not None and self.lost is None:
                try:
                    self.backend.remove(self.holder.token)
                except OSError as err:
                    print(f"warning: cannot remove the lock {self.out}/{LOCK_FILE}: {first_line(err)}",
                          file=self.stream, flush=True)
            self.backend.cleanup()
            self.holder = None

    def check_kept(self) -> None:
        """:class:`OutputError` if another run took the lock over meanwhile: OUT may hold rows of both."""
        if self.lost is not None:
            raise OutputError(f"{self.out}: {self.lost}; check its rows, or run again into another "
                              f"{cli_or_python('--out', 'out')}")

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(out: str) -> Holder | None:
    """The run holding OUT's lock as the lock says (None when there is none or it cannot be read)."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/"))
    backend = _LocalLock(root) if isinstance(fs, LocalFileSystem) else _StoreLock(fs, root)
    found = backend.read()
    try:
        return Holder.parse(found[0]) if found else None
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------- local files


class _LocalLock:
    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_FILE)
        self.first_made: str | None = None  # the outermost folder made for the lock, removed again if left empty

    def _private(self, token: str, what: str) -> str:
        return os.path.join(self.root, f"{LOCK_FILE}.{what}-{token}-{uuid.uuid4().hex[:8]}")

    def create(self, data: bytes, token: str) -> bool:
        private = self._private(token, "new")
        for _ in range(3):  # a run that made OUT for its lock alone may remove it again just now
            if not os.path.isdir(self.root):
                self.first_made = self.first_made or _first_missing(self.root)
                os.makedirs(self.root, exist_ok=True)
            try:
                _write_synced(private, data, exclusive=True)
                break
            except FileNotFoundError:
                continue
        else:
            raise FileNotFoundError(errno.ENOENT, "OUT keeps disappearing", self.root)
        try:
            os.link(private, self.path)  # atomic, and fails if a lock is there: whole content or no lock
            return True
        except FileExistsError:
            return False
        except OSError as err:  # a file system without hard links
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
                raise
            try:
                _write_synced(self.path, data, exclusive=True)
                return True
            except FileExistsError:
                return False
        finally:
            os.unlink(private)

    def read(self) -> tuple[bytes, None] | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read(), None
        except FileNotFoundError:
            return None

    def take_over(self, stale: bytes, version, data: bytes, token: str) -> bool:
        """Replace the stale lock whose content is ``stale`` with ours, if it is still that one.

        Takeovers are serialised by a short-lived mutex file (exclusive create), and the lock is replaced in one
        ``os.replace``, so OUT never lacks a lock meanwhile: no fresh run can create one in a gap, and of several
        runs that judged the same lock stale, exactly one replaces it (the others then find the new holder's lock).
        """
        if not self._enter_takeover():
            return False
        try:
            found = self.read()
            if found is None or found[0] != stale:
                return False
            private = self._private(token, "new")
            _write_synced(private, data, exclusive=True)
            os.replace(private, self.path)
            return True
        finally:
            os.unlink(self._takeover_path)

    @property
    def _takeover_path(self) -> str:
        return f"{self.path}.takeover"

    def _enter_takeover(self) -> bool:
        """Hold the takeover mutex; waits while another contender holds it (a few milliseconds), and clears one that
        a process dying mid-takeover left behind (older than TAKEOVER_STALE_S)."""
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while True:
            try:
                os.close(os.open(self._takeover_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return True
            except FileExistsError:
                pass
            try:
                if time.time() - os.stat(self._takeover_path).st_mtime > TAKEOVER_STALE_S:
                    os.unlink(self._takeover_path)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def renew(self, data: bytes, token: str) -> bool:
        if not self._ours(token):
            return False
        private = self._private(token, "renew")
        _write_synced(private, data, exclusive=True)
        os.replace(private, self.path)
        return True

    def remove(self, token: str) -> None:
        if self._ours(token):
            os.unlink(self.path)

    def _ours(self, token: str) -> bool:
        return _holds(self.read(), token)

    def cleanup(self) -> None:
        """Remove the folders made for the lock if the run left nothing in them (it stopped before its first image)."""
        if self.first_made is None:
            return
        path = self.root
        while True:
            try:
                os.rmdir(path)  # only ever an empty folder
            except OSError:
                return
            if path == self.first_made or os.path.dirname(path) == path:
                return
            path = os.path.dirname(path)


def _write_synced(path: str, data: bytes, exclusive: bool) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else os.O_TRUNC), 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_missing(root: str) -> str:
    path = root
    while not os.path.exists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


# ----------------------------------------------------------------------------------------- object stores


class _StoreLock:
    """A lock object in an fsspec store: conditional writes where the store has them (S3), and always a read-back."""

    def __init__(self, fs, root: str):
        self.fs = fs
        self.path = f"{root}/{LOCK_FILE}"
        self.s3 = getattr(fs, "call_s3", None) is not None and hasattr(fs, "split_path")
        self.settle_s = _seconds_from_env(SETTLE_ENV, DEFAULT_SETTLE_S)
        self.etag: str | None = None  # of our own lock object, for conditional renewal and release

    def create(self, data: bytes, token: str) -> bool:
        if self.s3:
            try:
                self._put(data, IfNoneMatch="*")
            except OSError as err:
                if _precondition_failed(err):
                    return False
                raise
        else:
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
        return self._read_back(token)

    def read(self) -> tuple[bytes, str | None] | None:
        self.fs.invalidate_cache(self.path)
        try:
            version = self.fs.info(self.path).get("ETag") if self.s3 else None  # before the content: see take_over
            return self.fs.cat_file(self.path), version
        except FileNotFoundError:
            return None

    def take_over(self, stale: bytes, version: str | None, data: bytes, token: str) -> bool:
        # The ETag was read before the content, so a lock replaced in between fails the condition: only the version
        # judged stale is ever replaced.
        if self.s3 and version:
            try:
                self._put(data, IfMatch=version)
            except (FileNotFoundError, OSError) as err:
                if isinstance(err, FileNotFoundError) or _precondition_failed(err):
                    return False
                raise
        else:
            self.fs.pipe_file(self.path, data)
        return self._read_back(token)

    def renew(self, data: bytes, token: str) -> bool:
        if self.s3 and self.etag:
            try:
                self._put(data, IfMatch=self.etag)
                return True
            except (FileNotFoundError, OSError) as err:
                if isinstance(err, FileNotFoundError) or _precondition_failed(err):
                    return False
                raise
        if not self._ours(token):
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def remove(self, token: str) -> None:
        if self.s3 and self.etag:
            bucket, key, _ = self.fs.split_path(self.path)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
            except FileNotFoundError:
                pass
            except OSError as err:
                if not _precondition_failed(err):
                    raise
            finally:
                self.fs.invalidate_cache(self.path)
            return
        if self._ours(token):
            self.fs.rm_file(self.path)

    def cleanup(self) -> None:
        pass  # an object store has no folders to remove

    def _put(self, data: bytes, **condition) -> None:
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            response = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        finally:
            self.fs.invalidate_cache(self.path)
        self.etag = response.get("ETag")

    def _read_back(self, token: str) -> bool:
        """A write that a store without conditional writes let through may have raced another: after a pause the
        lock must still be ours."""
        time.sleep(self.settle_s)
        found = self.read()
        ours = _holds(found, token)
        if ours and found[1]:
            self.etag = found[1]
        return ours

    def _ours(self, token: str) -> bool:
        return _holds(self.read(), token)


def _holds(found, token: str) -> bool:
    """Whether a lock as read (text, version) — or None when there is none — is the one holding ``token``."""
    try:
        return found is not None and Holder.parse(found[0]).token == token
    except (ValueError, KeyError, TypeError):
        return False


def _precondition_failed(err: BaseException) -> bool:
    """A conditional S3 request whose condition failed (412), or lost to a concurrent one (409); s3fs turns both into
    an OSError whose cause is botocore's ClientError."""
    if isinstance(err, FileExistsError):
        return True
    response = getattr(err.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


# ------------------------------------------------------------------------------------------- processes, time


def _process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host still runs (and is the one that started at ``started``, where known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return started is None or _process_start(pid) in (None, started)


def _process_start(pid: int) -> str | None:
    """The process's start time since boot in clock ticks (Linux /proc), which a later process with its PID lacks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command in parentheses may hold spaces
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. 'pid:[4026531836]'
    except OSError:
        return None


def _format_time(seconds: float, timespec: str = "seconds") -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _seconds_from_env(name: str, default: float, positive: bool = False) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 or (value == 0 and not positive) else default
