"""The package's layers, read from its source with ``ast``: no package imports one above it, only the driver imports
Ray, only the CLI turns errors into exit codes, and the notebook API runs without loading any scheduling code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import xcv_batch

PACKAGE = Path(xcv_batch.__file__).parent
REPO = PACKAGE.parent

#: part of xcv_batch (a subpackage or a top-level module) → the parts it must never import, lazily or not.
#: What runs a batch sits below what schedules shards and what reports a run; what a method or metric is sits below
#: both; the plain data both sides exchange (shards, events, pass plans, core counts) sits below all of them.
FORBIDDEN = {
    "execution": {"driver", "report"},
    "methods": {"execution", "driver"},
    "metrics": {"execution", "driver"},
    "output": {"driver", "execution", "methods"},
    "work": {"driver", "execution", "report"},
    "plan": {"driver", "execution", "report"},
    "cores": {"driver", "execution", "methods"},
    # browse reads a finished (or running) OUT as report/ does: it never schedules or runs a batch
    "browse": {"driver", "execution"},
}
#: browse is a top layer beside the CLI: no other part of the package imports it.
for _part_below in ("api", "config", "cores", "data", "driver", "errors", "execution", "groundtruth", "keys",
                    "methods", "metrics", "models", "output", "plan", "registry", "report", "seeding", "work",
                    "yaml_io"):
    FORBIDDEN.setdefault(_part_below, set()).add("browse")

#: (module, part it imports) that break a rule today; the test below fails once one is gone, so the list only
#: shrinks. Empty: no module climbs.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()

#: The modules allowed to end the process with an exit code.
EXIT_MODULES = {"xcv_batch.cli", "xcv_batch.__main__"}


def _modules() -> dict[str, tuple[ast.Module, bool]]:
    """Every module of the package: dotted name → (syntax tree, whether it is a package's ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), is_package)
    return modules


MODULES = _modules()


def imported_names(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """The absolute names ``name`` imports anywhere in its body (functions and ``TYPE_CHECKING`` blocks included):
    each module, and for ``from X import y`` also ``X.y``, which may be a submodule."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


IMPORTS = {name: imported_names(name, tree, is_package) for name, (tree, is_package) in MODULES.items()}


def _part(name: str) -> str | None:
    """``xcv_batch.execution.worker`` → ``execution``; None for names outside the package or the package itself."""
    parts = name.split(".")
    return parts[1] if parts[0] == "xcv_batch" and len(parts) > 1 else None


def _violations() -> set[tuple[str, str]]:
    """(module, the forbidden part it imports)."""
    found = set()
    for name, imported in IMPORTS.items():
        for target in imported:
            if _part(target) in FORBIDDEN.get(_part(name), ()):
                found.add((name, _part(target)))
    return found


def test_the_import_reader_resolves_relative_imports():
    tree = ast.parse("from . import device\nfrom ..work import Shard\nfrom .. import errors\nimport ray.util\n")
    assert imported_names("xcv_batch.execution.worker", tree, is_package=False) == {
        "xcv_batch.execution", "xcv_batch.execution.device", "xcv_batch.work", "xcv_batch.work.Shard",
        "xcv_batch", "xcv_batch.errors", "ray.util"}
    assert imported_names("xcv_batch.execution", ast.parse("from .tally import ShardTally"), is_package=True) == {
        "xcv_batch.execution.tally", "xcv_batch.execution.tally.ShardTally"}
    # the table's rules hold on the reader's own answers: a climb written today would be seen
    assert "xcv_batch.execution.explain" in MODULES and "xcv_batch.driver.run" in MODULES
    assert any(_part(t) == "execution" for t in IMPORTS["xcv_batch.driver.local"])


def test_no_package_imports_a_layer_above_it():
    found = _violations()
    climbing = sorted(found - KNOWN_EXCEPTIONS)
    assert climbing == [], "imports that climb a layer (module, part imported): " + repr(climbing)
    assert KNOWN_EXCEPTIONS <= found, "an exception no longer needed: remove it from KNOWN_EXCEPTIONS"


def test_only_the_driver_imports_ray():
    importers = sorted(name for name, imported in IMPORTS.items()
                       if any(target == "ray" or target.startswith("ray.") for target in imported))
    assert importers, "the driver runs shards on Ray"
    assert [name for name in importers if _part(name) != "driver"] == []


def _exits(tree: ast.Module) -> list[int]:
    """Lines that end the process: ``sys.exit``, ``os._exit``, ``exit``/``quit`` calls and ``raise SystemExit``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                    (func.value.id, func.attr) in {("sys", "exit"), ("os", "_exit")}:
                lines.append(node.lineno)
            elif isinstance(func, ast.Name) and func.id in {"exit", "quit"}:
                lines.append(node.lineno)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_cli_turns_errors_into_exit_codes():
    assert _exits(ast.parse("import sys\nsys.exit(2)\nraise SystemExit(1)\n")) == [2, 3]
    assert _exits(ast.parse("try:\n    f()\nexcept SystemExit as err:\n    raise Other(err)\n")) == []
    found = {name: lines for name, (tree, _) in MODULES.items() if (lines := _exits(tree))}
    assert found and set(found) <= EXIT_MODULES, f"modules that exit the process (module: lines): {found}"


#: The notebook's path: import the API, then build an Explainer and explain a batch; the modules loaded after each.
NOTEBOOK = """
import json, sys
import xcv_batch.api
after_import = sorted(sys.modules)
import torch
from xcv_batch import Explainer
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                          torch.nn.Linear(4, 3)).eval()
explained = Explainer(net, methods={"integrated_gradients": {"n_steps": 2}}, sensitivity=None,
                      fast_execution=False).explain(torch.randn(2, 3, 8, 8))
assert explained.maps["integrated_gradients"].shape == (2, 3, 8, 8)
print(json.dumps([after_import, sorted(sys.modules)]))
"""


def test_the_notebook_api_loads_no_scheduling_code():
    result = subprocess.run([sys.executable, "-c", NOTEBOOK], cwd=REPO, capture_output=True, text=True, check=True)
    for loaded in json.loads(result.stdout.strip().splitlines()[-1]):
        assert "xcv_batch.execution.explain" in loaded  # the batch code is there ...
        assert [m for m in loaded if _part(m) == "driver"] == []  # ... no driver
        assert "ray" not in loaded
