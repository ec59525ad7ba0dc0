"""The MQTT broker of a mesh: several brokers, one per node, that behave as one, over NATS.

How this works: an embedded broker spans the nodes of a mesh with a
:class:`~headwater.cluster.mqtt.router.NatsRouter` (its ``router``: who
receives a message, anywhere) and a
:class:`~headwater.cluster.mqtt.sessions.MeshSessions` (its ``store``:
sessions and retained messages, everywhere), which
:class:`~headwater.cluster.mqtt.span.MqttMesh` pairs. Both use what
:class:`MeshLink` holds for one MqttBrokerSource of the mesh:

- two NATS connections: ``nc`` (no echo: a node never gets its own
  publishes back, since it delivers to its own clients directly) for
  publishing, interest subscriptions and JetStream, and ``queues`` (with
  echo) for the queue groups of shared subscriptions, so that the
  publishing node's own members are chosen too;
- the subject prefix ``<namespace>.mqtt.<source>`` under which topics are
  subjects (:mod:`headwater.cluster.mqtt.subjects`): ``.m.`` for QoS 0
  messages (core NATS), ``.s.`` for QoS 1/2 ones (captured by the source's
  JetStream stream, and seen by core subscribers too);
- the stream (interest retention: a message is kept while a persistent
  session's consumer still wants it), and two KV buckets of the mesh's
  state store: sessions and retained messages.

Messages travel as an envelope (:func:`encode`/:func:`decode`): one line of
JSON with the MQTT attributes, the publishing node and a message id, then
the payload as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from headwater import natsclient
from headwater.mqtt.router import RoutingUnavailable
from headwater.mqtt.session import Message
from headwater.state import Bucket, StateStore

__all__ = [
    "DEFAULT_QUEUE_AGE",
    "DEFAULT_QUEUE_BYTES",
    "MeshLink",
    "MeshUnavailable",
    "decode",
    "encode",
    "kv_key",
    "token",
]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_AGE: Final = 7 * 86400.0
"""Seconds a QoS 1/2 message waits at most for an offline persistent session (a week)."""

DEFAULT_QUEUE_BYTES: Final = 1024 * 1024 * 1024
"""Bytes of QoS 1/2 messages kept for offline sessions, over the whole source (1 GiB):
past it the oldest go first (a sleeping fleet cannot fill the NATS servers' disks)."""

PUBLISH_TIMEOUT: Final = 5.0
"""Seconds a QoS 1/2 message waits for JetStream to store it before its publisher
is told to resend (MQTT 5: PUBACK 0x80; 3.1.1: no PUBACK)."""

_NL: Final = 10  # b"\n"
_ERR_STREAM_NAME_IN_USE: Final = 10058


class PubAcks:
    """JetStream PubAcks for publishes made with ``nc.publish(..., reply=)``: one wildcard
    inbox, one future per publish (cheaper than nats-py's request per message)."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[int]] = {}
        self._prefix = ""
        self._tokens = itertools.count()
        self._sub: Any = None

    async def open(self, nc: Any) -> None:
        self._prefix = nc.new_inbox() + "."
        self._sub = await natsclient.subscribe(nc, self._prefix + "*", self._arrived)

    def expect(self) -> tuple[str, asyncio.Future[int]]:
        reply = f"{self._prefix}{next(self._tokens)}"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._futures[reply] = future
        return reply, future

    def forget(self, reply: str) -> None:
        future = self._futures.pop(reply, None)
        if future is not None and not future.done():
            future.cancel()

    def fail_all(self, why: str) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(MeshUnavailable(why))

    def _arrived(self, message: Any) -> None:
        future = self._futures.pop(message.subject, None)
        if future is None or future.done():
            return
        headers = message.headers
        if headers and headers.get("Status") == "503":
            future.set_exception(MeshUnavailable("no JetStream stream answers (503)"))
            return
        try:
            answer = orjson.loads(message.data)
            if "error" in answer:
                future.set_exception(MeshUnavailable(f"JetStream refused: {answer['error']}"))
            else:
                future.set_result(int(answer["seq"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            future.set_exception(MeshUnavailable(f"unreadable PubAck: {exc}"))


class MeshUnavailable(RoutingUnavailable):
    """NATS cannot take a message (or a session change) now; nothing was acknowledged."""


def token(text: str) -> str:
    """``text`` (a client id) as one NATS subject token / consumer name part: a hash."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_KV_PLAIN: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_")


def kv_key(text: str) -> str:
    """``text`` (a topic, a client id) as a KV key: ``=XX`` for each byte outside the
    characters KV keys allow plainly; a hash for what would be too long."""
    encoded = "".join(chr(b) if b in _KV_PLAIN else f"={b:02X}" for b in text.encode())
    if not encoded or len(encoded) > 200:
        return "h/" + hashlib.sha256(text.encode()).hexdigest()
    return encoded


def encode(message: Message, node: str, msg_id: str) -> bytes:
    """A message as it travels between nodes (see the module docstring): its stored form
    without the payload, the node and the id, on one line, then the payload as is."""
    head = message._replace(payload=b"").to_json()
    head["n"] = node
    head["i"] = msg_id
    return orjson.dumps(head) + b"\n" + message.payload


def decode(data: bytes) -> tuple[Message, str, str]:
    """``(message, publishing node, message id)`` from an envelope; ValueError if it is none."""
    end = data.find(_NL)
    if end < 0:
        raise ValueError("not a Headwater MQTT envelope")
    head = orjson.loads(data[:end])
    message = Message.from_json(head)._replace(payload=bytes(data[end + 1 :]))
    return message, str(head["n"]), str(head["i"])


class MeshLink:
    """What the router and the session store of one MqttBrokerSource share (see above)."""

    def __init__(
        self,
        *,
        connect: Callable[[str, bool], Awaitable[Any]],
        state: StateStore,
        node: str,
        namespace: str,
        source: str,
        replicas: int,
        max_message_size: int,
        live_nodes: Callable[[], Awaitable[set[str]]],
        lease: Callable[[str], Any],
        queue_age: float = DEFAULT_QUEUE_AGE,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self._connect = connect
        self.state = state
        self.node = node
        self.node_token = token(node)
        self.source = source
        self.source_token = token(source)[:12]
        self.prefix = f"{namespace}.mqtt.{self.source_token}"
        self.stream = f"{namespace}_mqtt_{self.source_token}"
        self.bucket_prefix = f"mqtt_{self.source_token}"
        self.replicas = replicas
        self.max_message_size = max_message_size
        self.live_nodes = live_nodes
        self.lease = lease
        self.queue_age = queue_age
        self.queue_bytes = queue_bytes
        self.nc: Any = None
        self.queues: Any = None
        self.js: Any = None
        self.sessions: Bucket | None = None
        self.retained: Bucket | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"{self.node_token[:8]}{secrets.token_hex(4)}"

    def new_id(self) -> str:
        return f"{self._id_prefix}.{next(self._ids)}"

    @property
    def live(self) -> str:
        """Subject prefix of QoS 0 messages."""
        return f"{self.prefix}.m"

    @property
    def stored(self) -> str:
        """Subject prefix of QoS 1/2 messages (the stream's)."""
        return f"{self.prefix}.s"

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def open(self) -> None:
        self.nc = await self._connect("mqtt", True)
        self.queues = await self._connect("mqtt shared", False)
        self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT)
        config = api.StreamConfig(
            name=self.stream,
            description=f"Headwater MQTT messages of {self.source} (QoS 1/2, for persistent "
            "sessions)",
            subjects=[f"{self.stored}.>"],
            retention=api.RetentionPolicy.INTEREST,
            discard=api.DiscardPolicy.OLD,
            max_age=self.queue_age,
            max_bytes=self.queue_bytes,
            max_msg_size=self.max_message_size + 4096,
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
        )
        try:
            try:
                await self.js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                        raise
                    # created by another node meanwhile
        except (TimeoutError, nats.errors.Error) as exc:
            raise MeshUnavailable(f"cannot create the MQTT stream {self.stream}: {exc}") from exc
        self.sessions = await self.state.bucket(f"{self.bucket_prefix}_sessions")
        self.retained = await self.state.bucket(f"{self.bucket_prefix}_retained")

    async def close(self) -> None:
        for nc in (self.nc, self.queues):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        self.nc = self.queues = None
