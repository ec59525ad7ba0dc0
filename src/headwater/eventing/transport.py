"""How an HTTP delivery's POST is made: one interface, one adapter per HTTP client.

How this works: :class:`~headwater.eventing.http.HttpSink` encodes an event
(binary or structured CloudEvent), hands the request to a
:class:`DeliveryTransport` and reads the :class:`Response` back; what the
response means (a reply, a retryable failure, a dead letter) is the sink's
and the Deliverer's business, the same whichever transport carried it. A
transport is chosen once, by whoever builds the sinks (the runtime: one per
process), and every HttpSink of that process uses it; nothing on the event
path asks which kind it has.

Every transport keeps the same rules (``tests/integration/eventing/
test_http_sink.py`` runs each test over the three): redirects are not
followed, no Content-Type is added, the response body is read up to a little
over ``max_body`` bytes, and a request that got no usable response (refused,
reset, malformed, a bad URL, a worker gone) raises :class:`TransportError`:
the event may or may not have arrived, so the attempt is retryable.

Why three (see docs/architecture.md, "Decisions"):

- :class:`~headwater.eventing._http1.Http1Client`: pooled keep-alive
  HTTP/1.1 with httptools' parser, about 17 us of CPU per POST where
  aiohttp's client took 75-95 us (``benchmarks/mqtt_to_http.py`` and
  py-spy); with it the MQTT-to-HTTP pipeline went from about 7.5k to
  10.8k-11.6k events/s on two cores. ``headwater up --no-http-worker``.
- :class:`~headwater.eventing.http_worker.HttpWorker`: the same client in a
  process of its own, so that the HTTP work uses a second core; the event
  loop's own cost per delivery falls to 5-10 us (from about 70 us with
  aiohttp in process), and PUBACKs go out 10-15% sooner under load for
  44 MB more memory. The default of ``headwater up``.
- :class:`~headwater.eventing._aiohttp.AiohttpTransport`: aiohttp's client,
  which the HTTP API sinks (InfluxDB) use anyway and which takes per-sink
  TLS settings (client certificates, private CAs) through its connector;
  the HttpSink kind and an ``HttpSink`` built without a transport (the
  library's default) use it.

Http1Client and HttpWorker implement this interface themselves (their
``post`` is the interface's), so the fast paths pay for no wrapper;
aiohttp's session gets the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple, Protocol

__all__ = [
    "DEFAULT_POOL_SIZE",
    "KEEPALIVE_TIMEOUT",
    "MAX_RESPONSE_BYTES",
    "DeliveryTransport",
    "Response",
    "TransportError",
]

DEFAULT_POOL_SIZE: Final = 256
"""Connections kept open across all origins, by every transport.
Each in-flight delivery holds one; at the default unordered max in-flight (100)
one busy Trigger can use them all, and further requests wait for a free
connection (backpressure, not failure)."""

KEEPALIVE_TIMEOUT: Final = 30.0
"""Seconds after which an idle keep-alive connection is closed."""

MAX_RESPONSE_BYTES: Final = 1024 * 1024 + 64 * 1024
"""The largest response body a delivery reads: a reply is one event, which a broker
would refuse above 1 MiB anyway; error bodies are truncated to 1 KiB later."""


class TransportError(ConnectionError):
    """No usable response came: refused, reset, malformed, or the request could not be made."""


class Response(NamedTuple):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    """As received, in order (names as the server spelled them)."""
    body: bytes
    """Cut a little over the ``max_body`` asked for: the caller checks the size."""


class DeliveryTransport(Protocol):
    """Makes a delivery's POST; see the module docstring for the rules all keep."""

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, max_body: int
    ) -> Response:
        """The response to a POST of ``body``; raises :class:`TransportError` without one."""
        ...

    async def close(self) -> None:
        """Close the connections (a transport shared by sinks is closed by its owner)."""
        ...
