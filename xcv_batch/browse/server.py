"""The server: the standard library's threading HTTP server, GET only, read-only.

Routes (an image is named by its index in the run, a method by its name; nothing from a URL is used as a path):
``/`` the list (``sort``, ``method``, ``desc``, ``col``, ``op``, ``val``, ``page``, ``per``), ``/image/N`` an image
(the list's parameters give its previous and next), ``/find?id=ID`` an image by id, ``/thumb/N/input.png`` and
``/thumb/N/METHOD.png`` (``/map/…`` the image page's size), ``/colourbar/signed.png``, ``/disagree/maps``,
``/disagree/metrics`` and ``/report`` (OUT/report.html, when ``summarize`` wrote one). Every page says that nothing
may be fetched from another origin (Content-Security-Policy).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

import fsspec

from ..errors import ConfigError, NotFound, OutputError, RequestRefused, first_line
from .index import ListQuery, RunIndex, Snapshot, ranked_metrics, refuse_path_like
from .map_agreement import MapAgreement
from .pages import disagreement_order, disagreement_page, image_page, list_page, message_page, url
from .render import Renderer, colour_bar_png

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
#: What ``summarize`` writes beside the rows; served at /report.
REPORT_FILE = "report.html"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Pages and pictures come from this server only; report.html's pictures are inline (data:).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAPS_EXPLANATION = ("Images whose methods' maps disagree most first: per image, the mean over pairs of methods of "
                    "Spearman's rank correlation between their channel-summed maps, control maps left out (1: the "
                    "methods order the pixels alike).")
METRICS_EXPLANATION = ("Images where the metrics disagree most about the methods first: per image, the mean over "
                       "pairs of ranked metrics of Kendall's τ-b between the orders the two metrics give the methods "
                       "(summarize averages the same τ over images).")

_ROUTES = [(re.compile(pattern), name) for pattern, name in [
    (r"/", "list"), (r"/image/(\d+)", "image"), (r"/find", "find"),
    (r"/(thumb|map)/(\d+)/input\.png", "input"), (r"/(thumb|map)/(\d+)/([^/]+)\.png", "map"),
    (r"/colourbar/(signed|magnitude)\.png", "colour_bar"), (r"/disagree/(maps|metrics)", "disagree"),
    (r"/report", "report"),
]]


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class BrowseApp:
    """Answers one GET (a path with its query) with a :class:`Response`; shared by the server's threads."""

    def __init__(self, out: str, refresh_seconds: float = 2.0):
        self.index = RunIndex(out, refresh_seconds)
        self.renderer = Renderer()
        self.map_agreement = MapAgreement(self.renderer.count)
        self._report_seen: tuple[int, bool] | None = None

    def respond(self, target: str) -> Response:
        snapshot = None
        try:
            parts = urlsplit(target)
            path = unquote(parts.path)
            if "\\" in path or "\x00" in path or ".." in path.split("/") or "//" in path:
                raise RequestRefused("path-like request refused")
            params: dict[str, str] = {}
            for key, value in parse_qsl(parts.query, keep_blank_values=True):
                params.setdefault(key, value)
            for pattern, name in _ROUTES:
                found = pattern.fullmatch(path)
                if found:
                    snapshot = self.index.snapshot()
                    return getattr(self, f"_{name}")(snapshot, params, *found.groups())
            raise NotFound(f"no page {path}")
        except NotFound as err:
            return Response(404, message_page("Not found", str(err), snapshot).encode())
        except RequestRefused as err:
            return Response(400, message_page("Refused", str(err), snapshot).encode())
        except OutputError as err:  # a damaged chunk or an unreadable file: said, the server goes on
            return Response(500, message_page("Cannot read", first_line(err), snapshot).encode())

    # --- pages ------------------------------------------------------------------------------------------------------

    def has_report(self, snapshot: Snapshot) -> bool:
        """Whether OUT holds report.html (looked for again with each new snapshot)."""
        if self._report_seen is None or self._report_seen[0] != snapshot.generation:
            fs, path = self._report_fs()
            self._report_seen = (snapshot.generation, fs.exists(path))
        return self._report_seen[1]

    def _report_fs(self):
        fs, root = fsspec.core.url_to_fs(self.index.out)
        return fs, f"{root}/{REPORT_FILE}"

    def _query(self, snapshot: Snapshot, params: dict[str, str]) -> ListQuery:
        return ListQuery.parse(params, snapshot.columns, snapshot.methods)

    def _list(self, snapshot: Snapshot, params) -> Response:
        query = self._query(snapshot, params)
        indices, pages = snapshot.page(query)
        pictures = self.renderer.pictures(snapshot, indices, snapshot.methods, "thumb")
        html = list_page(snapshot, query, indices, pages, len(snapshot.order(query)), pictures,
                         self.has_report(snapshot))
        return Response(200, html.encode())

    def _image(self, snapshot: Snapshot, params, index: str) -> Response:
        query = self._query(snapshot, params)
        index = int(index)
        snapshot.image_id(index)  # NotFound first
        pictures = {}
        for method, row in snapshot.best_rows(index).items():
            try:
                pictures[method] = self.renderer.map_picture(snapshot, index, method, "large") \
                    if row["status"] == "ok" else None
            except (NotFound, OutputError):
                pictures[method] = None
        html = image_page(snapshot, index, query, snapshot.neighbours(index, query), pictures,
                          self.has_report(snapshot))
        return Response(200, html.encode())

    def _find(self, snapshot: Snapshot, params) -> Response:
        image_id = refuse_path_like("id", params.get("id", ""))
        index = snapshot.index_of_id(image_id)
        return Response(303, b"", headers={"Location": url(f"/image/{index}")})

    def _input(self, snapshot: Snapshot, params, size: str, index: str) -> Response:
        return _png(self.renderer.input_png(snapshot, int(index), _size(size)))

    def _map(self, snapshot: Snapshot, params, size: str, index: str, method: str) -> Response:
        method = snapshot.check_method(method)
        return _png(self.renderer.map_picture(snapshot, int(index), method, _size(size)).png)

    def _colour_bar(self, snapshot: Snapshot, params, kind: str) -> Response:
        return _png(colour_bar_png(kind == "signed"))

    def _disagree(self, snapshot: Snapshot, params, which: str) -> Response:
        query = ListQuery.parse({k: params[k] for k in ("page", "per") if k in params}, [], [])
        progress = None
        if which == "maps":
            progress = self.map_agreement.progress(snapshot)
            values, title, text = progress.values, "Where the maps disagree", MAPS_EXPLANATION
        else:
            values, title, text = snapshot.metric_taus(), "Where the metrics disagree", METRICS_EXPLANATION
            if values is None:
                text = ("Needs two ranked metrics (this run has "
                        f"{', '.join(ranked_metrics(snapshot.columns)) or 'none'}): enable another in the job's metrics.")
        shown, pages, pictures = None, 1, {}
        if values is not None:
            shown, pages = disagreement_order(values, query)
            pictures = self.renderer.pictures(snapshot, shown.index, snapshot.methods, "thumb")
        html = disagreement_page(snapshot, title, text, shown, pages, query, pictures, f"/disagree/{which}",
                                 self.has_report(snapshot), progress)
        return Response(200, html.encode())

    def _report(self, snapshot: Snapshot, params) -> Response:
        if not self.has_report(snapshot):
            raise NotFound(f"no {REPORT_FILE} in this run (python -m xcv_batch summarize OUT writes it)")
        fs, path = self._report_fs()
        with fs.open(path, "rb") as f:
            report = f.read()
        # served as written, with one link back into browse after <body> and the image ids it marks as links to
        # their pages (the file itself stays without links: opened from disk, none could work)
        report = report.replace(b"<body>", b'<body><nav id="browse-nav"><a href="/">'
                                           b"\xe2\x86\x90 browse every image</a></nav>", 1)
        return Response(200, _IMAGE_ID.sub(_image_link, report))


#: An image id as report.html marks it (report.html.image_id_html).
_IMAGE_ID = re.compile(rb'<span class="image-id" data-image-id="([^"<>]*)">([^<]*)</span>')


def _image_link(found: re.Match) -> bytes:
    image_id = html.unescape(found.group(1).decode("utf-8"))
    href = html.escape(url("/find", {"id": image_id}))
    return f'<a class="image-id" href="{href}">'.encode() + found.group(2) + b"</a>"


def _size(which: str) -> str:
    return "thumb" if which == "thumb" else "large"


def _png(body: bytes) -> Response:
    return Response(200, body, "image/png", {"Cache-Control": "private, max-age=600"})


class _Handler(BaseHTTPRequestHandler):
    server: "BrowseServer"
    server_version = "xcv_batch-browse"

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        response = self.server.app.respond(self.path)
        self.send_response(response.status)
        for name, value in {**SECURITY_HEADERS, "Content-Type": response.content_type,
                            "Content-Length": str(len(response.body)), **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: one line per picture would flood the terminal
        pass


class BrowseServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow picture never holds up the Ctrl-C

    def __init__(self, app: BrowseApp, host: str, port: int):
        self.app = app
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def serve_until_interrupted(self) -> None:
        """Serve until Ctrl-C, then close the socket."""
        try:
            self.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()


def make_server(out: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                refresh_seconds: float = 2.0) -> BrowseServer:
    """A server of the run at ``out`` bound to ``host:port`` (port 0: a free one), not yet serving; an OutputError
    for a bad OUT, a ConfigError naming ``--port`` or ``--host`` when it cannot bind."""
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"must be 0 … 65535, got {port}")
    app = BrowseApp(out, refresh_seconds)
    app.index.snapshot()  # the rows are read before the address is printed: the first page does not wait for them
    try:
        return BrowseServer(app, host, port)
    except OSError as err:
        key = "--port" if getattr(err, "errno", None) in (98, 48, 13) else "--host"
        raise ConfigError(key, f"cannot listen on {host}:{port} ({first_line(err)})") from None
