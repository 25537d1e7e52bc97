"""One table model and its three renderers: the terminal (rich), markdown (summary.md) and HTML (report.html).

A :class:`Table` is built once from the summary, with its cells already formatted; a renderer only lays it out.
Where a medium shows a column differently (the terminal breaks headers and CIs over two lines and gives fewer digits
to fit 80 columns), the column carries that medium's header or cells beside its own, so the difference is one
visible entry of the table rather than a second table built elsewhere. Columns have a ``group`` so that a view can
leave some out (the seed report's values only in summary.md) or split them into a second table.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Collection, Mapping, Sequence

from rich.table import Table as RichTable

TERMINAL, MARKDOWN, HTML = "terminal", "markdown", "html"


@dataclass(frozen=True)
class Column:
    """A header and one formatted cell per row; ``header_in`` / ``cells_in``: a medium's own, where it differs."""

    header: str
    cells: list[str]
    group: str = ""
    header_in: Mapping[str, str] = field(default_factory=dict)
    cells_in: Mapping[str, list[str]] = field(default_factory=dict)

    def header_for(self, medium: str) -> str:
        return self.header_in.get(medium, self.header)

    def cells_for(self, medium: str) -> list[str]:
        return self.cells_in.get(medium, self.cells)


@dataclass(frozen=True)
class Table:
    """Columns of formatted cells, every column as long as the others; ``title`` heads it where the medium has no
    heading of its own (the terminal)."""

    columns: list[Column]
    title: str = ""

    @classmethod
    def from_rows(cls, header: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> "Table":
        """A table given row by row, the same in every medium."""
        columns = [Column(str(h), [str(row[j]) for row in rows]) for j, h in enumerate(header)]
        return cls(columns, title)

    def select(self, keep: Collection[str] | None = None, drop: Collection[str] = ()) -> "Table":
        """The columns whose group is in ``keep`` (all when None) and not in ``drop``."""
        return replace(self, columns=[c for c in self.columns
                                      if (keep is None or c.group in keep) and c.group not in drop])

    def header(self, medium: str) -> list[str]:
        return [c.header_for(medium) for c in self.columns]

    def rows(self, medium: str) -> list[list[str]]:
        cells = [c.cells_for(medium) for c in self.columns]
        return [list(row) for row in zip(*cells)]


def to_markdown(table: Table) -> list[str]:
    """The table as markdown lines: header, separator, a line per row."""
    header = table.header(MARKDOWN)
    return [_markdown_row(header), _markdown_row(["---"] * len(header)),
            *(_markdown_row(row) for row in table.rows(MARKDOWN))]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def to_html(table: Table) -> str:
    """The table as an HTML ``<table>``, every text escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header(HTML))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n"
                   for row in table.rows(HTML))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def to_rich(table: Table) -> RichTable:
    """The table for the terminal: the first column (the names) the only one that may wrap, numbers right-aligned."""
    rich_table = RichTable(title=table.title, title_justify="left")
    for j, header in enumerate(table.header(TERMINAL)):
        if j == 0:
            rich_table.add_column(header, min_width=9)
        else:
            rich_table.add_column(header, justify="right", no_wrap=True)
    for row in table.rows(TERMINAL):
        rich_table.add_row(*row)
    return rich_table
