"""What ``submit`` sends to the cluster: the job file, the paths named with ``--include``, and this package.

Nothing else from the current directory travels. The upload is built as a fresh staging directory holding exactly
the files planned here, so a key in ``.ssh``, cloud credentials in ``.aws`` or a ``.env`` next to the job file can
never ride along, whatever ``.gitignore`` says. The rules:

* every path is resolved (symlinks followed) before the rules apply, since a copy follows links and uploads the
  bytes a link points to: a visible name that leads to a hidden file or folder is as hidden as its target;
* every named path (the job file, each ``--include``) must exist under the current directory, also after following
  symlinks, and no part of it, as written or resolved, may be hidden (a dot name) or ``__pycache__``;
* inside an included folder, hidden files and folders, ``__pycache__``, results, build and environment folders and
  Zarr/Parquet stores (``SKIPPED_INSIDE_FOLDERS``) are left out, as are symlinks to folders (not followed) and
  symlinks that lead outside the current directory or to a hidden path (named in the printed line);
* the package travels as its ``.py`` files only (a link among them must stay inside the package).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..errors import ConfigError

#: Never uploaded, not even when named: hidden names (``.ssh``, ``.aws``, ``.env``, ``.git`` …) and bytecode caches.
#: Each is a pattern for one path component; in gitignore syntax (Ray's ``excludes``) a pattern without a slash
#: matches at any depth, so the same list also serves as Ray's safety net. ``.?*`` rather than ``.*``: the latter
#: also matches ``.``, which Ray compares against the upload's own root and would then upload nothing.
NEVER_UPLOADED = (".?*", "__pycache__")
#: Left out when met inside an included folder (an explicitly named path is uploaded): results, environments,
#: build output, and Zarr/Parquet stores, which are outputs far more often than inputs.
SKIPPED_INSIDE_FOLDERS = ("results", "build", "venv", "*.egg-info", "*.zarr", "*.parquet")


@dataclass(frozen=True)
class UploadPlan:
    root: str  # the current directory, resolved: every uploaded file lies under it
    named: tuple[str, ...]  # the job file and the --include paths, relative to root, as the user will recognise them
    files: tuple[str, ...]  # every file of the working dir, relative to root (the job file at its own relative path)
    size: int  # bytes of ``files``
    left_out: int  # hidden, cached, output or linked-out paths met inside included folders
    package_dir: str  # this package's directory
    package_files: tuple[str, ...]  # its .py files, relative to package_dir
    package_size: int
    hidden_links: tuple[str, ...] = ()  # links inside included folders left out because they lead to hidden paths

    @property
    def job_file(self) -> str:
        """The job file relative to root: its path in the working dir, as the entrypoint names it."""
        return self.named[0]

    @property
    def package_name(self) -> str:
        return os.path.basename(self.package_dir)


def plan_upload(job_file: str, includes: Sequence[str] = ()) -> UploadPlan:
    """Check the named paths and list every file to upload; raises a one-line ConfigError for a path refused."""
    root = os.path.realpath(os.getcwd())
    job_relative = _project_path(job_file, root, "JOB", "submit from a directory that holds it")
    files = {job_relative}
    named = [job_relative]
    left_out = 0
    hidden_links: list[str] = []
    for include in includes:
        relative = _project_path(include, root, "--include", "only paths under it can be uploaded")
        found, skipped = _files_under(root, relative, hidden_links)
        files.update(found)
        left_out += skipped
        named.append(relative)
    package_dir = _package_dir()
    package_files = _package_files(package_dir)
    return UploadPlan(
        root=root, named=tuple(dict.fromkeys(named)), files=tuple(sorted(files)),
        size=sum(os.path.getsize(os.path.join(root, f)) for f in files), left_out=left_out,
        package_dir=package_dir, package_files=package_files,
        package_size=sum(os.path.getsize(os.path.join(package_dir, f)) for f in package_files),
        hidden_links=tuple(sorted(set(hidden_links))),
    )


def _project_path(path: str, root: str, key: str, why: str) -> str:
    """``path`` relative to ``root``, refused when missing, outside root (as written or via symlinks) or hidden."""
    if not os.path.exists(path):
        raise ConfigError(key, f"{path} does not exist")
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or not _inside(os.path.realpath(path), root):
        raise ConfigError(key, f"{path} lies outside the current directory {root}: {why}")
    if _hidden(relative):
        raise ConfigError(key, f"{path} is hidden or a cache: dot paths and __pycache__ are never uploaded "
                               "(copy what the job needs to a visible path)")
    resolved = os.path.relpath(os.path.realpath(path), root)
    if _hidden(resolved):
        raise ConfigError(key, f"{path} is a link to {resolved}, which is hidden or a cache: dot paths and "
                               "__pycache__ are never uploaded, also through a link (copy what the job needs to a "
                               "visible path)")
    return relative


def _hidden(relative: str) -> bool:
    """Whether a path relative to the project has a hidden or cache component (``.`` itself is the project)."""
    return relative != "." and any(_matches(part, NEVER_UPLOADED) for part in relative.split(os.sep))


def _inside(resolved: str, root: str) -> bool:
    return os.path.commonpath([resolved, root]) == root


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _files_under(root: str, relative: str, hidden_links: list[str]) -> tuple[list[str], int]:
    """The files an included path stands for (relative to root) and how many entries inside it were left out; links
    left out because they lead to a hidden path are added to ``hidden_links``."""
    top = os.path.join(root, relative)
    if os.path.isfile(top):
        return [relative], 0
    if not os.path.isdir(top):
        raise ConfigError("--include", f"{relative} is neither a file nor a folder")
    found, left_out = [], 0
    # A named folder that is itself a link is walked at its resolved path (checked visible by _project_path), so that
    # os.walk's paths and their resolutions agree; files keep the names the user sees.
    for folder, dirs, names in os.walk(os.path.realpath(top)):  # symlinked folders in dirs are never descended
        shown = os.path.join(relative, os.path.relpath(folder, os.path.realpath(top)))
        kept = []
        for d in dirs:
            if _keep_folder(os.path.join(folder, d)):
                kept.append(d)
            elif _links_to_hidden(os.path.join(folder, d), root):
                hidden_links.append(os.path.normpath(os.path.join(shown, d)))
        left_out += len(dirs) - len(kept)
        dirs[:] = kept
        for name in names:
            path = os.path.join(folder, name)
            if _keep_file(path, root):
                found.append(os.path.normpath(os.path.join(shown, name)))
            else:
                left_out += 1
                if _links_to_hidden(path, root):
                    hidden_links.append(os.path.normpath(os.path.join(shown, name)))
    return found, left_out


def _keep_folder(path: str) -> bool:
    name = os.path.basename(path)
    return not (os.path.islink(path) or _matches(name, NEVER_UPLOADED) or _matches(name, SKIPPED_INSIDE_FOLDERS))


def _keep_file(path: str, root: str) -> bool:
    name = os.path.basename(path)
    if _matches(name, NEVER_UPLOADED) or _matches(name, SKIPPED_INSIDE_FOLDERS):
        return False
    # a link is uploaded as the file it points to, so that file must be part of the project, and visible, too
    resolved = os.path.realpath(path)
    return os.path.isfile(path) and _inside(resolved, root) and not _hidden(os.path.relpath(resolved, root))


def _links_to_hidden(path: str, root: str) -> bool:
    """A visible-named link whose target, inside the project, is hidden (what a link must not smuggle out)."""
    if not os.path.islink(path) or _matches(os.path.basename(path), NEVER_UPLOADED):
        return False
    resolved = os.path.realpath(path)
    return _inside(resolved, root) and _hidden(os.path.relpath(resolved, root))


def _package_dir() -> str:
    import xcv_batch

    return os.path.dirname(os.path.abspath(xcv_batch.__file__))


def _package_files(package_dir: str) -> tuple[str, ...]:
    """The package's .py files: the code the cluster must run, without caches or anything left in the folder."""
    found = []
    resolved_package = os.path.realpath(package_dir)
    for folder, dirs, names in os.walk(package_dir):
        dirs[:] = [d for d in dirs if not (_matches(d, NEVER_UPLOADED) or os.path.islink(os.path.join(folder, d)))]
        found += [os.path.relpath(os.path.join(folder, name), package_dir) for name in names
                  if name.endswith(".py") and not _matches(name, NEVER_UPLOADED)
                  and _inside(os.path.realpath(os.path.join(folder, name)), resolved_package)]
    return tuple(sorted(found))


# ------------------------------------------------------------------------------------------------------ staging


@dataclass(frozen=True)
class Staged:
    working_dir: str  # holds exactly plan.files, at their paths relative to the project
    package_dir: str  # a folder named like the package, holding exactly plan.package_files


@contextmanager
def staged(plan: UploadPlan) -> Iterator[Staged]:
    """Copy the planned files into a fresh temporary directory, removed again when the block ends."""
    stage = tempfile.mkdtemp(prefix="xcv-upload-")
    try:
        working_dir = os.path.join(stage, "working_dir")
        package_dir = os.path.join(stage, "py_modules", plan.package_name)
        _copy(plan.root, plan.files, working_dir)
        _copy(plan.package_dir, plan.package_files, package_dir)
        yield Staged(working_dir, package_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _copy(source: str, files: Sequence[str], target: str) -> None:
    os.makedirs(target, exist_ok=True)
    for relative in files:
        destination = os.path.join(target, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(source, relative), destination)  # follows links: the target's bytes travel


# ------------------------------------------------------------------------------------------------------ summary


def describe(plan: UploadPlan) -> str:
    """One line: what is uploaded, with file counts and sizes."""
    named = ", ".join(plan.named)
    if plan.left_out:
        named += f"; {plan.left_out} hidden, cached or output path{'s' if plan.left_out != 1 else ''} left out"
    if plan.hidden_links:
        named += f", among them links to hidden paths: {', '.join(plan.hidden_links)}"
    return (f"uploading {_count(len(plan.files))}, {_size(plan.size)} ({named}) + package {plan.package_name} "
            f"({_count(len(plan.package_files))}, {_size(plan.package_size)})")


def _count(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")
