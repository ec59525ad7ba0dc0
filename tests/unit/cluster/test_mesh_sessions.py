"""MQTT sessions of a mesh, claimed and handed off, on an in-memory bucket and a fake JetStream.

The races here need one node only: a connection that ends while the same client
connects again, and a Clean Start whose old consumers share their names with the
new session's. The mesh suites (tests/mesh, tests/integration/mqtt/test_mqtt_mesh.py)
run the same code on real NATS servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from typing import Any

import orjson

from headwater.cluster.mqtt.session import MeshSession, read_doc
from headwater.cluster.mqtt.sessions import PULL_LOST_AFTER, MeshSessions
from headwater.mqtt.session import Subscription
from headwater.state import Bucket
from headwater.state.memory import MemoryStore
from tests.helpers import wait_until


class _Js:
    """The JetStream calls of the session store: consumers by name, each call a round trip."""

    def __init__(self) -> None:
        self.consumers: set[str] = set()

    async def add_consumer(self, stream: str, config: Any) -> None:
        await asyncio.sleep(0)
        self.consumers.add(config.durable_name)

    async def delete_consumer(self, stream: str, name: str) -> None:
        await asyncio.sleep(0.01)  # slower than a create: the old drop used to come last
        self.consumers.discard(name)


class _Sub:
    async def unsubscribe(self) -> None:
        return None


class _Nc:
    is_connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def subscribe(self, subject: str, cb: Any = None, queue: str = "") -> _Sub:
        return _Sub()

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        self.published.append((subject, data))


class _Router:
    def attach(self, client_id: str, session: Any) -> None: ...

    def detach(self, client_id: str, session: Any) -> None: ...

    def wait(self, client_id: str, work: Any) -> None: ...

    def pending(self, client_id: str) -> None:
        return None


class _SlowHandOff:
    """A bucket whose first write of a handed-off document (node None) is slow."""

    def __init__(self, inner: Bucket) -> None:
        self.inner = inner
        self.started = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update(self, key: str, value: bytes, expected: int) -> int:
        if orjson.loads(value).get("node") is None and not self.started.is_set():
            self.started.set()
            await asyncio.sleep(0.05)
        return await self.inner.update(key, value, expected)


async def _sessions(bucket: Any) -> tuple[MeshSessions, _Js]:
    js = _Js()
    link = types.SimpleNamespace(
        sessions=bucket,
        node="n1",
        node_token="t1",
        prefix="hw.mqtt.x",
        stored="hw.mqtt.x.s",
        stream="hw_mqtt_x",
        nc=_Nc(),
        js=js,
    )
    sessions = MeshSessions(link)  # type: ignore[arg-type]
    sessions.router = _Router()  # type: ignore[assignment]
    return sessions, js


def _subscriptions(count: int) -> dict[str, Subscription]:
    return {f"t/{i}": Subscription(f"t/{i}", 1, match_filter=f"t/{i}") for i in range(count)}


async def _subscribed(sessions: MeshSessions, filters: int) -> MeshSession:
    """Client c1 connected with a persistent session, subscribed to ``filters`` QoS 1
    filters (their consumers made, as before its SUBACK)."""
    await sessions.claim("c1", False, "u", None)
    session = sessions.new_session("c1")
    session.expiry_interval = 3600
    session.subscriptions = _subscriptions(filters)
    await sessions.subscriptions_changed("c1")
    return session


async def test_a_reconnection_during_the_hand_off_keeps_its_claim_and_its_will() -> None:
    bucket = _SlowHandOff(await MemoryStore().bucket("sessions"))
    sessions, _ = await _sessions(bucket)
    await sessions.claim("c1", False, "u", None)
    first = sessions.new_session("c1")
    first.expiry_interval = 3600
    assert sessions.hand_off(first, {"message": {"topic": "old/will"}, "delay": 30}, 123.0)
    await bucket.started.wait()  # the hand-off read the document; its write is on the way
    await sessions.claim("c1", False, "u", {"message": {"topic": "new/will"}, "delay": 0})
    claim = sessions.claimed["c1"]
    await asyncio.gather(*sessions._writes)

    doc = read_doc(await bucket.get(sessions._key("c1")))
    assert doc["node"] == "n1"  # not handed off: the client is connected here
    assert doc["epoch"] == claim[1]
    assert doc["will"] == {"message": {"topic": "new/will"}, "delay": 0}
    assert doc["will_at"] is None and doc["disc"] is None
    assert sessions.claimed.get("c1") == claim  # takeovers elsewhere are still watched


async def test_a_clean_start_deletes_the_old_consumers_before_the_new_session_subscribes() -> None:
    bucket = await MemoryStore().bucket("sessions")
    sessions, js = await _sessions(bucket)
    old = await _subscribed(sessions, 3)
    assert len(js.consumers) == 3

    # MQTT 5 Clean Start 1 with a Session Expiry: the broker discards the old session
    # and makes a new one; the device subscribes again at once (same filters).
    await sessions.claim("c1", True, "u", None)
    sessions.dropped(old)
    new = sessions.new_session("c1")
    new.expiry_interval = 3600
    new.subscriptions = _subscriptions(3)
    await sessions.subscriptions_changed("c1")
    await asyncio.gather(*sessions._writes)

    assert set(new.consumers) == js.consumers and len(js.consumers) == 3


async def test_a_clean_start_leaves_nothing_of_the_old_session_in_the_document() -> None:
    bucket = await MemoryStore().bucket("sessions")
    sessions, js = await _sessions(bucket)
    old = await _subscribed(sessions, 2)
    sessions.hand_off(old, None, None)
    await asyncio.gather(*sessions._writes)

    # Reconnecting elsewhere with Clean Start (another MeshSessions: another node).
    other, _ = await _sessions(bucket)
    other.link.node = "n2"
    other.link.js = js
    assert await other.claim("c1", True, "u", None) is None
    doc = read_doc(await bucket.get(other._key("c1")))
    assert doc["node"] == "n2"
    assert doc["subs"] == [] and doc["cons"] == {} and doc["exp"] == 0
    assert js.consumers == set()


class _Connection:
    connected = True
    conn = types.SimpleNamespace(send_quota=20)


class _Broker:
    def online(self, client_id: str) -> _Connection:
        return _Connection()


async def test_a_pull_request_lost_in_a_nats_blip_is_asked_again() -> None:
    bucket = await MemoryStore().bucket("sessions")
    sessions, _ = await _sessions(bucket)
    sessions.broker = _Broker()  # type: ignore[assignment]
    nc = sessions.link.nc
    session = await _subscribed(sessions, 1)
    await asyncio.gather(*sessions._writes)

    def requests() -> int:
        return sum(1 for subject, _ in nc.published if ".MSG.NEXT." in subject)

    assert requests() == 1
    sessions.pump(session)  # a request is open: nothing more is asked
    await asyncio.gather(*sessions._writes)
    assert requests() == 1
    # Its 408 never comes (the node was cut off from NATS when the server sent it):
    (puller,) = sessions._pullers.values()
    puller.asked_at -= PULL_LOST_AFTER
    sessions.pump(session)  # as the sweeper does every few seconds
    await asyncio.sleep(0)
    await asyncio.gather(*sessions._writes)
    assert requests() == 2


class _WillBroker:
    def __init__(self) -> None:
        self.wills: list[str] = []

    def publish_will(self, message: Any, info: Any) -> None:
        self.wills.append(message.topic)


def _will(topic: str, delay: int) -> dict[str, Any]:
    return {"message": {"t": topic, "p": "", "q": 0}, "delay": delay, "info": {}}


async def test_the_sessions_of_a_node_s_previous_run_are_closed_when_it_starts_again() -> None:
    """A node that crashed and came back before the registry saw it gone: nobody else
    closes what its previous process held, so it does, before any client connects."""
    bucket = await MemoryStore().bucket("sessions")
    docs = {
        "clean": {"cid": "clean", "node": "n1", "epoch": 3, "exp": 0, "will": _will("w/a", 0)},
        "kept": {"cid": "kept", "node": "n1", "epoch": 1, "exp": 3600, "will": _will("w/b", 30)},
        "away": {"cid": "away", "node": "n2", "epoch": 1, "exp": 3600, "will": _will("w/c", 0)},
    }
    for key, doc in docs.items():
        await bucket.put(key, orjson.dumps(doc))
    sessions, _ = await _sessions(bucket)
    broker = _WillBroker()
    sessions.broker = broker  # type: ignore[assignment]

    await sessions._close_previous_run()

    clean = read_doc(await bucket.get("clean"))
    kept = read_doc(await bucket.get("kept"))
    assert clean["node"] is None and clean["will_at"] == clean["disc"]
    assert kept["node"] is None and kept["will_at"] == kept["disc"] + 30
    assert read_doc(await bucket.get("away")) == docs["away"]  # another node's: untouched

    # The janitor (on whichever node holds its lease) does the rest, through the hooks.
    from headwater.cluster.mqtt.janitor import Janitor

    janitor = Janitor(sessions)
    entry = await bucket.get("clean")
    assert entry is not None
    await janitor._tidy("clean", entry.revision, read_doc(entry), {"n1", "n2"}, clean["disc"])
    assert broker.wills == ["w/a"]
    assert await bucket.get("clean") is None  # a clean session ends with its connection


# -- the router's bookkeeping of what the publish hook stored ----------------------------------


def _router() -> Any:
    from headwater.cluster.mqtt.router import NatsRouter

    link = types.SimpleNamespace(nc=_Nc(), node="n1", stored="hw.mqtt.x.s", live="hw.mqtt.x.m")
    link.new_id = iter(range(1_000_000)).__next__
    return NatsRouter(link, types.SimpleNamespace())  # type: ignore[arg-type]


def test_past_its_bound_the_router_forgets_the_oldest_stored_messages_first(
    monkeypatch: Any,
) -> None:
    from headwater.cluster.mqtt import router as router_module
    from headwater.mqtt.session import Message

    monkeypatch.setattr(router_module, "SENT_REMEMBERED", 3)
    router = _router()
    messages = [Message(f"t/{i}", b"", qos=1) for i in range(5)]
    for message in messages:
        router._remember_sent([message])
    # The newest are those whose route() is still to come: kept (a clear sent them twice).
    assert list(router._sent.values()) == messages[2:]


async def test_a_publisher_that_goes_away_leaves_no_pub_ack_waiting() -> None:
    from headwater.mqtt.session import Message

    router = _router()
    persisting = asyncio.ensure_future(router.persist([Message("t/1", b"x", qos=1)]))
    await wait_until(lambda: bool(router._pubacks._futures), what="the publish sent")
    persisting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await persisting
    assert router._pubacks._futures == {}
