"""nats-py's client, with subscriptions whose messages go straight to a function.

How this works: nats-py hands every message of a subscription with a
callback to a task of the subscription's own, through a queue: per message
a queue put, a task switch, a queue get and an awaited callback, besides
JetStream flow-control checks that plain subscriptions never need. On
Headwater's hot path (the PubAcks of every append, the messages a log
reader pulls) that is about a fifth of what a message costs the node
(benchmarks/cluster.py: 3-4% of a mesh node's CPU per event).

:func:`connect` makes a :class:`Client`, and :func:`subscribe` a
subscription whose messages, status messages included, are handed to a
plain function from the client's read loop, in the order they arrive, as
nats-py's own ``Msg`` (its ``ack``/``nak`` work as usual). The function must
not block and should not raise (what it raises is reported to the client's
error callback, like a callback's error in nats-py). On any other client
(a test's plain nats-py one), :func:`subscribe` falls back to an ordinary
callback subscription calling the same function.

It overrides ``Client._process_msg``, an internal method of nats-py (pinned
in the lock file; tests/integration/log/test_natsclient.py checks its signature and the
behaviour, so an upgrade that changes it fails there first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as _NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Client", "Handler", "connect", "subscribe"]

Handler = Callable[[Msg], None]


class Client(_NatsClient):
    """A nats-py client that can hand a subscription's messages to a plain function."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Handler] = {}

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed meanwhile
            del self._direct[sid]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        parsed = await self._process_headers(headers) if headers else None
        message = self._build_message(sid, subject, reply, data, parsed)
        try:
            handler(message)
        except Exception as exc:
            await self._error_cb(exc)


async def connect(servers: str | list[str], **options: Any) -> Client:
    """A connected :class:`Client` (``nats.connect`` with this client class)."""
    client = Client()
    await client.connect(servers, **options)
    return client


async def subscribe(nc: Any, subject: str, handler: Handler) -> Subscription:
    """Subscribe ``handler`` to ``subject``: called from the read loop on a
    :class:`Client`, from an ordinary callback on any other nats-py client."""
    if not isinstance(nc, Client):

        async def callback(message: Msg) -> None:
            handler(message)

        fallback: Subscription = await nc.subscribe(subject, cb=callback)
        return fallback
    sub = await nc.subscribe(subject)
    nc._direct[sub._id] = handler
    # Anything that came before the handler was in place waits in nats-py's queue.
    while not sub._pending_queue.empty():
        handler(sub._pending_queue.get_nowait())
    return sub
