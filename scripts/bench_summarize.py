"""Wall time and peak memory of ``summarize`` on large outputs, this tree's code against an older commit's.

Makes an OUT of N images from a real small one (tests/scale_helpers.py: its rows replicated and jittered; its map
objects laid out as the run lays them, all zeros unless ``--source-maps``: summarize reads the objects' indices, not
their values), then runs ``summarize`` on it in a child process per code version and reports the child's wall time
and peak resident memory (``ru_maxrss`` from ``wait4``), the load average, and whether the two summary.json texts are
equal. The old code runs only up to ``--old-up-to`` images (it holds every row: about 13 GB at a million).

    python scripts/bench_summarize.py --sizes 20000 200000 1000000 --source OUT_OF_A_SMALL_RUN
    python scripts/bench_summarize.py --sizes 20000 --old /tmp/old --old-commit main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

CHILD = """
import sys
from xcv_batch.report.summarize import summarize
text = summarize(sys.argv[1], n_boot=int(sys.argv[2])).to_json()
with open(sys.argv[3], "w") as f:
    f.write(text)
"""


def run_child(code_root: str, out: str, n_boot: int, json_path: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one summarize in a child whose ``xcv_batch`` is ``code_root``'s."""
    env = dict(os.environ, PYTHONPATH=code_root)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, out, str(n_boot), json_path], cwd=code_root, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"summarize failed in {code_root} (exit {child.returncode})")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    parser.add_argument("--source", help="a real small OUT (default: jobs/smoke.yaml run into the work folder)")
    parser.add_argument("--old", default="/tmp/bench-summarize-old",
                        help="a copy of the old code (made from --old-commit with git archive when missing)")
    parser.add_argument("--old-commit", default="main")
    parser.add_argument("--old-up-to", type=int, default=200_000, help="run the old code only up to this many images")
    parser.add_argument("--source-maps", action="store_true", help="copy the source's maps instead of zeros")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--work", default=None, help="folder for the OUTs (default: a temporary one)")
    args = parser.parse_args()

    from scale_helpers import make_large_out

    work = args.work or tempfile.mkdtemp(prefix="bench-summarize-")
    if not os.path.exists(args.old):
        os.makedirs(args.old)
        archive = subprocess.run(["git", "archive", args.old_commit], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", args.old], input=archive.stdout, check=True)
    source = args.source
    if source is None:
        source = os.path.join(work, "smoke")
        if not os.path.exists(source):
            subprocess.run([sys.executable, "-m", "xcv_batch", "run", "jobs/smoke.yaml", "--out", source],
                           cwd=ROOT, check=True)
    print(f"source {source}; old code {args.old}; --bootstrap {args.bootstrap}; {os.cpu_count()} CPUs seen")
    print(f"{'images':>8} {'version':>8} {'wall s':>8} {'peak MiB':>9}  load average (1, 5, 15 min) after")
    for n in args.sizes:
        out = os.path.join(work, f"out-{n}")
        if not os.path.exists(out):
            make_large_out(source, out, n, parts=max(1, n // 2500), images_per_object=1000,
                           source_maps=args.source_maps)
        texts = {}
        versions = [("new", ROOT)] + ([("old", args.old)] if n <= args.old_up_to else [])
        for name, code in versions:
            json_path = os.path.join(work, f"summary-{n}-{name}.json")
            wall, peak = run_child(code, out, args.bootstrap, json_path)
            with open(json_path) as f:
                texts[name] = f.read()
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{n:>8} {name:>8} {wall:>8.1f} {peak:>9.0f}  {load}", flush=True)
        if "old" in texts:
            print(f"{n:>8} summary.json {compare(texts['new'], texts['old'])}", flush=True)


def compare(new: str, old: str) -> str:
    """EQUAL when the texts are; else EQUAL but for the keys only the new code writes (e.g. ``bootstrap_scheme``), in
    the same order otherwise; else DIFFERENT."""
    if new == old:
        return "EQUAL"
    new_object, old_object = json.loads(new), json.loads(old)
    added = [key for key in new_object if key not in old_object]
    for key in added:
        del new_object[key]
    if added and json.dumps(new_object) == json.dumps(old_object):
        return f"EQUAL but for the new keys {', '.join(added)}"
    return "DIFFERENT"


if __name__ == "__main__":
    main()
