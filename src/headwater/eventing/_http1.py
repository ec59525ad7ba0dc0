"""A lean HTTP/1.1 client for deliveries: keep-alive POSTs, responses parsed by httptools.

Why not aiohttp's client here: in the HTTP worker (the process that makes
``headwater up``'s deliveries) aiohttp took 75-95 us of CPU per POST,
measured with ``benchmarks/mqtt_to_http.py`` and py-spy, spread over its
request, payload, connector and response machinery; that was the most
expensive step an event went through. A delivery needs much less: one
POST of bytes already encoded, to a handful of origins, over pooled
keep-alive connections, and the status, headers and a bounded body back.
This does that and nothing else; the parsing is httptools' (llhttp, the
parser of Node.js), so the wire format is not ours to get wrong. Why it
exists beside aiohttp and the worker: :mod:`headwater.eventing.transport` and
docs/architecture.md, "Decisions".

It is a :class:`~headwater.eventing.transport.DeliveryTransport` as it
stands. Semantics (those of every transport): redirects are not followed, no
Content-Type is added, the body read stops a little over ``max_body``
bytes (the connection is then closed), ``gzip``/``deflate`` responses are
decompressed, credentials in the URL become Basic authorization. Requests
go out with ``Host``, ``User-Agent``, ``Content-Length`` and the caller's
headers (which win over the first two). Any failure to get a response
raises :class:`HttpError`: refused, reset, a malformed response, a bad URL.

Pooling: at most ``limit`` connections are open at once across all origins;
beyond that, requests wait for a free one (backpressure, not failure). An
idle connection is reused most-recent first and closed after
``keepalive_timeout`` seconds; one the server closed is never reused. A
request is never sent twice: when a reused connection closes without an
answer, the server may have read and acted on it (aiohttp's client does
not resend a POST either); the error is a retryable delivery failure, so
the DeliverySpec's retries decide.

Limits on what a server sends back: the body as above (a compressed body
cut short is returned cut, so the caller sees it as too large), response
headers up to :data:`MAX_HEADER_BYTES` and :data:`MAX_HEADERS`; chunked
trailers are ignored, as aiohttp does; bytes after a complete response
close the connection instead of being read as the next one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import re
import socket
import ssl
import zlib
from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import httptools

from headwater import __version__
from headwater.eventing.transport import (
    DEFAULT_POOL_SIZE,
    KEEPALIVE_TIMEOUT,
    Response,
    TransportError,
)

__all__ = ["Http1Client", "HttpError"]

USER_AGENT: Final = f"headwater/{__version__}"

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
"""A header name (RFC 9110, 5.1: a token)."""

_TARGETS_KEPT: Final = 1024
"""Parsed URLs kept (a delivery goes to few; the cache is dropped when full)."""

_NAMES_KEPT: Final = 4096
"""Header names known to be valid (extensions vary; the set is dropped when full)."""

MAX_HEADER_BYTES: Final = 64 * 1024
"""Bytes of status line and headers accepted in a response."""

MAX_HEADERS: Final = 256
"""Header fields accepted in a response (an event's attributes and extensions among them)."""

_PATH_SAFE: Final = "!#$%&'()*+,/:;=?@[]~"
"""What stays as it is in a request target: the rest of ASCII punctuation and any
non-ASCII character are percent-encoded (UTF-8), as aiohttp's yarl does."""


class HttpError(TransportError):
    """No usable response came: refused, reset, malformed, or the request could not be made."""


class _Target(NamedTuple):
    origin: tuple[str, str, int]
    """(scheme, host, port): connections are pooled per origin."""
    head: str
    """The request line and Host header."""
    defaults: dict[str, str]
    """Lower-cased name -> header line, added unless the caller sends that header."""


def _target(url: str, method: str = "POST") -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HttpError(f"invalid URL {url!r}: the scheme must be http or https")
    host = parts.hostname
    if not host:
        raise HttpError(f"invalid URL {url!r}: no host")
    default_port = 443 if scheme == "https" else 80
    if port is None:
        port = default_port
    elif port == 0:
        raise HttpError(f"invalid URL {url!r}: port 0")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c <= " " or c == "\x7f" for c in path):
        raise HttpError(f"invalid URL {url!r}: spaces or control characters in the path")
    path = quote(path, safe=_PATH_SAFE)
    try:
        # An internationalised name goes out as its ASCII form (IDNA), as aiohttp sends it.
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise HttpError(f"invalid URL {url!r}: bad host name: {exc}") from None
    authority = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    if port != default_port:
        authority += f":{port}"
    defaults = {"user-agent": f"User-Agent: {USER_AGENT}\r\n"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(credentials.encode()).decode("ascii")
        defaults["authorization"] = f"Authorization: Basic {token}\r\n"
    head = f"{method} {path} HTTP/1.1\r\n"
    defaults["host"] = f"Host: {authority}\r\n"
    return _Target((scheme, ascii_host, port), head, defaults)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it arrives."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Response] | None = None
        self._limit = 0
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._length_known = False
        self._encoding = ""
        self._keep = True
        self._complete_seen = False

    # -- requests ---------------------------------------------------------------------

    async def request(self, data: bytes, max_body: int) -> Response:
        assert self.transport is not None
        self._reset()
        self._limit = max_body
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            response: Response = await waiter
            return response
        finally:
            self._waiter = None

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, result: Response | BaseException) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)

    def _complete(self, keep: bool) -> None:
        """Answer the request with the response read so far; ``keep``: reuse the connection."""
        self._keep = keep
        self._complete_seen = True
        body = b"".join(self._chunks)
        encoding = self._encoding
        # A body cut at the limit stays cut and compressed: the caller sees it too large.
        if encoding in ("gzip", "x-gzip", "deflate") and self._size <= self._limit:
            try:
                body = _decompress(body, encoding, self._limit)
            except zlib.error as exc:
                self._keep = False
                self._finish(HttpError(f"malformed {encoding} response body: {exc}"))
                return
        status = self.parser.get_status_code()
        self._finish(Response(status, self._reason.decode("latin-1"), self._headers, body))

    def _refuse(self, reason: str) -> None:
        """Fail the request and drop the connection: the response cannot be used."""
        self._keep = False
        self._finish(HttpError(reason))
        self.close()

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete_seen:  # a second response to one request
            self._refuse("the server sent more than one response")

    def on_status(self, reason: bytes) -> None:
        if self._complete_seen:
            return
        self._reason += reason
        self._header_bytes += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done or self._complete_seen:
            return  # a chunked body's trailer fields: ignored, as aiohttp ignores them
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADERS:
            self._refuse(f"response headers over {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes")
            return
        key = name.decode("latin-1")
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = value.decode("latin-1")  # not UTF-8: each byte as itself
        lower = key.lower()
        if lower == "content-length" or (lower == "transfer-encoding" and "chunked" in text):
            self._length_known = True
        elif lower == "content-encoding":
            self._encoding = text.strip().lower()
        self._headers.append((key, text))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._complete_seen:
            return
        if self._size <= self._limit:
            self._chunks.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self._complete_seen:
            return
        if self.parser.get_status_code() < 200:  # 100 Continue and the like: the real one follows
            self._reset()
            return
        self._complete(self.parser.should_keep_alive())

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("the server switched protocols (an upgrade was not asked for)")
            return
        except httptools.HttpParserError as exc:
            self._refuse(f"malformed HTTP response: {exc}")
            return
        if self.closed:
            return
        if self._size > self._limit and self._waiter is not None and not self._waiter.done():
            # Enough read: answer with what came (the caller sees the size) and drop the rest.
            self._complete(keep=False)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._length_known:
            # A body delimited by the end of the connection (RFC 9112, 6.3, point 8).
            self._complete(keep=False)
            return
        why = f": {exc}" if exc else ""
        self._finish(HttpError(f"the server closed the connection before a full response{why}"))


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The decoded body, at most ``limit + 1`` bytes; zlib.error if it is damaged or cut short."""
    wbits = 31 if encoding in ("gzip", "x-gzip") else 15
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        if encoding != "deflate":
            raise
        # "deflate" is sometimes sent raw, without its zlib wrapper.
        inflater = zlib.decompressobj(-15)
        data = inflater.decompress(body, limit + 1)
    if len(data) <= limit and not inflater.eof:
        raise zlib.error("the compressed data ends early")
    return data


def _detect_dead_peer(sock: socket.socket | None, seconds: float) -> None:
    """Have the kernel close a connection whose peer went silent for ``seconds``.

    A link that is cut does not close the connections over it: a request
    waits on TCP retransmissions (whose backoff grows past the outage) or on
    an answer that will never come. ``TCP_USER_TIMEOUT`` (RFC 5482, Linux)
    aborts a connection once sent data stays unacknowledged that long, and
    keepalive probes find the same while a request waits for its answer: the
    peer's kernel acknowledges them even when its application is slow, so a
    slow receiver is never mistaken for a dead one.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the request timeout applies
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(seconds / 6)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


class Http1Client:
    """POSTs over pooled keep-alive HTTP/1.1 connections (see the module docstring)."""

    def __init__(
        self,
        limit: int = DEFAULT_POOL_SIZE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        dead_peer_timeout: float | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if dead_peer_timeout is not None and not dead_peer_timeout >= 1:
            raise ValueError(
                f"dead_peer_timeout must be at least 1 second, not {dead_peer_timeout}"
            )
        self.limit = limit
        self.dead_peer_timeout = dead_peer_timeout
        self.keepalive_timeout = keepalive_timeout
        self._ssl = ssl_context
        self._targets: dict[tuple[str, str], _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0
        self._slots: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._names: set[str] = set()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, max_body: int
    ) -> Response:
        """The response to a POST of ``body`` (its body cut a little over ``max_body``)."""
        return await self.request("POST", url, headers, body, max_body)

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, max_body: int
    ) -> Response:
        """The response to one request (``OPTIONS`` probes a receiver; see :meth:`post`).

        The body goes out with a ``Content-Length`` whatever the method; a
        response to ``HEAD`` is not supported (it would be read as having a body).
        """
        target = self._targets.get((method, url))
        if target is None:
            if not _TOKEN.match(method) or method == "HEAD":
                raise HttpError(f"unsupported request method {method!r}")
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            target = self._targets[(method, url)] = _target(url, method)
        data = self._encode(target, headers, body)
        connection = await self._acquire(target.origin)
        try:
            response = await connection.request(data, max_body)
        except BaseException:
            self._discard(connection)  # failed or cancelled mid-way: its state is unknown
            raise
        self._release(connection)
        return response

    def _encode(self, target: _Target, headers: Mapping[str, str], body: bytes) -> bytes:
        names = self._names
        if len(names) >= _NAMES_KEPT:
            names.clear()
        lines = [target.head]
        given = set()
        for name, value in headers.items():
            if name not in names:
                if not _TOKEN.match(name):
                    raise HttpError(f"invalid header name {name!r}")
                names.add(name)
            lower = name.lower()
            if lower in ("content-length", "transfer-encoding", "connection"):
                continue  # framing is this client's
            given.add(lower)
            lines.append(f"{name}: {value}\r\n")
        for lower, line in target.defaults.items():
            if lower not in given:
                lines.append(line)
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines)
        # One CRLF per line and the blank one: a value carrying its own would split the header.
        if head.count("\n") != len(lines) + 1 or head.count("\r") != len(lines) + 1:
            raise HttpError("a header value contains a line break")
        try:
            return head.encode("utf-8") + body
        except UnicodeEncodeError as exc:
            raise HttpError(f"a header cannot be encoded: {exc}") from None

    async def _acquire(self, origin: tuple[str, str, int]) -> _Connection:
        while True:
            if self._closed:
                raise HttpError("the HTTP client is closed")
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if not connection.closed:
                    return connection
                self._open -= 1
            if self._open < self.limit:
                break
            if self._close_oldest_idle():
                continue
            slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slots.append(slot)
            try:
                await slot
            except asyncio.CancelledError:
                if slot.done() and not slot.cancelled():
                    self._wake()  # pass the slot on
                raise
        self._open += 1
        try:
            connection = await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        if self._closed:  # closed while connecting
            self._discard(connection)
            raise HttpError("the HTTP client is closed")
        return connection

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            transport, connection = await loop.create_connection(
                lambda: _Connection(origin), host, port, ssl=context
            )
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc}") from exc
        if self.dead_peer_timeout is not None:
            _detect_dead_peer(transport.get_extra_info("socket"), self.dead_peer_timeout)
        return connection

    def _release(self, connection: _Connection) -> None:
        """Back to the pool after a response (or closed, if it cannot be reused)."""
        if not connection.reusable or self._closed:
            self._discard(connection)
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.setdefault(connection.origin, []).append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.keepalive_timeout / 2, self._sweep)
        self._wake()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._slots:
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    def _close_oldest_idle(self) -> bool:
        """Close the longest-idle connection of any origin, to open one elsewhere."""
        oldest: list[_Connection] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is None:
            return False
        oldest.pop(0).close()
        self._open -= 1
        return True

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_timeout
        remaining = 0
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and c.idle_since > expired]
            for connection in idle:
                if connection not in keep:
                    connection.close()
                    self._open -= 1
            if keep:
                self._idle[origin] = keep
                remaining += len(keep)
            else:
                del self._idle[origin]
        if remaining:
            self._sweeper = loop.call_later(self.keepalive_timeout / 2, self._sweep)

    async def close(self) -> None:
        """Close the idle connections; requests under way keep theirs until they end."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
                self._open -= 1
        self._idle.clear()
        while self._slots:
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_exception(HttpError("the HTTP client is closed"))
        await asyncio.sleep(0)
