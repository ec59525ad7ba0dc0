"""Two embedded brokers on one NATS JetStream server, routed and sessioned over NATS.

Each broker stands for a node of a mesh (:mod:`headwater.cluster.mqtt.link`):
messages cross between them for QoS 0/1/2, retained messages are seen on
both, a persistent session resumes on the other broker with what was queued
meanwhile, a client id connected to both is taken over, and a shared group
spanning both gives each message to one member.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from headwater.cluster.connection import NatsOptions, connect
from headwater.cluster.leases import Lease
from headwater.cluster.mqtt.link import MeshLink
from headwater.cluster.mqtt.span import MqttMesh
from headwater.mqtt.broker import BrokerConfig, Listener, MqttBroker
from headwater.state.jetstream import JetStreamStore
from tests.servers import NatsServer

pytestmark = pytest.mark.integration

WAIT = 15.0


@pytest.fixture
def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server  # type: ignore[misc]


MakeNode = Callable[[str], Awaitable[MqttBroker]]


class Mesh:
    """The nodes a test made: their brokers, their MQTT meshes, who is live."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.meshes: dict[str, MqttMesh] = {}
        self.stores: dict[str, JetStreamStore] = {}

    async def kill(self, name: str, *, missed: bool = True) -> None:
        """Node ``name`` dies: its NATS connections drop and its heartbeat stops
        (``missed`` False: it is started again before the registry sees it gone)."""
        if missed:
            self.live.discard(name)
        await self.meshes[name].link.close()
        await self.stores[name].close()


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
async def node(nats_server: NatsServer, mesh: Mesh) -> AsyncIterator[MakeNode]:
    """``await node(name)``: a broker on a free port, as node ``name`` of the mesh."""
    options = NatsOptions((nats_server.url,))
    stores: list[JetStreamStore] = []
    brokers: list[tuple[MqttBroker, MqttMesh]] = []
    names = mesh.live

    async def make(name: str) -> MqttBroker:
        store = JetStreamStore(nats_server.url, namespace="t")
        stores.append(store)
        mesh.stores[name] = store
        leases = await store.bucket("leases")
        names.add(name)

        async def connect_for(purpose: str, no_echo: bool) -> Any:
            return await connect(options, f"{name} {purpose}", no_echo=no_echo)

        async def live() -> set[str]:
            return set(names)

        link = MeshLink(
            connect=connect_for,
            state=store,
            node=name,
            namespace="t",
            source="default/mqtt",
            replicas=1,
            max_message_size=1024 * 1024,
            live_nodes=live,
            lease=lambda key: Lease(leases, key, name, name, ttl=2.0),
        )
        made = MqttMesh(link)
        await made.open()
        mesh.meshes[name] = made
        broker = MqttBroker(
            BrokerConfig(listeners=(Listener("127.0.0.1", 0),)),
            router=made.router,
            store=made.sessions,
        )
        await broker.__aenter__()
        brokers.append((broker, made))
        return broker

    yield make
    for broker, mesh in reversed(brokers):
        await broker.__aexit__(None, None, None)
        await mesh.close()
    for store in stores:
        await store.close()


@contextlib.asynccontextmanager
async def client(
    broker: MqttBroker, client_id: str, **kwargs: Any
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", broker.port(), identifier=client_id, **kwargs
    ) as connected:
        yield connected


async def until(check: Callable[[], Any]) -> None:
    """Wait (up to WAIT) until ``check()`` (awaited if it is a coroutine) is true."""
    async with asyncio.timeout(WAIT):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)


async def received(c: aiomqtt.Client, count: int) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(WAIT):
        async for message in c.messages:
            got.append(message)
            if len(got) >= count:
                return got
    return got


async def test_messages_cross_nodes_at_every_qos(node: MakeNode) -> None:
    a, b = await node("a"), await node("b")
    async with client(b, "sub") as sub, client(a, "pub") as pub:
        await sub.subscribe("t/#", qos=2)
        for qos in (0, 1, 2):
            await pub.publish(f"t/{qos}", f"q{qos}".encode(), qos=qos)
        got = await received(sub, 3)
    assert sorted((str(m.topic), m.payload, m.qos) for m in got) == [
        ("t/0", b"q0", 0),
        ("t/1", b"q1", 1),
        ("t/2", b"q2", 2),
    ]


async def test_a_message_goes_only_to_the_nodes_with_a_matching_subscriber(
    node: MakeNode, mesh: Mesh
) -> None:
    a, b, c = await node("a"), await node("b"), await node("c")
    async with (
        client(b, "sensors-app") as on_b,
        client(c, "other-app") as on_c,
        client(a, "pub") as pub,
    ):
        await on_b.subscribe("sensors/#", qos=1)
        await on_c.subscribe("other/#", qos=1)
        for i in range(10):
            await pub.publish(f"sensors/s{i}", b"x", qos=i % 2)
        assert len(await received(on_b, 10)) == 10
        # One message for c last: NATS keeps one publisher's order to a subscriber,
        # so anything routed to c before it would have arrived before it.
        await pub.publish("other/x", b"y", qos=1)
        assert [str(m.topic) for m in await received(on_c, 1)] == ["other/x"]
    routers = {name: mesh.meshes[name].router.stats() for name in "abc"}
    assert routers["b"]["receivedFromMesh"] == 10
    assert routers["c"]["receivedFromMesh"] == 1, "c has no sensors/# subscriber"
    assert routers["a"]["receivedFromMesh"] == 0


async def test_a_persistent_session_resumes_on_another_node(node: MakeNode) -> None:
    a, b = await node("a"), await node("b")
    async with client(a, "dev", clean_session=False) as dev:
        await dev.subscribe("cmd/dev", qos=1)
    async with client(a, "app") as app:
        for i in range(3):
            await app.publish("cmd/dev", f"c{i}".encode(), qos=1)
    async with client(b, "dev", clean_session=False) as dev:
        got = await received(dev, 3)
    assert [m.payload for m in got] == [b"c0", b"c1", b"c2"]


async def test_retained_messages_are_seen_on_every_node(node: MakeNode) -> None:
    a, b = await node("a"), await node("b")
    async with client(a, "pub") as pub:
        await pub.publish("state/door", b"open", qos=1, retain=True)
    await until(lambda: b.retained.match("state/#", 0.0))
    async with client(b, "late") as late:
        await late.subscribe("state/#", qos=1)
        [got] = await received(late, 1)
    assert (got.payload, got.retain) == (b"open", True)
    async with client(b, "pub2") as pub:
        await pub.publish("state/door", b"", qos=1, retain=True)  # deletes, everywhere
    await until(lambda: not a.retained.match("state/#", 0.0))


async def test_a_client_id_connected_to_a_second_node_takes_over(node: MakeNode) -> None:
    a, b = await node("a"), await node("b")
    reasons: list[int] = []
    first = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="twice", protocol=paho.MQTTv5)
    first.on_disconnect = lambda c, u, flags, reason, props: reasons.append(reason.value)
    first.connect("127.0.0.1", a.port())
    first.loop_start()
    try:
        await until(lambda: a.online("twice") is not None)
        async with client(b, "twice", protocol=aiomqtt.ProtocolVersion.V5):
            await until(lambda: a.online("twice") is None and reasons)
            assert b.online("twice") is not None
    finally:
        first.loop_stop()
        first._reset_sockets()
    # [MQTT-3.1.4-3 (5.0)] DISCONNECT 0x8E Session taken over, from the first node.
    assert reasons[0] == 0x8E


async def test_a_shared_group_gives_each_message_to_one_member_across_nodes(
    node: MakeNode,
) -> None:
    a, b = await node("a"), await node("b")
    count = 40
    async with (
        client(a, "m1") as m1,
        client(b, "m2") as m2,
        client(a, "pub") as pub,
    ):
        await m1.subscribe("$share/workers/jobs/#", qos=1)
        await m2.subscribe("$share/workers/jobs/#", qos=1)
        for i in range(count):
            await pub.publish(f"jobs/{i}", str(i).encode(), qos=1)
        seen: list[bytes] = []

        async def collect(c: aiomqtt.Client) -> None:
            async for message in c.messages:
                seen.append(bytes(message.payload))  # noqa: PERF401 (as they come)

        tasks = [asyncio.create_task(collect(c)) for c in (m1, m2)]
        await until(lambda: len(seen) >= count)
        await asyncio.sleep(0.2)  # any copy beyond one per message would arrive meanwhile
        for task in tasks:
            task.cancel()
    assert sorted(seen, key=int) == [str(i).encode() for i in range(count)]


async def test_overlapping_subscriptions_of_a_persistent_session_give_one_copy(
    node: MakeNode,
) -> None:
    a, b = await node("a"), await node("b")
    v5 = aiomqtt.ProtocolVersion.V5
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    async with client(b, "dev", protocol=v5, clean_start=False, properties=props) as dev:
        sub1 = Properties(PacketTypes.SUBSCRIBE)
        sub1.SubscriptionIdentifier = 1
        await dev.subscribe("home/#", qos=1, properties=sub1)
        sub2 = Properties(PacketTypes.SUBSCRIBE)
        sub2.SubscriptionIdentifier = 2
        await dev.subscribe("home/+/temp", qos=2, properties=sub2)
        async with client(a, "pub") as pub:
            await pub.publish("home/kitchen/temp", b"21", qos=2)
            await pub.publish("home/done", b"end", qos=1)
        got = await received(dev, 2)
    # Each subscription is a consumer of its own, so the two topics may come in
    # either order (MQTT 5 4.6 orders messages per topic, [MQTT-4.6.0-6]). A second
    # copy of the message both subscriptions match, sent before the other
    # message, would show here.
    by_payload = {m.payload: m for m in got}
    assert sorted(by_payload) == [b"21", b"end"]
    both = by_payload[b"21"]
    assert both.qos == 2
    assert sorted(both.properties.SubscriptionIdentifier) == [1, 2]  # type: ignore[union-attr]


async def test_the_will_of_a_client_of_a_dead_node_is_published_by_another(
    node: MakeNode, mesh: Mesh
) -> None:
    a, b = await node("a"), await node("b")
    async with client(b, "watcher") as watcher:
        await watcher.subscribe("status/#", qos=1)
        will = aiomqtt.Will("status/sensor", b"offline", qos=1)
        async with client(a, "sensor", will=will):
            await mesh.kill("a")  # the node dies with the client connected to it
            [got] = await received(watcher, 1)
    assert (str(got.topic), got.payload) == ("status/sensor", b"offline")


async def test_a_node_that_comes_back_before_it_is_missed_closes_what_it_held(
    node: MakeNode, mesh: Mesh
) -> None:
    """Crashed and restarted within the registry's TTL: no node saw it gone, so the
    sessions its name still holds are its previous process's, closed as a dead node's."""
    a, b = await node("a"), await node("b")
    async with client(b, "watcher") as watcher:
        await watcher.subscribe("status/#", qos=1)
        will = aiomqtt.Will("status/sensor", b"offline", qos=1)
        async with client(a, "sensor", will=will):
            await mesh.kill("a", missed=False)
            await node("a")
            [got] = await received(watcher, 1)
    assert (str(got.topic), got.payload) == ("status/sensor", b"offline")


async def test_an_expired_persistent_session_is_ended_by_the_mesh(node: MakeNode) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    a, b = await node("a"), await node("b")
    v5 = aiomqtt.ProtocolVersion.V5
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 1
    async with client(a, "brief", protocol=v5, clean_start=False, properties=props) as c:
        await c.subscribe("brief/#", qos=1)
    stream = mesh_stream(a)
    assert len(await consumers(a, stream)) == 2  # brief.> and brief
    sessions = a.router.link.sessions  # type: ignore[attr-defined]

    async def gone() -> bool:
        return not await consumers(a, stream) and await sessions.get("brief") is None

    await until(gone)
    resumed: list[bool] = []
    c2 = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="brief", protocol=paho.MQTTv5)
    c2.on_connect = lambda c, u, flags, rc, p: resumed.append(flags.session_present)
    c2.connect("127.0.0.1", b.port(), clean_start=False, properties=props)
    c2.loop_start()
    try:
        await until(lambda: resumed)
    finally:
        c2.disconnect()
        c2.loop_stop()
        c2._reset_sockets()
    assert resumed == [False]  # expired: a new session


def mesh_stream(broker: MqttBroker) -> str:
    router = broker.router
    return router.link.stream  # type: ignore[attr-defined, no-any-return]


async def consumers(broker: MqttBroker, stream: str) -> list[str]:
    js = broker.router.link.js  # type: ignore[attr-defined]
    return [c.name for c in await js.consumers_info(stream)]


@pytest.mark.parametrize("how", ["disconnect", "node-dies"])
async def test_a_qos2_flow_at_its_pubrel_resumes_on_another_node(
    node: MakeNode, mesh: Mesh, how: str
) -> None:
    """[MQTT-4.4.0-1] the node that resumes a session sends the PUBREL of a QoS 2
    flow the device PUBREC'd on another node, keeps its packet id in use until the
    PUBCOMP, and does not send the message again."""
    from headwater.cluster.mqtt.session import read_doc
    from headwater.mqtt.packets import (
        Properties,
        Pubcomp,
        Publish,
        Pubrec,
        Pubrel,
        Subscribe,
        SubscriptionOptions,
    )
    from tests.integration.mqtt._clients import V5, Raw

    a, b = await node("a"), await node("b")
    props = Properties(session_expiry_interval=300)
    dev = Raw(a.port(), V5)
    await asyncio.to_thread(dev.connect, "dev", clean_start=False, properties=props)
    await asyncio.to_thread(dev.send, Subscribe(1, (("cmd/dev", SubscriptionOptions(qos=2)),)))
    await asyncio.to_thread(dev.recv)  # SUBACK
    async with client(a, "app") as app:
        await app.publish("cmd/dev", b"one", qos=2)
    first = await asyncio.to_thread(dev.recv)
    assert isinstance(first, Publish) and first.payload == b"one", first
    await asyncio.to_thread(dev.send, Pubrec(first.packet_id))  # type: ignore[arg-type]
    assert await asyncio.to_thread(dev.recv) == Pubrel(first.packet_id)  # type: ignore[arg-type]
    sessions = mesh.meshes["a"].link.sessions
    assert sessions is not None

    async def released() -> bool:
        doc = read_doc(await sessions.get("dev"))
        return str(first.packet_id) in (doc.get("rel") or {})

    await until(released)  # no PUBCOMP: the flow waits at its PUBREL
    if how == "node-dies":
        await mesh.kill("a")
    dev.close()

    again = Raw(b.port(), V5)
    connack = await asyncio.to_thread(again.connect, "dev", clean_start=False, properties=props)
    assert connack.session_present
    assert await asyncio.to_thread(again.recv) == Pubrel(first.packet_id)  # type: ignore[arg-type]
    async with client(b, "app2") as app:
        await app.publish("cmd/dev", b"two", qos=2)
    second = await asyncio.to_thread(again.recv)
    assert isinstance(second, Publish) and second.payload == b"two", second
    assert second.packet_id != first.packet_id  # still in use until its PUBCOMP
    await asyncio.to_thread(again.send, Pubcomp(first.packet_id))  # type: ignore[arg-type]
    await asyncio.to_thread(again.send, Pubrec(second.packet_id))  # type: ignore[arg-type]
    assert await asyncio.to_thread(again.recv) == Pubrel(second.packet_id)  # type: ignore[arg-type]
    await asyncio.to_thread(again.send, Pubcomp(second.packet_id))  # type: ignore[arg-type]
    assert await asyncio.to_thread(again.recv_all) == []  # "one" is not sent again
    again.close()
