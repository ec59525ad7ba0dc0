"""What one HTTP peer may hold or cost: connections, time, body bytes, log lines.

How this works: aiohttp serves HTTP but bounds none of these (it has no read
timeouts and no connection cap: "it's application level duty"), so Headwater's
listener is a :class:`GuardedSite`, a TCP site whose connections each pass
through a thin :class:`asyncio.Protocol` in front of aiohttp's own. The guard
counts the connections, and a sweep (a few times per shortest timeout) closes
those that hold a slot without making progress, as nginx does:

- ``header_timeout`` (nginx's client_header_timeout): a request's headers must
  be complete this long after its first byte (for a new connection: after it
  opened). Slowloris connections, and connections that say nothing, get a
  ``408`` and are closed.
- ``body_timeout`` (client_body_timeout): while a handler waits for a request
  body, no more than this between two reads. A chunked body without its last
  chunk, or a Content-Length never filled, is cut off.
- ``idle_timeout`` (keepalive_timeout): a kept-alive connection between two
  requests.

At ``max_connections``, a new connection first takes the slot of the one that
has waited longest for a request (idle, or still sending its headers; not one
still receiving a response, which is not idle either); if every slot is
inside a request, it is answered ``503`` and closed. Data-plane
requests in progress (the Broker ingress) may use all but a reserve of the
slots (``admin_reserve``), so the admin API, ``/metrics`` and the dashboard
stay reachable while producers, or a flood posing as one, fill the rest. A
peer's misbehaviour is one throttled WARNING line (:class:`~headwater.logs.Throttle`)
and a counter in ``/metrics``, never a traceback: :class:`PeerLogger` makes
aiohttp's own server log say malformed requests so, and :func:`read_body`,
which every handler uses to read a body, counts the bytes it reads (the limit
holds for chunked bodies, not only for a declared Content-Length) and turns a
peer that leaves mid-body into :class:`PeerAborted`.

:func:`raise_open_files_limit` lifts the process's soft RLIMIT_NOFILE to its
hard limit at start, so that the cap, not the descriptor table, is what a
flood meets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import resource
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headwater.logs import Throttle

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "GUARDS_KEY",
    "BodyTooLarge",
    "ConnectionGuard",
    "GuardedSite",
    "HttpLimits",
    "PeerAborted",
    "PeerError",
    "PeerLogger",
    "fit_to_open_files",
    "guard_app",
    "metric_families",
    "peer_log",
    "raise_open_files_limit",
    "read_body",
]

log = logging.getLogger("headwater.http")

peer_log = Throttle(log)
"""One WARNING line per kind of peer trouble per minute; ``peer_log.counts``
holds every occurrence by kind, exported as ``headwater_http_peer_errors``."""

DEFAULT_MAX_CONNECTIONS: Final = 1024
"""HTTP connections open at once. Producers keep a few connections each, and
the dashboard and CLI a handful; a thousand is room for a site's devices and
gateways, and far below the open files the process may have (see
FILES_PER_CONNECTION)."""

DEFAULT_HEADER_TIMEOUT: Final = 10.0
"""Seconds a request's headers may take to arrive. Real clients send them in
one packet; ten seconds spares a slow radio link, and a slowloris connection
holds its slot no longer."""

DEFAULT_BODY_TIMEOUT: Final = 30.0
"""Seconds a request body may pause between two reads (not its whole
transfer: a large upload over a slow link goes on as long as it moves)."""

DEFAULT_IDLE_TIMEOUT: Final = 75.0
"""Seconds a kept-alive connection may wait for its next request (nginx's
default keepalive_timeout)."""

ADMIN_RESERVE_SHARE: Final = 8
"""One slot in this many is never given to data-plane requests in progress:
with the default cap, 128 connections stay for the admin API and the dashboard
whatever the ingress holds."""

FILES_PER_CONNECTION: Final = 8
"""The HTTP listener may use at most an eighth of the open-files limit: MQTT
sockets may take three quarters (headwater.mqtt.config.FD_SHARE), and the
last eighth stays for the event log, deliveries and the processes Headwater
runs. A larger --http-max-connections is lowered to fit, with a warning."""

EVICTION_SCAN: Final = 32
"""At the cap, how many of the connections waiting longest are considered for
eviction: the first that is not still receiving a response goes."""

SWEEPS_PER_TIMEOUT: Final = 4
"""How often the sweep runs, as a fraction of the shortest timeout (at most
once a second). The sweep also starts the clocks (a request costs no clock
reading), so a connection is closed at most half a timeout late."""

GUARDS_KEY: web.AppKey[dict[str, ConnectionGuard]] = web.AppKey("http_guards", dict)
"""The guards of an app's listeners, by listener, for ``/metrics``."""

_READ_CHUNK: Final = 64 * 1024
_TIMED_OUT: Final = web.RequestKey("headwater_timed_out", bool)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits of one HTTP listener (``headwater up --http-...``)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    @property
    def data_plane_connections(self) -> int:
        """Data-plane requests that may be in progress at once."""
        return max(1, self.max_connections - max(1, self.max_connections // ADMIN_RESERVE_SHARE))


# -- request bodies ---------------------------------------------------------------------


class PeerError(Exception):
    """The peer, not Headwater, did something wrong with its request."""


class BodyTooLarge(PeerError):
    """The body passed its limit (``size`` is the declared length, when there was one)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        what = f"{size} bytes" if size is not None else "the request body"
        super().__init__(f"{what} is over the limit of {limit} bytes")


class PeerAborted(PeerError):
    """The body ended before it was complete: the peer left, or its framing broke."""


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes of it, however it is framed.

    A declared Content-Length over the limit is refused before reading; a
    chunked body is read until it passes the limit and no further. Either way
    BodyTooLarge. A peer that closes the connection, or sends a body the
    parser cannot frame, gives PeerAborted and one throttled WARNING.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except (ConnectionError, web.RequestPayloadError, HttpProcessingError) as exc:
        if not request.get(_TIMED_OUT):  # the guard has said why it closed it
            peer_log.warning(
                "aborted",
                "HTTP: %s %s from %s: the request body ended after %d bytes (%s)",
                request.method,
                request.path,
                request.remote,
                size,
                _reason(exc),
            )
        raise PeerAborted(f"the request body ended after {size} bytes") from exc
    return b"".join(chunks)


def bearer_matches(request: web.BaseRequest, token: str) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <token>`` (RFC 6750),
    compared in constant time (the admin API's token, a Broker ingress's)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


BEARER_CHALLENGE: Final = 'Bearer realm="headwater"'
"""The ``WWW-Authenticate`` header of a 401 for a missing or wrong bearer token."""


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return text.strip().splitlines()[0]


class PeerLogger(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger (``AppRunner(logger=...)``) that tells peers from bugs.

    aiohttp logs every request it cannot parse with ``logger.exception``: a
    traceback per malformed request. Those (and connections lost while it
    answers) become one throttled WARNING; anything else is a handler's
    exception, Headwater's own bug, and keeps its traceback.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._peers_fault(args, kwargs):
            self.logger.exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs a bad method on a connection's first request at DEBUG
        # (TLS spoken to a plain HTTP port, a scanner): counted all the same.
        if not self._peers_fault(args, kwargs):
            self.logger.debug(msg, *args, **kwargs)

    @staticmethod
    def _peers_fault(args: tuple[object, ...], kwargs: dict[str, Any]) -> bool:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError | ConnectionError):
            return False
        peer_log.warning(
            "malformed",
            "HTTP: a malformed request from %s, answered %s: %s",
            args[0] if args else "a peer",
            getattr(exc, "code", 400) or 400,
            _reason(exc),
        )
        return True


# -- connections -------------------------------------------------------------------------


class _Connection:
    __slots__ = (
        "closing",
        "data_plane",
        "guard",
        "inner",
        "opened",
        "reads",
        "request",
        "seen_reads",
        "sending_since",
        "served",
        "transport",
        "waiting_since",
    )

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.reads = 0
        self.seen_reads = 0
        self.opened = guard.now()
        self.waiting_since: float | None = self.opened
        """Since when the connection has waited (for a request, or inside one for
        its body to move); None until the next sweep sees it, so that a request
        costs no clock reading."""
        self.sending_since: float | None = None
        self.request: web.BaseRequest | None = None
        self.data_plane = False
        self.served = False
        self.closing = False


class _GuardedProtocol(asyncio.Protocol):
    """Moves bytes and events to aiohttp's protocol, counting reads on the way."""

    __slots__ = ("connection",)

    def __init__(self, guard: ConnectionGuard) -> None:
        self.connection = _Connection(guard)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connection = self.connection
        connection.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        connection.inner = connection.guard.admit(connection)
        if connection.inner is not None:
            connection.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        connection.reads += 1
        if connection.inner is not None:
            connection.inner.data_received(data)

    def eof_received(self) -> bool | None:
        inner = self.connection.inner
        return inner.eof_received() if inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        connection = self.connection
        connection.guard.forget(connection)
        if connection.inner is not None:
            connection.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.connection.inner is not None:
            self.connection.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.connection.inner is not None:
            self.connection.inner.resume_writing()


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


def _writing(connection: _Connection) -> bool:
    """Whether a response is still going out (the peer has not read all of it yet)."""
    transport = connection.transport
    return transport is not None and transport.get_write_buffer_size() > 0


def _response(template: bytes, text: str) -> bytes:
    body = text.encode() + b"\n"
    return template % (len(body), body)


class ConnectionGuard:
    """Counts, times and caps the connections of one HTTP listener."""

    def __init__(
        self,
        limits: HttpLimits,
        *,
        data_plane: Callable[[web.BaseRequest], bool] = lambda request: False,
        name: str = "http",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limits = limits
        self.name = name
        self.server: Callable[[], asyncio.Protocol] | None = None
        """aiohttp's protocol factory (``runner.server``), set by GuardedSite."""
        self._data_plane = data_plane
        self._data_plane_limit = limits.data_plane_connections
        self.now: Callable[[], float] = clock or asyncio.get_running_loop().time
        """The clock the timeouts are measured on (the loop's)."""
        self._connections: dict[Any, _Connection] = {}  # aiohttp's protocol -> connection
        self._waiting: dict[_Connection, None] = {}  # not in a request; oldest first
        self._data_plane_requests = 0
        self.closed: dict[str, int] = dict.fromkeys(
            ("header-timeout", "body-timeout", "idle-timeout", "evicted", "refused"), 0
        )
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def data_plane_requests(self) -> int:
        return self._data_plane_requests

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory to give ``loop.create_server``."""
        return _GuardedProtocol(self)

    def admit(self, connection: _Connection) -> asyncio.Protocol | None:
        """aiohttp's protocol for a new connection, or None when it was refused."""
        if len(self._connections) >= self.limits.max_connections:
            oldest = next(
                (c for c in islice(self._waiting, EVICTION_SCAN) if not _writing(c)), None
            )
            if oldest is None:
                self._refuse(connection)
                return None
            self._close(
                oldest,
                "evicted",
                "HTTP listener %s: %d connections, its limit (--http-max-connections): "
                "closing the one waiting longest for a request to admit a new one",
                self.name,
                self.limits.max_connections,
            )
        assert self.server is not None, "serve through a GuardedSite"
        inner = self.server()
        self._connections[inner] = connection
        self._waiting[connection] = None
        return inner

    def _refuse(self, connection: _Connection) -> None:
        self.closed["refused"] += 1
        peer_log.warning(
            ("refused", self.name),
            "HTTP listener %s: %d connections, its limit (--http-max-connections), all "
            "inside a request: refusing new connections with 503",
            self.name,
            self.limits.max_connections,
        )
        assert connection.transport is not None
        connection.closing = True
        text = f"Headwater has {self.limits.max_connections} HTTP connections open, its limit"
        connection.transport.write(_response(_REFUSED, text))
        connection.transport.close()

    def forget(self, connection: _Connection) -> None:
        connection.closing = True
        if connection.inner is not None:
            self._connections.pop(connection.inner, None)
        self._waiting.pop(connection, None)
        self._end(connection)

    def _close(self, connection: _Connection, why: str, message: str = "", *args: object) -> None:
        """Close ``connection`` for reason ``why``, counted, and said (throttled) if ``message``."""
        self.closed[why] += 1
        if message:
            peer_log.warning((why, self.name), message, *args)
        if connection.request is not None:
            connection.request[_TIMED_OUT] = True  # read_body: the guard said why
        self.forget(connection)
        if connection.transport is not None:
            connection.transport.close()

    def _end(self, connection: _Connection) -> None:
        if connection.request is None:
            return
        connection.request = None
        connection.served = True
        connection.waiting_since = None
        if connection.data_plane:
            self._data_plane_requests -= 1
            connection.data_plane = False
        if not connection.closing:
            connection.seen_reads = connection.reads
            self._waiting[connection] = None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Marks the connection inside a request while the handler runs (install it first)."""
        # The hot path of every request: no clock reading, a few assignments.
        connection = self._connections.get(request.protocol)
        if connection is None or connection.closing:
            return await handler(request)  # type: ignore[no-any-return]
        data_plane = self._data_plane(request)
        if data_plane and self._data_plane_requests >= self._data_plane_limit:
            peer_log.warning(
                ("data-plane-cap", self.name),
                "HTTP listener %s: %d data-plane requests in progress, all it gives them "
                "(the rest is kept for the admin API): answering 503",
                self.name,
                self._data_plane_requests,
            )
            response = web.Response(
                status=503,
                text="too many requests in progress; try again\n",
                headers={"Retry-After": "1"},
            )
            response.force_close()
            return response
        if data_plane:
            self._data_plane_requests += 1
            connection.data_plane = True
        self._waiting.pop(connection, None)
        connection.request = request
        connection.sending_since = connection.waiting_since = None
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._end(connection)

    # -- the sweep ----------------------------------------------------------------------

    def start(self) -> None:
        shortest = min(
            self.limits.header_timeout, self.limits.body_timeout, self.limits.idle_timeout
        )
        interval = min(1.0, shortest / SWEEPS_PER_TIMEOUT)
        self._sweeper = asyncio.create_task(self._sweep_every(interval), name="http-guard")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # a bug of ours: say so, and keep guarding
                log.exception("HTTP listener %s: the connection sweep failed", self.name)

    def sweep(self) -> None:
        """Close the connections that overstayed a timeout."""
        now = self.now()
        limits = self.limits
        for connection in list(self._connections.values()):
            moved = connection.reads != connection.seen_reads
            connection.seen_reads = connection.reads
            request = connection.request
            waited = 0.0 if connection.waiting_since is None else now - connection.waiting_since
            if connection.waiting_since is None:
                connection.waiting_since = now
            if request is not None:
                # Inside a request: a body the handler waits for must keep coming.
                if moved or request.content.is_eof():
                    connection.waiting_since = now
                elif waited > limits.body_timeout:
                    self._close(
                        connection,
                        "body-timeout",
                        "HTTP: closed a connection from %s: its request body stalled for "
                        "more than %g s (--http-body-timeout)",
                        request.remote,
                        limits.body_timeout,
                    )
                continue
            if _writing(connection):
                connection.waiting_since = now  # a response still going out: not idle
                continue
            if moved and connection.sending_since is None:
                connection.sending_since = now  # the first bytes of a request
            if not connection.served:
                started: float | None = connection.opened  # a new connection owes a request
            else:
                started = connection.sending_since
            if started is not None and now - started > limits.header_timeout:
                self._time_out_headers(connection)
            elif started is None and waited > limits.idle_timeout:
                self._close(connection, "idle-timeout")

    def _time_out_headers(self, connection: _Connection) -> None:
        transport = connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if transport is not None:
            transport.write(_response(_TIMEOUT, "the request headers took too long"))
        self._close(
            connection,
            "header-timeout",
            "HTTP: closed a connection from %s: no complete request headers within %g s "
            "(--http-header-timeout)",
            peer[0] if isinstance(peer, tuple) else peer,
            self.limits.header_timeout,
        )


def guard_app(
    app: web.Application,
    limits: HttpLimits,
    *,
    data_plane: Callable[[web.BaseRequest], bool] = lambda request: False,
    clock: Callable[[], float] | None = None,
) -> ConnectionGuard:
    """A guard for ``app``'s listener: its middleware goes first, and ``/metrics`` finds it.

    Call before the runner's setup; serve with ``GuardedSite(runner, host,
    port, guard)`` and ``web.AppRunner(app, logger=PeerLogger())``.
    """
    guard = ConnectionGuard(limits, data_plane=data_plane, clock=clock)
    app.middlewares.insert(0, guard.middleware)  # first: a request counts from its start
    app[GUARDS_KEY] = {"http": guard}
    return guard


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through ``guard``.

    The guard's middleware must be the app's first (``app.middlewares.insert(0,
    guard.middleware)``, before ``runner.setup()``) for requests to count.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        assert runner.server is not None
        guard.server = runner.server
        self._host = host
        self._port = port
        self.guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.guard.name = f"{self._host}:{port}"
        self.guard.start()

    async def stop(self) -> None:
        await self.guard.stop()
        await super().stop()


# -- the process -------------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; the soft limit now in effect.

    The usual soft limit (1,024) is what a thousand idle sockets exhaust, at
    which point every listener refuses clients; the hard limit is what the
    administrator allows. An unlimited hard limit is taken as 1,048,576 (the
    Linux default of fs.nr_open).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = 1024 * 1024
    target = unlimited if hard == resource.RLIM_INFINITY else hard
    current = unlimited if soft == resource.RLIM_INFINITY else soft
    if current >= target:
        log.info("open files: limit %d", current)
        return current
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files: cannot raise the limit from %d to %d: %s", current, target, exc)
        return current
    log.info("open files: soft limit raised from %d to %d (the hard limit)", current, target)
    return target


def fit_to_open_files(limits: HttpLimits, open_files: int) -> HttpLimits:
    """``limits`` with max_connections at most an eighth of ``open_files``."""
    most = max(1, open_files // FILES_PER_CONNECTION)
    if limits.max_connections <= most:
        return limits
    log.warning(
        "--http-max-connections %d is more than an eighth of the open-files limit (%d): using %d",
        limits.max_connections,
        open_files,
        most,
    )
    return HttpLimits(most, limits.header_timeout, limits.body_timeout, limits.idle_timeout)


# -- metrics ------------------------------------------------------------------------------


def metric_families(guards: Mapping[str, ConnectionGuard] | None = None) -> Iterator[Metric]:
    """``/metrics``: peers' errors, and each guarded listener's connections."""
    errors = CounterMetricFamily(
        "headwater_http_peer_errors",
        "HTTP peers' mistakes by kind (aborted bodies, malformed requests, timeouts, caps).",
        labels=["kind"],
    )
    by_kind: dict[str, int] = {}
    for key, count in peer_log.counts.items():
        kind = str(key[0] if isinstance(key, tuple) else key)
        by_kind[kind] = by_kind.get(kind, 0) + count
    for kind, count in sorted(by_kind.items()):
        errors.add_metric([kind], count)
    yield errors
    if not guards:
        return
    connections = GaugeMetricFamily(
        "headwater_http_connections", "HTTP connections open.", labels=["listener"]
    )
    closed = CounterMetricFamily(
        "headwater_http_connections_closed",
        "HTTP connections Headwater closed or refused, by reason.",
        labels=["listener", "reason"],
    )
    for name, guard in sorted(guards.items()):
        connections.add_metric([name], guard.open_connections)
        for reason, count in guard.closed.items():
            closed.add_metric([name, reason], count)
    yield from (connections, closed)
