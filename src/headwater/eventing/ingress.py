"""The Broker (and Channel) ingress over HTTP, with Knative's status codes.

Brokers answer at ``POST /{namespace}/{broker}``; Channels, with the same
ingress under a prefix, at ``POST /channels/{namespace}/{channel}``.

How this works: an aiohttp handler that only parses and validates; the
Broker stores. The body is read up to the broker's limit (never more, however
it is framed: :func:`headwater.http_guard.read_body`), then decoded with the
CloudEvents HTTP binding (binary, structured or batched mode, decided by
Content-Type). The answer follows Knative's broker ingress:

- ``202`` once every event of the request is durable in the log;
- ``401`` with ``WWW-Authenticate: Bearer`` when the broker requires a bearer
  token (``token``: Headwater's ``headwater.dev/ingress-token`` annotation)
  and the request does not carry it, compared in constant time;
- ``400`` with the reason for anything that is not a valid CloudEvent (or a
  body that ends early: the peer left, which is one throttled warning, as
  every peer's mistake, never a traceback);
- ``404`` for an unknown broker (channel); ``405`` for methods other than POST
  (``OPTIONS`` gets ``200`` with ``Allow``, data-plane.md "HTTP Verbs", and
  says what a sender may use: ``Accept-Post`` lists the batched mode, the
  solicitation http-protocol-binding.md 1.3 asks for before a sender batches,
  and ``Accept-Encoding`` the request content codings read, RFC 7694 section 3);
- ``413`` over the broker's maximum event size;
- ``503`` with ``Retry-After`` when the log is unavailable or the broker saturated.

Bad input never produces a 500: decoding is pure, so any error it raises is
about the input and answered with 400.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, Protocol, Self

from aiohttp import web

from headwater import tracing
from headwater.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    from_http,
)
from headwater.eventing._fanout import Saturated
from headwater.http_guard import (
    BEARER_CHALLENGE,
    BodyTooLarge,
    PeerAborted,
    PeerLogger,
    bearer_matches,
    read_body,
)
from headwater.log import EventTooLarge, LogUnavailable, StreamNotFound
from headwater.tracing import Kind, Tracer
from headwater.tracing.flows import Ingest, context_of, decided, ingest

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "Acceptor",
    "Ingress",
    "IngressServer",
    "is_ingress_request",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
"""The largest batched-mode request body (each event in it still obeys the
broker's max event size). Bounds the memory one request can take."""

UNAVAILABLE_RETRY_AFTER: Final = 1
"""Seconds a producer is asked to wait when the log is unavailable."""

MAX_REASON_CHARS: Final = 1024
"""An error answer quotes at most this much of the reason (which may quote the input)."""

_ALLOW: Final = "POST, OPTIONS"
_CAPABILITIES: Final = {
    "Allow": _ALLOW,
    # Structured, batched, and binary mode (any media type).
    "Accept-Post": f"{CONTENT_TYPE}, {BATCH_CONTENT_TYPE}, */*",
    # aiohttp decodes these request bodies, bounded by the same limits as plain ones.
    "Accept-Encoding": "gzip, deflate",
}


def is_ingress_request(request: web.BaseRequest) -> bool:
    """Whether ``request`` is a POST to a Broker's ingress, ``/{namespace}/{name}``."""
    return request.method == "POST" and request.path.count("/") == 2


class Acceptor(Protocol):
    """What the ingress delivers to: a Broker (or a Channel)."""

    max_event_size: int

    async def accept(self, events: Sequence[CloudEvent]) -> list[int]: ...


Lookup = Callable[[str, str], Acceptor | None]
"""``lookup(namespace, name)``: the broker at that path, or None."""

TokenLookup = Callable[[str, str], str | None]
"""``token(namespace, name)``: the bearer token the broker at that path requires, or None."""


class Ingress:
    """The HTTP ingress of every Broker that ``lookup`` knows; ``app()`` is the aiohttp app.

    ``what`` names what ``lookup`` finds in answers ("broker", "channel");
    ``token``, when given, says which ones require a bearer token.
    """

    def __init__(
        self,
        lookup: Lookup,
        *,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        what: str = "broker",
        token: TokenLookup | None = None,
    ) -> None:
        self._lookup = lookup
        self._token = token
        self.max_batch_bytes = max_batch_bytes
        self.what = what
        self.responses: Counter[int] = Counter()

    def app(self) -> web.Application:
        # The body limit is enforced per broker in the handler, not by aiohttp.
        app = web.Application(client_max_size=max(self.max_batch_bytes, 1) + 1)
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_route("*", prefix + "/{namespace}/{name}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        self.responses[response.status] += 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        # A SERVER span covers the request from its arrival (the body read too).
        arrived = time.time_ns() if tracing.tracer is not None else 0
        if request.method == "OPTIONS":
            return web.Response(status=200, headers=_CAPABILITIES)
        if request.method != "POST":
            return _text(405, f"method {request.method} not allowed; use POST", Allow=_ALLOW)
        namespace = request.match_info["namespace"]
        name = request.match_info["name"]
        required = self._token(namespace, name) if self._token is not None else None
        if required and not bearer_matches(request, required):
            # RFC 6750 3: a request without (or with a wrong) token gets the challenge.
            return _text(
                401,
                f"{self.what} {namespace}/{name} needs its bearer token",
                **{"WWW-Authenticate": BEARER_CHALLENGE},
            )
        broker = self._lookup(namespace, name)
        if broker is None:
            return _text(404, f"{self.what} {namespace}/{name} not found")

        is_batch = request.content_type == BATCH_CONTENT_TYPE
        limit = (
            max(self.max_batch_bytes, broker.max_event_size) if is_batch else broker.max_event_size
        )
        try:
            body = await read_body(request, limit)
        except BodyTooLarge as exc:
            return _too_large(exc.size, limit, self.what)
        except PeerAborted as exc:
            return _text(400, str(exc))  # to no one, most likely: the peer has gone

        try:
            decoded = from_http(request.headers.items(), body)
        except InvalidEvent as exc:
            return _text(400, f"invalid CloudEvent: {exc}")
        except Exception as exc:  # decoding is pure: whatever it raises is about the input
            log.debug("ingress: undecodable request to %s/%s", namespace, name, exc_info=True)
            return _text(400, f"invalid CloudEvent: {type(exc).__name__}: {exc}")
        events = decoded if isinstance(decoded, list) else [decoded]
        traced: Ingest | None = None
        if tracing.tracer is not None:
            events, traced = self._trace(tracing.tracer, request, events, arrived)
        with decided():  # the Broker takes no second head decision
            response = await self._accept(broker, events, namespace, name)
        if traced is not None:
            traced.end(None if response.status == 202 else f"HTTP {response.status}")
        return response

    def _trace(
        self, tracer: Tracer, request: web.Request, events: list[CloudEvent], arrived: int
    ) -> tuple[list[CloudEvent], Ingest | None]:
        """The events with their trace context, under the request's ``traceparent``
        (``arrived``: when the request came, ns; 0 if tracing was off then)."""
        # The header is this hop's context; a structured event's own extension is
        # its origin's (distributed-tracing.md), the parent only without a header.
        incoming = context_of(list(request.headers.items()))
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        target = f"{request.match_info['namespace']}/{request.match_info['name']}"
        return ingest(
            tracer,
            events,
            [incoming] * len(events),
            name=f"POST {route}",
            kind=Kind.SERVER,
            start=arrived or time.time_ns(),
            attributes={
                "http.request.method": "POST",
                "http.route": route,
                "url.path": request.path,
                f"headwater.{self.what}": target,
            },
        )

    async def _accept(
        self, broker: Acceptor, events: list[CloudEvent], namespace: str, name: str
    ) -> web.Response:
        try:
            await broker.accept(events)
        except EventTooLarge as exc:
            return _text(413, str(exc))
        except Saturated as exc:
            return _text(503, str(exc), **{"Retry-After": str(exc.retry_after)})
        except StreamNotFound:
            return _text(404, f"{self.what} {namespace}/{name} is not running")
        except LogUnavailable as exc:
            log.warning("ingress %s/%s: log unavailable: %s", namespace, name, exc)
            return _text(
                503,
                f"event log unavailable: {exc}",
                **{"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
            )
        return web.Response(status=202)


def _text(status: int, text: str, **headers: str) -> web.Response:
    # The reason may quote the input (bounded here): undecodable bytes arrive as
    # lone surrogates, which are escaped rather than allowed to fail the answer.
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS] + "..."
    body = (text + "\n").encode("utf-8", "backslashreplace")
    return web.Response(
        status=status,
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers=headers or None,
    )


def _too_large(size: int | None, limit: int, owner: str = "broker") -> web.Response:
    what = f"{size} bytes" if size is not None else "the request body"
    return _text(413, f"{what} is over the {owner}'s limit of {limit} bytes")


class IngressServer:
    """Serve an aiohttp app on a TCP port (0: pick one); ``port`` is known after entering."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(app, access_log=None, logger=PeerLogger())
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()
