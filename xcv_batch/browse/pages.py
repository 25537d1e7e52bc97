"""The HTML of each page: plain HTML, one small stylesheet and one small script inline (nothing fetched from
elsewhere). Every name and value from the run goes through :func:`html.escape`; every link is built from the run's
own image indices and method names, URL-quoted."""

from __future__ import annotations

import base64
import html
import math
from urllib.parse import quote, urlencode

import numpy as np
import pandas as pd

from ..metrics.registry import metric_info
from ..report.labels import method_label
from .index import FILTER_OPS, PAGE_SIZES, ListQuery, Snapshot
from .render import SIZES, Picture

STYLE = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
nav a{margin-right:1.2em} table{border-collapse:collapse} td,th{padding:3px 6px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle} th{background:#f4f4f4} img{image-rendering:pixelated;display:block}
.pages a,.pages span{margin-right:1em} .failed{color:#a00;font-size:12px} .note{color:#666}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top} figcaption{font-size:12px;max-width:256px}
.bar{display:flex;justify-content:space-between;font-size:11px;width:256px} form{margin:1em 0}
"""
#: Left and right arrow keys follow the page's previous and next links.
SCRIPT = """
document.addEventListener("keydown", function (e) {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  var rel = {ArrowLeft: "prev", ArrowRight: "next"}[e.key];
  var link = rel && document.querySelector("a[rel=" + rel + "]");
  if (link) location.href = link.href;
});
"""

esc = html.escape


def url(path: str, params: dict[str, str] | None = None) -> str:
    return path + ("?" + urlencode(params) if params else "")


def fmt(value) -> str:
    """A cell's text: numbers to 4 significant digits, missing values as –."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


#: Seconds between reloads of a page whose values are still being computed.
REFRESH_SECONDS = 2


def layout(title: str, body: str, snapshot: Snapshot, has_report: bool, refresh: bool = False) -> str:
    links = [("/", "Images"), ("/disagree/maps", "Maps disagree"), ("/disagree/metrics", "Metrics disagree")]
    if has_report:
        links.append(("/report", "Report"))
    nav = "".join(f'<a href="{href}">{text}</a>' for href, text in links)
    status = (f"{snapshot.n_images} images with committed rows ({len(snapshot.rows)} rows) in "
              f"{esc(snapshot.results.out)}")
    reload = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{reload}<title>{esc(title)} · xcv_batch '
            f'browse</title><style>{STYLE}</style></head><body><nav>{nav}</nav><p class="note">{status}</p>'
            f'<h1>{esc(title)}</h1>{body}<script>{SCRIPT}</script></body></html>')


def message_page(title: str, message: str, snapshot: Snapshot | None) -> str:
    body = f'<p id="message">{esc(message)}</p><p><a href="/">back to the images</a></p>'
    if snapshot is None:
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title></head>'
                f"<body><h1>{esc(title)}</h1>{body}</body></html>")
    return layout(title, body, snapshot, has_report=False)


def _options(values: list[tuple[str, str]], chosen: str | None) -> str:
    return "".join(f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(text)}</option>'
                   for v, text in values)


def _thumbnails(snapshot: Snapshot, index: int, pictures: dict[tuple[int, str], Picture | None]) -> str:
    """The input's and each method's thumbnail cells of one image, inline (one request for a whole page); a failed
    method: its error instead."""
    statuses = snapshot.statuses(index)
    cells = [_thumbnail(pictures.get((index, "input")), f"input of image {index}")]
    for method in snapshot.methods:
        status, error = statuses.get(method, (None, None))
        if status is None:
            cells.append('<td class="note">not yet</td>')
        elif status != "ok":
            cells.append(f'<td class="failed" title="{esc(fmt(error))}">failed</td>')
        else:
            cells.append(_thumbnail(pictures.get((index, method)), f"{method} map of image {index}", "map"))
    return "".join(cells)


def _thumbnail(picture: Picture | None, alt: str, kind: str = "input") -> str:
    if picture is None:
        return '<td class="failed">unreadable</td>'
    side = SIZES["thumb"]
    data = base64.b64encode(picture.png).decode()
    return (f'<td><img class="thumb {kind}" src="data:image/png;base64,{data}" width="{side}" height="{side}" '
            f'alt="{esc(alt)}"></td>')


def _pager(path: str, query: ListQuery, pages: int) -> str:
    parts = []
    if query.page > 1:
        parts.append(f'<a rel="prev" href="{esc(url(path, query.params(page=query.page - 1)))}">← previous</a>')
    parts.append(f'<span class="page-of">page {query.page} of {pages}</span>')
    if query.page < pages:
        parts.append(f'<a rel="next" href="{esc(url(path, query.params(page=query.page + 1)))}">next →</a>')
    return f'<p class="pages">{"".join(parts)}</p>'


def list_page(snapshot: Snapshot, query: ListQuery, indices: np.ndarray, pages: int, n_listed: int,
              pictures: dict, has_report: bool) -> str:
    columns = [(c, c) for c in snapshot.columns]
    methods = [("", "all methods")] + [(m, m) for m in snapshot.methods]
    form = (
        '<form method="get" action="/">'
        f'sort by <select name="sort">{_options(columns, query.sort)}</select> '
        f'of <select name="method">{_options(methods, query.method or "")}</select> '
        f'<label><input type="checkbox" name="desc" value="1"{" checked" if query.desc else ""}> descending</label>'
        f' · keep where <select name="col">{_options(columns, query.column or "status")}</select> '
        f'<select name="op">{_options(list(FILTER_OPS.items()), query.op)}</select> '
        f'<input name="val" size="12" value="{esc(query.value)}"> · '
        f'<select name="per">{_options([(str(n), f"{n} a page") for n in sorted({*PAGE_SIZES, query.per})], str(query.per))}</select> '
        '<button type="submit">show</button></form>')
    shown = query.sort if query.method is None else f"{query.sort} of {query.method}"
    head = ("<tr><th>#</th><th>image</th>"
            f'<th>{esc(shown)}</th><th>target</th><th>input</th>'
            + "".join(f"<th>{esc(method_label(m))}</th>" for m in snapshot.methods) + "</tr>")
    values = snapshot.column_values(query.sort, query.method)
    target = snapshot.column_values("target_name" if "target_name" in snapshot.columns else "target", None)
    body_rows = []
    link_params = query.params(page=1)
    for index in indices:
        index = int(index)
        link = esc(url(f"/image/{index}", link_params))
        body_rows.append(
            f'<tr class="image" data-index="{index}"><td>{index}</td>'
            f'<td><a class="image-link" href="{link}">{esc(snapshot.image_id(index))}</a></td>'
            f'<td class="sort-value">{esc(fmt(values.get(index)))}</td><td>{esc(fmt(target.get(index)))}</td>'
            f"{_thumbnails(snapshot, index, pictures)}</tr>")
    table = f'<table id="images">{head}{"".join(body_rows)}</table>'
    count = f'<p id="count">{n_listed} of {snapshot.n_images} images</p>'
    pager = _pager("/", query, pages)
    return layout("Images", form + count + pager + table + pager, snapshot, has_report)


def _figure(src: str, caption: str, picture: Picture | None, bar_src: str | None, alt: str) -> str:
    side = SIZES["large"]
    bar = ""
    if picture is not None and bar_src is not None:
        scale = picture.scale if picture.scale else 1.0
        ends = (f"{-scale:.2g}", "0", f"{scale:.2g}") if picture.signed else ("0", "", f"{scale:.2g}")
        kind = "signed" if picture.signed else "magnitude"
        bar = (f'<img class="colour-bar" src="{bar_src}" width="{side}" height="12" alt="{kind} colour bar">'
               f'<div class="bar">{"".join(f"<span>{e}</span>" for e in ends)}</div>'
               f'<div class="note">{kind}, Σ channels, clipped</div>')
    image = f'<img src="{src}" width="{side}" height="{side}" alt="{esc(alt)}">' if src else ""
    return f'<figure>{image}{bar}<figcaption>{caption}</figcaption></figure>'


def image_page(snapshot: Snapshot, index: int, query: ListQuery, neighbours, pictures: dict[str, Picture | None],
               has_report: bool) -> str:
    """``pictures``: method → its drawn map (None: failed or not written)."""
    previous, following, position = neighbours
    params = query.params(page=1)
    links = []
    if previous is not None:
        links.append(f'<a rel="prev" href="{esc(url(f"/image/{previous}", params))}">← previous</a>')
    if position is not None:
        links.append(f"<span>{position + 1} of {len(snapshot.order(query))} in this sort</span>")
    if following is not None:
        links.append(f'<a rel="next" href="{esc(url(f"/image/{following}", params))}">next →</a>')
    back = query.params(page=(position // query.per + 1) if position is not None else 1)
    links.append(f'<a href="{esc(url("/", back))}">back to the list</a>')
    rows = snapshot.best_rows(index)
    figures = [_figure(f"/map/{index}/input.png", "input", None, None, "input")]
    for method in snapshot.methods:
        row, picture = rows.get(method), pictures.get(method)
        caption = f'<b class="method">{esc(method_label(method))}</b>'
        if row is not None and row["status"] != "ok":
            caption += f'<br><span class="failed">failed: {esc(fmt(row.get("error")))}</span>'
        elif row is None:
            caption += '<br><span class="note">not computed yet</span>'
        src = f"/map/{index}/{quote(method, safe='')}.png" if picture is not None else ""
        bar = f"/colourbar/{'signed' if picture and picture.signed else 'magnitude'}.png"
        figures.append(_figure(src, caption, picture, bar, f"{method} map"))
    body = (f'<p class="pages">{"".join(links)}</p><div id="maps">{"".join(figures)}</div>'
            + _ranks_table(snapshot.ranks(index), snapshot.methods) + _rows_table(snapshot.image_rows(index)))
    return layout(snapshot.image_id(index), body, snapshot, has_report)


def _ranks_table(ranks: dict[str, dict[str, float]], methods: list[str]) -> str:
    if not ranks:
        return "<h2>Ranks on this image</h2><p>No metric has a value on this image.</p>"
    head = "<tr><th>metric</th>" + "".join(f"<th>{esc(method_label(m))}</th>" for m in methods) + "</tr>"
    body = "".join(
        f'<tr><td>{esc(metric_info(metric).label)} ({"lower" if metric_info(metric).direction == "lower" else "higher"}'
        f' is better)</td>' + "".join(f"<td>{esc(fmt(of.get(m)))}</td>" for m in methods) + "</tr>"
        for metric, of in ranks.items())
    return f'<h2>Ranks on this image (1: best)</h2><table id="ranks">{head}{body}</table>'


def _rows_table(rows: pd.DataFrame) -> str:
    head = "<tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in rows.columns) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows.itertuples(index=False))
    return f'<h2>Rows</h2><table id="rows">{head}{body}</table>'


def disagreement_order(values: pd.Series, query: ListQuery) -> tuple[pd.Series, int]:
    """The page of ``values`` (lowest first, missing last) that ``query`` asks for, and the number of pages."""
    ordered = values.sort_values(kind="stable", na_position="last")
    pages = max(1, -(-len(ordered) // query.per))
    first = (min(query.page, pages) - 1) * query.per
    return ordered.iloc[first:first + query.per], pages


def disagreement_page(snapshot: Snapshot, title: str, explanation: str, shown: pd.Series | None, pages: int,
                      query: ListQuery, pictures: dict, path: str, has_report: bool, progress=None) -> str:
    """The page ``shown`` (image index → value) of the images with the lowest values first; ``progress`` (a
    :class:`~.map_agreement.Progress`): how far the values are known, said above the list, and the page reloads
    itself until they all are."""
    if shown is None:
        return layout(title, f'<p id="message">{esc(explanation)}</p>', snapshot, has_report)
    notes = []
    if progress is not None:
        if progress.error is not None:
            notes.append(f'<p id="progress" class="failed">Computed for {progress.done} of {progress.total} images, '
                         f"then stopped: {esc(progress.error)}</p>")
        elif not progress.complete:
            notes.append(f'<p id="progress">Computed for {progress.done} of {progress.total} images; the others are '
                         f"being read now (this page reloads every {REFRESH_SECONDS} s). <code>python -m xcv_batch "
                         "summarize OUT</code> stores the values beside the run, for the next time.</p>")
        else:
            source = (f"{progress.stored} of {progress.total} images from map_agreement.parquet (written by "
                      f"summarize), {progress.total - progress.stored} computed by browse" if progress.stored
                      else f"all {progress.total} images computed by browse (summarize stores them beside the run)")
            notes.append(f'<p id="progress" class="note">Values for {source}.</p>')
        if progress.stored_problem is not None:
            notes.append(f'<p class="failed">Not used: {esc(progress.stored_problem)}</p>')
    head = ("<tr><th>#</th><th>image</th><th>value</th><th>input</th>"
            + "".join(f"<th>{esc(method_label(m))}</th>" for m in snapshot.methods) + "</tr>")
    body = "".join(
        f'<tr class="image" data-index="{int(i)}"><td>{int(i)}</td><td><a class="image-link" href="/image/{int(i)}">'
        f'{esc(snapshot.image_id(int(i)))}</a></td><td class="value">{esc(fmt(v))}</td>'
        f"{_thumbnails(snapshot, int(i), pictures)}</tr>"
        for i, v in shown.items())
    page_query = ListQuery(page=min(query.page, pages), per=query.per)
    pager = _pager(path, page_query, pages)
    return layout(title, f"<p>{esc(explanation)}</p>{''.join(notes)}{pager}<table id=\"images\">{head}{body}</table>"
                         f"{pager}", snapshot, has_report,
                  refresh=progress is not None and not progress.complete)
