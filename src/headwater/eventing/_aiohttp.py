"""aiohttp's client as a :class:`~headwater.eventing.transport.DeliveryTransport`.

How this works: :func:`new_session` makes a ClientSession tuned for
deliveries (pooled keep-alive connections, no cookies, no session-wide
timeout: the Deliverer times each attempt); :class:`AiohttpTransport` POSTs
through one with the rules every transport keeps (no redirects followed, no
Content-Type added, the body read a little over ``max_body``) and turns
aiohttp's errors into :class:`~headwater.eventing.transport.TransportError`.
Why this transport exists beside the leaner two: see
:mod:`headwater.eventing.transport`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp

from headwater.eventing.transport import (
    DEFAULT_POOL_SIZE,
    KEEPALIVE_TIMEOUT,
    Response,
    TransportError,
)

__all__ = ["AiohttpTransport", "new_session"]


def new_session(
    pool_size: int = DEFAULT_POOL_SIZE, *, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A ClientSession tuned for delivery: pooled keep-alive connections, no cookies.

    ``ssl_context``: TLS settings of the pool's connections (the system's CAs
    without one).
    """
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        enable_cleanup_closed=False,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Timeouts are applied per attempt by the Deliverer (DeliverySpec.timeout).
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
    )


class AiohttpTransport:
    """POSTs through an aiohttp session; ``close`` closes it only if ``owned``."""

    def __init__(self, session: aiohttp.ClientSession, *, owned: bool = False) -> None:
        self.session = session
        self.owned = owned

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, max_body: int
    ) -> Response:
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                # An event without datacontenttype must not gain one in transit.
                skip_auto_headers=("Content-Type",),
                allow_redirects=False,
            ) as response:
                payload = await _read_bounded(response.content, max_body)
                return Response(
                    response.status,
                    response.reason or "",
                    list(response.headers.items()),
                    payload,
                )
        except (aiohttp.ClientError, OSError) as exc:
            # No usable response (refused, reset, DNS, malformed HTTP).
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self.owned:
            await self.session.close()

    def __repr__(self) -> str:
        return f"AiohttpTransport(owned={self.owned})"


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, stopping once more than ``limit`` bytes arrived (the caller checks the size)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
