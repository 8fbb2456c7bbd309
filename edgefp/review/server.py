"""The review page's server: the standard library's HTTP server on the loopback interface, one static
page (no external resources: it works offline) and a small JSON API. Every label is written to the
labels file before the answer goes back, so the page only reports a label saved once it is on disk.

    GET  /                   the page (static/index.html, review.js, review.css)
    GET  /api/queue          the data, the known and new classes, the queue in order, the labels so far
    GET  /api/sample/N       sample N: its values, evidence per layer, nearest in-distribution examples
    POST /api/label          {"id": ..., "label": {...}} (edgefp.review.labels.LabelStore.set)
    POST /api/export         write the training file
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from edgefp.errors import EdgefpError

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/review.js": "review.js", "/review.css": "review.css"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
BODY_MAX = 1 << 16


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgefp-review"

    def log_message(self, *args) -> None:  # quiet: the command prints what matters
        pass

    def _local(self) -> bool:
        """Requests name this server as their host (no other site's page reaches it through DNS)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, content) -> None:
        self._send(status, json.dumps(content).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        review = self.server.review
        path = urlsplit(self.path).path
        if not self._local():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "only this machine's pages may ask"})
        if path in PAGES:
            file = STATIC / PAGES[path]
            return self._send(HTTPStatus.OK, file.read_bytes(), TYPES[file.suffix])
        if path == "/api/queue":
            return self._json(HTTPStatus.OK, review.state())
        if path.startswith("/api/sample/") and path.rsplit("/", 1)[1].isdigit():
            index = int(path.rsplit("/", 1)[1])
            if index < len(review.queue.x):
                return self._json(HTTPStatus.OK, review.sample(index))
        self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        review = self.server.review
        path = urlsplit(self.path).path
        origin = self.headers.get("Origin")
        if not self._local() or (origin and urlsplit(origin).hostname not in ("127.0.0.1", "localhost", "::1")):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "only this machine's pages may label"})
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json" or not 0 <= length <= BODY_MAX:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "send a JSON body"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if path == "/api/label":
                label = review.store.set(str(body["id"]), dict(body["label"]))
                return self._json(HTTPStatus.OK, {"id": body["id"], "label": label, **review.classes_and_counts()})
            if path == "/api/export":
                return self._json(HTTPStatus.OK, review.export())
        except (EdgefpError, KeyError, TypeError, ValueError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        self._json(HTTPStatus.NOT_FOUND, {"error": f"no such action: {path}"})


class ReviewServer:
    """The page for ``review`` (an :class:`edgefp.review.Review`) on 127.0.0.1:``port`` (0: a free one)."""

    def __init__(self, review, port: int = 0):
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise EdgefpError(f"cannot serve the review page on 127.0.0.1:{port}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        self.httpd.review = review
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.httpd.serve_forever(0.2)

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> ReviewServer:
        return self if self._thread else self.start()

    def __exit__(self, *exc) -> None:
        self.close()
