"""An HTTP subscriber for end-to-end tests: answers what a test sets, remembers what came."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT = 30.0
"""Seconds a test waits for requests to arrive (or a held request to be released)."""


class Receiver:
    """On loopback, on a free port: answers ``status`` (an HTML body for errors, as a
    web server would) after ``delay`` seconds, or holds each request until ``released``
    while ``hang`` is set.
    ``ids`` are the ``ce-id`` of every request, in order."""

    def __init__(self) -> None:
        self.status = 202
        self.delay = 0.0  # seconds each request takes (a slow subscriber)
        self.hang = threading.Event()
        self.released = threading.Event()
        self.ids: list[str] = []
        self.hit = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.hit:
                    receiver.ids.append(self.headers.get("ce-id", ""))
                    receiver.hit.notify_all()
                if receiver.hang.is_set():
                    receiver.released.wait(WAIT * 2)
                if receiver.delay:
                    time.sleep(receiver.delay)
                body = b"" if receiver.status < 300 else b"<html>nope</html>"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_for(self, count: int) -> list[str]:
        """The ids once ``count`` requests arrived (fails after :data:`WAIT`)."""
        with self.hit:
            assert self.hit.wait_for(lambda: len(self.ids) >= count, WAIT), self.ids
            return list(self.ids)


@contextmanager
def serving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        receiver.server.shutdown()
        receiver.server.server_close()
