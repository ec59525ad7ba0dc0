"""A small synchronous client for the admin API, used by the CLI.

Every admin API answer is JSON (errors too) and a tail is ``text/event-stream``:
a server that answers something else under ``/api/`` (a web page, another
product's API) is reported as not a Headwater API, naming what it answered,
instead of its body being shown as an error.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from headwater import DEFAULT_SERVER


class ApiError(RuntimeError):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class NotHeadwater(ApiError):
    """The server answered, but not as Headwater's admin API does."""


class ApiClient:
    def __init__(self, server: str | None = None, token: str | None = None) -> None:
        self.server = (server or os.environ.get("HEADWATER_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.token = token or os.environ.get("HEADWATER_TOKEN")

    def stream_events(
        self,
        path: str,
        on_open: Callable[[], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> Iterator[bytes]:
        """The ``data`` of each server-sent event from ``path``, as it arrives.

        ``on_open`` is called once the server accepted the stream. Events
        named ``warning`` (the server's remarks about the stream, such as a
        filter reading an attribute no event has) go to ``on_warning``.
        """
        req = urllib.request.Request(self.server + path)
        req.add_header("Accept", "text/event-stream")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            response = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as exc:
            raise self._error(exc, "GET", path) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach Headwater at {self.server}: {exc}") from exc
        media = response.headers.get_content_type()
        if media != "text/event-stream":
            response.close()
            raise self._not_headwater("GET", path, response.status, media)
        if on_open is not None:
            on_open()
        with response:
            data: list[bytes] = []
            name = b""
            for line in response:
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
                elif not line and data:
                    if name == b"warning":
                        if on_warning is not None:
                            on_warning(b"\n".join(data).decode("utf-8", "replace"))
                    elif not name or name == b"message":
                        yield b"\n".join(data)
                    data, name = [], b""

    def _not_headwater(self, method: str, path: str, status: int, media: str) -> NotHeadwater:
        return NotHeadwater(
            f"{self.server} is not a Headwater API ({method} {path.partition('?')[0]} "
            f"answered {status} with {media}); check --server or HEADWATER_SERVER",
            status,
        )

    def _error(self, exc: urllib.error.HTTPError, method: str, path: str) -> ApiError:
        raw = exc.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if path.startswith("/api/") and not (isinstance(parsed, dict) and "error" in parsed):
            media = exc.headers.get_content_type() if exc.headers else "no content type"
            return self._not_headwater(method, path, exc.code, media)
        if parsed is None:
            parsed = {"error": raw.decode("utf-8", "replace").strip() or exc.reason}
        message = parsed.get("error", str(exc.reason)) if isinstance(parsed, dict) else raw
        return ApiError(str(message), exc.code, parsed)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        req = urllib.request.Request(self.server + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
                status, media = response.status, response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            raise self._error(exc, method, path) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach Headwater at {self.server}: {reason}") from exc
        if path.startswith("/api/") and media != "application/json":
            raise self._not_headwater(method, path, status, media)
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if path.startswith("/api/"):
                raise self._not_headwater(method, path, status, media) from exc
            return raw.decode("utf-8", "replace")
