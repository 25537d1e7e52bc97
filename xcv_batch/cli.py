"""``python -m xcv_batch VERB …``: parse, load the job, call one domain function.

This is the only place where errors become messages and exit codes: an ``XcvError`` (a bad job file, option, model,
source or OUT) prints one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import ConfigError, XcvError, called_from_cli

EXIT_USER_ERROR = 2

DESCRIPTION = """\
Explain image classifiers at dataset scale: Occlusion, Integrated Gradients, IG+SmoothGrad, Guided Grad-CAM and
LIME for every image, with Max-Sensitivity and cost, written to Zarr + Parquet.

verbs:
  run JOB.yaml        run a job on this machine (local Ray or RAY_ADDRESS when workers > 1)
  submit JOB.yaml     send the same run to a Ray cluster (Ray Jobs API); status / logs / stop act on it
  summarize OUT       rank the methods across the dataset: table, summary.json/.md, report.html
  show OUT            a Fig. 1-style panel of one image and each method's map
  browse OUT          a local web page to sort, filter and compare every image's maps (read-only)
  synth OUT_DIR       generate the known-answer dataset (objects + masks on clutter)
  train MANIFEST      train a classifier on it (CPU, minutes) for model.weights
  keys                every job-file key: type, default, meaning (--markdown: a table)

examples:
  python -m xcv_batch run jobs/smoke.yaml
  python -m xcv_batch run jobs/demo.yaml --set model.weights=none --out results/demo-offline
  python -m xcv_batch summarize results/demo
  python -m xcv_batch show results/demo --image chelsea.png --output chelsea.png
  python -m xcv_batch browse results/demo
  python -m xcv_batch submit jobs/demo.yaml --address http://HEAD:8265 --out s3://bucket/demo
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message by default)
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m xcv_batch", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    run = verbs.add_parser("run", help="run a job on this machine")
    run.add_argument("job", help="job file (YAML), see jobs/")
    run.add_argument("--out", help="output directory or s3:// prefix (overrides output.path)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a job key, e.g. --set methods.occlusion.window=8 (repeatable)")
    run.add_argument("--resume", action="store_true", help="finish an interrupted run in the same OUT")
    _add_verify(run)
    run.add_argument("--dry-run", action="store_true",
                     help="check the job, source and OUT, then print the plan (images, shards, workers, passes per "
                     "image and method) and a time estimate from a short probe of the model; nothing is written")

    submit = verbs.add_parser("submit", help="send the same run to a Ray cluster (Ray Jobs API)")
    submit.add_argument("job", help="job file (YAML) under the current directory; it is uploaded, the rest of the "
                        "directory is not")
    _add_address(submit)
    submit.add_argument("--out", help="output s3:// prefix (or a path the cluster's workers share)")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a job key (repeatable), as for run")
    submit.add_argument("--resume", action="store_true", help="finish an interrupted run in the same OUT")
    _add_verify(submit)
    submit.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    submit.add_argument("--include", dest="includes", action="append", default=[], metavar="PATH",
                        help="also upload this file or folder under the current directory, e.g. a local "
                        "data.source (repeatable); hidden paths (.ssh, .env …) are refused; inside a folder, hidden "
                        "files, __pycache__, results, Zarr/Parquet stores and links leading outside are left out")

    for name, text in (("status", "show a submitted job's state"), ("logs", "print a submitted job's logs"),
                       ("stop", "stop a submitted job (committed shards are kept)")):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("target", help="submission id, or the job file (with the same --out/--set as at submit)")
        _add_address(verb)
        verb.add_argument("--out", help="as given to submit, when TARGET is a job file")
        verb.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="as given to submit, when TARGET is a job file")
        if name == "logs":
            verb.add_argument("--follow", action="store_true", help="keep printing until the job ends")

    summarize = verbs.add_parser("summarize", help="rank the methods across a run's images")
    summarize.add_argument("out", help="a run's output directory")
    summarize.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
    summarize.add_argument("--bootstrap-scheme", default="auto", metavar="auto|resample|normal",
                           help="how each resample is drawn: resample the images (exact, O(resamples × images)), "
                                "or draw its means from their large-sample normal law (same mean and covariance; "
                                "seconds at a million images); auto (default) resamples below 50,000 images")
    summarize.add_argument("--no-report", action="store_true", help="skip report.html")
    summarize.add_argument("--no-map-agreement", action="store_true",
                           help="skip map_agreement.parquet (it reads every map not read by an earlier summarize; "
                                "browse then computes it when its page is opened)")
    summarize.add_argument("--rank-on", metavar="METRIC[:WEIGHT],…",
                           help="the quality metrics (and weights, default 1) of the overall rank, e.g. "
                                "sensitivity_max:1,deletion_auc:2, or reliable (the metrics the control maps do not "
                                "flag); default: every metric family present weighs 1")

    show = verbs.add_parser("show", help="plot one image and each method's map")
    show.add_argument("out", help="a run's output directory")
    show.add_argument("--image", required=True, help="image id (as in the Parquet rows)")
    show.add_argument("--output", required=True, help="file to write; its extension picks the format (.png, .jpg, "
                                                      ".pdf, .svg …)")

    browse = verbs.add_parser("browse", help="serve a read-only local page to sort, filter and compare the maps")
    browse.add_argument("out", help="a run's output directory or s3:// prefix (finished or still being written)")
    browse.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: a free one)")
    browse.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only); any other prints a "
                             "warning: whoever reaches it can read the run")

    synth = verbs.add_parser("synth", help="generate the known-answer dataset (objects with masks on clutter)")
    synth.add_argument("out_dir", help="folder for images, masks, manifest.csv, train.csv, test.csv, categories.txt")
    synth.add_argument("--images", type=int, default=2000, help="how many images (train + test)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels")
    synth.add_argument("--classes", type=int, default=4, help="number of classes (shape × colour objects)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-fraction", type=float, default=0.2)

    train = verbs.add_parser("train", help="train a torchvision classifier on a manifest's train split (CPU)")
    train.add_argument("manifest", help="manifest with path, label, split (e.g. OUT_DIR/manifest.csv from synth)")
    train.add_argument("--output", required=True, help="state_dict file to write (use as model.weights)")
    train.add_argument("--arch", default="resnet18")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--resolution", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    keys = verbs.add_parser("keys", help="list every job-file key with its type, default and meaning")
    keys.add_argument("--markdown", action="store_true", help="a markdown table (the key reference page of the docs)")
    return parser


def _add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", action="store_true",
                        help="with --resume: also decode every committed map and input (reads them all), so a "
                        "damaged chunk that the size checks cannot see is recomputed")


def _check_verify(args) -> None:
    if args.verify and not args.resume:
        raise ConfigError("--verify", "checks what --resume keeps; use it with --resume")


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")


def _run(args) -> int:
    from .config import load_job  # light: the job is checked before the driver's imports

    _check_verify(args)
    job = load_job(args.job, overrides=args.overrides, output=args.out)
    if args.dry_run:
        from .driver.dry_run import plan_run

        print(plan_run(job, resume=args.resume).describe())
        return 0
    from .driver import run_job  # light too: torch and Ray come once the source and OUT have been checked
    from .logs import show_info

    show_info()  # e.g. which path Occlusion's probe chose, and why
    report = run_job(job, resume=args.resume, verify=args.verify)
    for reason in report.recomputed.values():
        print(f"warning: {reason}", file=sys.stderr)
    print(report.final_line())
    return 0


def _submit(args) -> int:
    from .driver.jobs import submit

    _check_verify(args)
    return submit(args.job, args.address, overrides=args.overrides, out=args.out, resume=args.resume,
                  verify=args.verify, wait=not args.no_wait, includes=args.includes)


def _status(args) -> int:
    from .driver.jobs import status

    print(status(args.target, args.address, overrides=args.overrides, out=args.out))
    return 0


def _logs(args) -> int:
    from .driver.jobs import logs

    return logs(args.target, args.address, follow_logs=args.follow, overrides=args.overrides, out=args.out)


def _stop(args) -> int:
    from .driver.jobs import stop

    print(stop(args.target, args.address, overrides=args.overrides, out=args.out))
    return 0


def _summarize(args) -> int:
    from rich.console import Console

    from .output.results import open_results
    from .errors import OutputError
    from .report.map_agreement import write as write_map_agreement
    from .report.summarize import check_bootstrap, parse_rank_on, summarize, write_summary
    from .report.summary_text import fit_table, summary_notes

    rank_on = parse_rank_on(args.rank_on) if args.rank_on is not None else None
    check_bootstrap(args.bootstrap, args.bootstrap_scheme)
    results = open_results(args.out)  # shared by the summary and the report: every file is read once
    summary = summarize(results, n_boot=args.bootstrap, rank_on=rank_on, scheme=args.bootstrap_scheme)
    paths: list[str] = []
    said: dict[str, str] = {}  # path → what its "wrote" line adds
    unwritten = None
    try:  # a read-only OUT (a shared or archived run) still gets its table; the files are what is lost
        paths = write_summary(args.out, summary)
        if not args.no_report:
            from .report.html import write_report

            paths.append(write_report(results, summary))
        if not args.no_map_agreement:  # where the maps disagree, for browse: the maps no earlier summarize read
            path, computed = write_map_agreement(results)
            paths.append(path)
            said[path] = f" (maps of {computed:,} images read; the others' values kept from before)"
    except OutputError as err:
        wanted = (["summary.json", "summary.md"] + ([] if args.no_report else ["report.html"])
                  + ([] if args.no_map_agreement else ["map_agreement.parquet"]))
        done = {path.rsplit("/", 1)[-1] for path in paths}
        unwritten = f"{', '.join(name for name in wanted if name not in done)} not written: {one_line(str(err))}"
    _warn_unreadable(results)
    # The terminal's width (COLUMNS, or 80 when piped): columns that do not fit are left out and named; summary.md
    # has every one.
    console = Console()
    table, left_out = fit_table(summary, console.width)
    console.print(table)
    # Sentences are left whole (the terminal wraps them): a line broken by rich would not read back as one.
    if left_out:
        console.print(f"not shown at {console.width} columns (see summary.md): {', '.join(left_out)}",
                      highlight=False, markup=False, soft_wrap=True)
    for note in summary_notes(summary):
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    for path in paths:
        print(f"wrote {path}{said.get(path, '')}")
    if unwritten is not None:
        print(f"warning: {unwritten}", file=sys.stderr)
    return 0


def _show(args) -> int:
    from .report.panel import render_panel
    from .output.results import open_results

    results = open_results(args.out)
    path = render_panel(results, args.image, args.output)
    _warn_unreadable(results)
    print(f"wrote {path}")
    return 0


def _browse(args) -> int:
    from .browse.server import LOOPBACK, make_server

    server = make_server(args.out, args.host, args.port)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}, not this machine only: whoever can reach {server.url} can read "
              "the run", file=sys.stderr)
    print(f"browse {args.out}: {server.url} (Ctrl-C to stop)", flush=True)
    server.serve_until_interrupted()
    print("stopped", flush=True)
    return 0


def _warn_unreadable(results) -> None:
    """One line per chunk file that a reader could not decode (the panels leave its map out)."""
    for message in results.unreadable.values():
        print(f"warning: {message}", file=sys.stderr)


def _synth(args) -> int:
    from .groundtruth.synth import generate

    manifest = generate(args.out_dir, n_images=args.images, size=args.size, n_classes=args.classes, seed=args.seed,
                        test_fraction=args.test_fraction)
    print(f"wrote {manifest}")
    return 0


def _train(args) -> int:
    from .groundtruth.train import train

    result = train(args.manifest, args.output, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed, resolution=args.resolution, threads=args.threads, log=print)
    print(f"held-out accuracy {result['test_accuracy']:.3f} ({result['n_test']} images), "
          f"{result['seconds']:.0f} s → {args.output}")
    return 0


def _keys(args) -> int:
    from .keys import job_keys, render_markdown, render_text

    print((render_markdown if args.markdown else render_text)(job_keys()), end="")
    return 0


_VERBS = {"run": _run, "submit": _submit, "status": _status, "logs": _logs, "stop": _stop,
          "summarize": _summarize, "show": _show, "browse": _browse, "synth": _synth, "train": _train, "keys": _keys}


def one_line(message: str) -> str:
    """A message folded onto one line: the promise of this CLI, even when a library's text spans several."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"xcv_batch {__version__}")
        return 0
    if args.verb is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with called_from_cli():
            return _VERBS[args.verb](args)
    except XcvError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: committed shards are kept; finish with --resume", file=sys.stderr)
        return 130
