"""``summarize``'s terminal table fits the terminal: columns are chosen by width (the method and its rank always, then
the cost, the metrics, the counts), the ones left out are named, and summary.md keeps every column."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from test_summarize import seed_like_rows, write_out
from xcv_batch import cli
from xcv_batch.report.summarize import summarize_rows
from xcv_batch.report.summary_text import fit_table, render_markdown

EXTRA_METRICS = ("deletion_auc", "insertion_auc", "infidelity", "sparseness", "complexity")


def many_metric_rows():
    rows = seed_like_rows(4)
    rng = np.random.default_rng(3)
    for metric in EXTRA_METRICS:
        rows[metric] = rng.random(len(rows))
    return rows


def rendered_lines(table, width: int) -> list[str]:
    stream = io.StringIO()
    Console(file=stream, width=width, color_system=None).print(table)
    return stream.getvalue().splitlines()


@pytest.fixture(scope="module")
def summary():
    summary = summarize_rows(many_metric_rows(), n_boot=20)
    assert len(summary.metrics) >= 4  # the table has more columns than 120 terminal columns hold
    return summary


@pytest.mark.parametrize("width", [80, 120])
def test_no_line_is_wider_than_the_terminal_and_nothing_is_cut(summary, width):
    table, left_out = fit_table(summary, width)
    lines = rendered_lines(table, width)
    assert max(len(line) for line in lines) <= width
    assert not any("…" in line for line in lines)  # columns left out, not squeezed into ellipses
    headers = [str(column.header) for column in table.columns]
    assert headers[0] == "Method" and "Mean rank\n[95% CI]" in headers and "Win\nrate" in headers
    assert list(table.columns[0].cells) == [summary.methods[name].label for name in summary.best_first()]
    assert left_out  # this many metrics do not fit
    full, none_left = fit_table(summary, 10_000)
    assert none_left == [] and len(full.columns) == len(table.columns) + len(left_out)
    markdown = render_markdown(summary)
    assert all(header in markdown for header in left_out)  # summary.md keeps them


def test_a_wider_terminal_shows_more_columns_and_the_cost_before_metrics(summary):
    narrow, left_narrow = fit_table(summary, 80)
    wide, left_wide = fit_table(summary, 120)
    assert len(wide.columns) > len(narrow.columns) and set(left_wide) < set(left_narrow)
    assert "Cost:\ns / image" in [str(c.header) for c in narrow.columns]  # kept before any metric
    assert "n ok" in left_narrow  # the counts go first


def test_cli_summarize_fits_columns_env(tmp_path, capsys, monkeypatch):
    out = write_out(tmp_path / "out", many_metric_rows(), n_images=4)
    for width in (80, 120):
        monkeypatch.setenv("COLUMNS", str(width))
        assert cli.main(["summarize", str(out), "--no-report", "--bootstrap", "20"]) == 0
        printed = capsys.readouterr().out.splitlines()
        end = next(i for i, line in enumerate(printed) if line.startswith("└"))
        table_lines = printed[:end + 1]  # the sentences after it are whole lines, which the terminal wraps
        assert table_lines[0].startswith("Method ranking") and max(len(line) for line in table_lines) <= width
        assert any(line.startswith(f"not shown at {width} columns (see summary.md): ") for line in printed)
    markdown = (out / "summary.md").read_text()
    assert all(f"{summary_metric} median" in markdown for summary_metric in ("Deletion AUC", "Insertion AUC"))
