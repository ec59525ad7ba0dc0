"""A small synchronous client for the admin API, used by the CLI."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ApiError(RuntimeError):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ApiClient:
    def __init__(self, server: str | None = None, token: str | None = None) -> None:
        self.server = (server or os.environ.get("HEADWATER_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.token = token or os.environ.get("HEADWATER_TOKEN")

    def stream_events(self, path: str) -> Iterator[bytes]:
        """The ``data`` of each server-sent event from ``path``, as it arrives."""
        req = urllib.request.Request(self.server + path)
        req.add_header("Accept", "text/event-stream")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            response = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach Headwater at {self.server}: {exc}") from exc
        with response:
            data: list[bytes] = []
            for line in response:
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif not line and data:
                    yield b"\n".join(data)
                    data = []

    @staticmethod
    def _error(exc: urllib.error.HTTPError) -> ApiError:
        raw = exc.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
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
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach Headwater at {self.server}: {reason}") from exc
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace")
