"""The byte streams under MQTT connections: TCP, TLS, mTLS and WebSocket listeners.

How this works: a listener accepts network connections and hands each to the
broker as a :class:`Link` (read, write, drain, close) together with the
:class:`~headwater.mqtt.config.Listener` it came in on and, for mTLS, the
identity from the client certificate. :class:`StreamLink` wraps an asyncio
stream (TCP, TLS); :class:`WebSocketLink` carries MQTT in binary WebSocket
frames (MQTT 5.0 §6 / 3.1.1 §6, subprotocol ``mqtt``) through aiohttp, one
frame per batch of writes. Nothing here knows MQTT beyond the subprotocol.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from headwater.mqtt.config import Listener, PeerCertificate

__all__ = [
    "READ_SIZE",
    "WS_CLOSE_TIMEOUT",
    "Bound",
    "Link",
    "StreamLink",
    "WebSocketLink",
    "listen",
    "peer_certificate",
]

logger = logging.getLogger("headwater.mqtt.broker")

#: Bytes asked of the transport per read.
READ_SIZE = 256 * 1024

#: Seconds a WebSocket close handshake may take before the socket is dropped.
WS_CLOSE_TIMEOUT = 2.0


class Link(Protocol):
    """The byte stream under one connection."""

    peer: str

    async def read(self) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def buffered(self) -> int: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class StreamLink:
    __slots__ = ("_reader", "_transport", "_writer", "peer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def read(self) -> bytes:
        return await self._reader.read(READ_SIZE)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        transport = self._transport
        # A peer that stopped reading would keep a graceful close waiting for
        # its buffer forever: abort instead (the bytes would never arrive anyway).
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


class WebSocketLink:
    """MQTT over WebSocket (MQTT 5.0 §6 / 3.1.1 §6): binary frames only.

    ``write`` collects bytes; :meth:`pump` (a task beside the connection) sends
    them, one frame per batch, and does the close handshake once closed.
    ``transport`` is the socket under the WebSocket: :meth:`close` aborts it
    when a peer that stopped reading keeps a send waiting, as
    :meth:`StreamLink.close` does.
    """

    __slots__ = (
        "_closed",
        "_drained",
        "_pending",
        "_sending",
        "_size",
        "_transport",
        "_wake",
        "_ws",
        "peer",
    )

    def __init__(self, ws: Any, peer: str, transport: asyncio.Transport | None = None) -> None:
        self._ws = ws
        self.peer = peer
        self._transport = transport
        self._pending: list[bytes] = []
        self._size = 0
        self._sending = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False

    async def read(self) -> bytes:
        while not self._closed:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                return bytes(msg.data)
            # [MQTT-6.0.0-1] MQTT travels in binary frames; a text frame (or the
            # end of the socket) closes the connection.
            if msg.type not in (WSMsgType.PING, WSMsgType.PONG):
                return b""
        return b""

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._pending.append(data)
        self._size += len(data)
        self._drained.clear()
        self._wake.set()

    def buffered(self) -> int:
        return self._size

    async def drain(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        transport = self._transport
        # A peer that stopped reading keeps ``pump`` waiting in ``send_bytes`` (and
        # the close handshake behind it) forever, and with it this connection:
        # abort instead, as StreamLink does (the bytes would never arrive anyway).
        # Bytes only written here, not yet sent, still go out before the close.
        if transport is not None and (self._sending or transport.get_write_buffer_size()):
            transport.abort()

    async def pump(self) -> None:
        """Send what was written, one frame per batch, until closed; then close."""
        ws = self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._closed:
                    await self._send()
                    continue
                # The last bytes (a DISCONNECT, say): a peer that stops reading
                # just now holds them no longer than a close handshake may take.
                async with asyncio.timeout(WS_CLOSE_TIMEOUT):
                    await self._send()
                return
        except TimeoutError:
            self._abort()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._closed = True
            self._drained.set()
            try:
                # aiohttp bounds the wait for the peer's close frame (WS_CLOSE_TIMEOUT),
                # not its own write of ours before that: bound the whole handshake.
                async with asyncio.timeout(2 * WS_CLOSE_TIMEOUT):
                    await ws.close()
            except TimeoutError:
                self._abort()

    async def _send(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._sending = True
            try:
                # [MQTT-6.0.0-2] a frame may hold several (or part of a) packets.
                await self._ws.send_bytes(data)
            finally:
                self._sending = False
            self._size -= len(data)
        if not self._pending:
            self._drained.set()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate | None:
    """The client's certificate, when the TLS handshake verified one."""
    if ssl_object is None:
        return None
    fields: Any = ssl_object.getpeercert()
    der = ssl_object.getpeercert(binary_form=True)
    if not fields or der is None:
        return None
    return PeerCertificate(der, fields)


Serve = Callable[[Link, Listener, "PeerCertificate | None"], Awaitable[None]]
"""What a listener calls for each accepted connection: ``serve(link, listener, certificate)``."""


@dataclass(slots=True)
class Bound:
    """A listener once bound: where (the real port when configured with port 0)."""

    listener: Listener
    host: str
    port: int
    server: Any = None
    runner: Any = None

    def close(self) -> None:
        """Stop accepting (connections under way go on)."""
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1)
            except Exception:  # a stuck close must not hold the shutdown
                logger.debug("listener %s: close did not finish", self.listener.label)


async def listen(
    listener: Listener, serve: Serve, *, max_packet_size: int, stopping: Callable[[], bool]
) -> Bound:
    """Bind ``listener``; every accepted connection is handed to ``serve``."""
    if listener.websocket:
        return await _listen_websocket(listener, serve, max_packet_size, stopping)
    bound = Bound(listener, listener.host, listener.port)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        await serve(StreamLink(reader, writer), bound.listener, peer_certificate(ssl_object))

    bound.server = await asyncio.start_server(
        on_client, listener.host, listener.port, ssl=listener.ssl, backlog=4096
    )
    # No await from here on: no connection is served before the real port is known.
    bound.host, bound.port = bound.server.sockets[0].getsockname()[:2]
    bound.listener = replace(listener, port=bound.port)
    logger.info("MQTT listening on %s", bound.listener.label)
    return bound


async def _listen_websocket(
    listener: Listener, serve: Serve, max_packet_size: int, stopping: Callable[[], bool]
) -> Bound:
    bound = Bound(listener, listener.host, listener.port)

    async def handler(request: web.Request) -> web.StreamResponse:
        # [MQTT-6.0.0-3/4] the client offers and the server selects "mqtt".
        ws = web.WebSocketResponse(
            protocols=("mqtt",), max_msg_size=max_packet_size + 5, timeout=WS_CLOSE_TIMEOUT
        )
        await ws.prepare(request)
        if ws.ws_protocol != "mqtt":
            await ws.close(code=1002, message=b"subprotocol mqtt required")
            return ws
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        link = WebSocketLink(ws, request.remote or "?", transport)
        certificate = peer_certificate(ssl_object)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(link.pump())
            try:
                await serve(link, bound.listener, certificate)
            finally:
                link.close()
        if stopping() and transport is not None:
            # Shutting down: the WebSocket close is done; do not leave a TLS
            # close_notify exchange pending past the end of the event loop.
            transport.abort()
        return ws

    app = web.Application()
    app.router.add_get(listener.path, handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listener.host, listener.port, ssl_context=listener.ssl)
    await site.start()
    bound.runner = runner
    bound.host, bound.port = runner.addresses[0][:2]
    bound.listener = replace(listener, port=bound.port)
    logger.info("MQTT over WebSocket on %s%s", bound.listener.label, listener.path)
    return bound
