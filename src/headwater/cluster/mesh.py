"""One node's membership of a mesh: its NATS connections, the shared state, its peers.

How this works: ``headwater up --nats`` builds a :class:`Mesh` before
anything runs. :meth:`Mesh.open` connects (one connection for the state
store, the node registry, leases and status requests; the event log opens
its own), checks that the account has JetStream, picks the default number
of replicas (three when the cluster has three servers or more, else one),
opens the JetStream event log and the JetStream KV state store, and joins
the node registry (which refuses a second node with the same name and a
node of another mesh protocol). The runtime then runs on that log and
store, and asks the mesh for three things:

- :meth:`wrap`: a component that must run on one node at a time (a
  PingSource, an MqttSource, a ContainerSource, an ordered Trigger or
  Subscription) is wrapped in a :class:`~headwater.cluster.leases.LeasedComponent`;
  an ordered one rewinds its consumer when its lease moves, so that its
  order per ``partitionkey`` holds across the move.
- :meth:`statuses`: a resource's status on every live node (a NATS request
  on ``<namespace>.mesh.status`` that every node answers), for ``describe``.
- :meth:`nodes`: the live nodes and what they heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import nats.js.errors
import orjson

from headwater.cluster.connection import (
    CONNECT_TIMEOUT,
    ClusterError,
    NatsOptions,
    check_jetstream,
    connect,
)
from headwater.cluster.leases import LEASES_BUCKET, Lease, LeasedComponent
from headwater.cluster.nodes import NODE_TTL, NODES_BUCKET, NodeInfo, NodeRegistry, instance_id
from headwater.log import JetStreamLog, LogError, StreamNotFound
from headwater.resources import Resource, Subscription, Trigger
from headwater.resources.models import KAFKA_ORDER_ANNOTATION, ORDER_ANNOTATION
from headwater.state import Bucket, StateError
from headwater.state.jetstream import JetStreamStore

if TYPE_CHECKING:
    from headwater.cluster.mqtt.span import MqttMesh
    from headwater.runtime.reconciler import Component, Key
    from headwater.runtime.runtime import Runtime

__all__ = ["DEFAULT_NAMESPACE", "SINGLETON_KINDS", "Mesh", "default_node_name"]

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE: Final = "headwater"
"""Prefix of every stream, bucket and subject of the mesh (several meshes can share NATS)."""

SINGLETON_KINDS: Final = frozenset({"PingSource", "MqttSource", "ContainerSource"})
"""Kinds that run on one node of the mesh at a time: a schedule fires once, an
external broker sees one client, a process runs once."""

LOG_ACK_WAIT: Final = 10.0
"""Seconds before JetStream hands an event that a node took for delivery (and then
died) to another node: how long a dead node's deliveries under way are late. Live
nodes report progress on what they hold every third of it."""

JETSTREAM_WAIT: Final = 60.0
"""Seconds a starting node waits for JetStream to answer (a cluster that just started
elects its meta leader first) before it gives up with one line."""

GATHER_TIMEOUT: Final = 1.0
"""Seconds ``describe`` waits for the other nodes' statuses (a node that does not
answer in time is left out and named)."""


def default_node_name() -> str:
    """The host name: one node per host (or per pod) needs no ``--node-name``."""
    return socket.gethostname().split(".")[0] or "headwater"


def _ordered(resource: Resource) -> bool:
    annotations = resource.metadata.annotations
    return annotations.get(ORDER_ANNOTATION, annotations.get(KAFKA_ORDER_ANNOTATION)) == "ordered"


class Mesh:
    """This node's part of the mesh (see the module docstring)."""

    def __init__(
        self,
        options: NatsOptions,
        *,
        node: str,
        data_dir: Path,
        namespace: str = DEFAULT_NAMESPACE,
        replicas: int | None = None,
    ) -> None:
        self.options = options
        self.node = node
        self.namespace = namespace
        self.instance = instance_id(data_dir)
        self.replicas = replicas or 1
        self._wanted_replicas = replicas
        self.nc: Any = None
        self.state: JetStreamStore | None = None
        self.log: JetStreamLog | None = None
        self.registry: NodeRegistry | None = None
        self.leases: Bucket | None = None
        self.runtime: Runtime | None = None
        self._status_sub: Any = None
        self._said_waiting = False

    @property
    def status_subject(self) -> str:
        return f"{self.namespace}.mesh.status"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check JetStream, open the log and the state store, join the registry.

        Raises :class:`ClusterError` (nothing is left open then).
        """
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        self.nc = await connect(self.options, f"headwater {self.node} state")
        await check_jetstream(self.nc, self.options)
        self.replicas = await self._choose_replicas()
        self.state = JetStreamStore(
            connection=self.nc,
            namespace=self.namespace,
            replicas=self.replicas,
            bucket_ttl={NODES_BUCKET: NODE_TTL},
        )
        nodes = await self._buckets()
        self.log = JetStreamLog(
            list(self.options.servers),
            namespace=self.namespace,
            replicas=self.replicas,
            ack_wait=LOG_ACK_WAIT,
            connect_options={
                **self.options.connect_options(),
                "name": f"headwater {self.node} log",
            },
        )
        self.registry = NodeRegistry(
            nodes, self.node, self.instance, addresses=self._addresses, devices=self._devices
        )
        try:
            await self.registry.join()
        except StateError as exc:
            raise ClusterError(f"cannot join the node registry: {exc}") from exc
        self._status_sub = await self.nc.subscribe(self.status_subject, cb=self._answer_status)
        log.info(
            "node %s joined the mesh on %s (%d replica(s) by default)",
            self.node,
            ",".join(self.options.servers),
            self.replicas,
        )

    async def _choose_replicas(self) -> int:
        """--nats-replicas; else what the mesh's buckets have (every node agrees); else
        three, lowered to one at the first bucket if JetStream cannot keep three."""
        if self._wanted_replicas is not None:
            return self._wanted_replicas
        js = self.nc.jetstream(timeout=CONNECT_TIMEOUT)
        deadline = asyncio.get_running_loop().time() + JETSTREAM_WAIT
        while True:
            try:
                info = await js.stream_info(f"KV_{self.namespace}_{NODES_BUCKET}")
                return int(info.config.num_replicas or 1)
            except nats.js.errors.NotFoundError:
                return 3
            except (TimeoutError, nats.errors.Error) as exc:
                await self._waiting(deadline, exc)

    async def _buckets(self) -> Any:
        """The node registry's and the leases' buckets, made if needed; while JetStream
        does not answer yet (a cluster electing its leaders) this waits, up to a bound."""
        assert self.state is not None
        deadline = asyncio.get_running_loop().time() + JETSTREAM_WAIT
        while True:
            try:
                nodes = await self.state.bucket(NODES_BUCKET)
                self.leases = await self.state.bucket(LEASES_BUCKET)
                await nodes.revision()
                return nodes
            except StateError as exc:
                text = str(exc).lower()
                if "insufficient resources" in text or "non-clustered mode" in text:
                    if self._wanted_replicas is None and self.replicas > 1:
                        self.replicas = self.state.replicas = 1  # fewer than three servers
                        continue
                    raise ClusterError(
                        f"JetStream at {','.join(self.options.servers)} cannot keep "
                        f"{self.replicas} replicas (fewer JetStream servers in the cluster): "
                        "set --nats-replicas to at most their number"
                    ) from exc
                await self._waiting(deadline, exc)

    async def _waiting(self, deadline: float, exc: BaseException) -> None:
        if asyncio.get_running_loop().time() >= deadline:
            raise ClusterError(
                f"JetStream at {','.join(self.options.servers)} did not answer for "
                f"{JETSTREAM_WAIT:g}s: {exc or type(exc).__name__}"
            ) from exc
        if not self._said_waiting:
            self._said_waiting = True
            log.warning(
                "JetStream is not answering yet (%s); a cluster that just started elects its "
                "leaders first: waiting up to %gs",
                exc or type(exc).__name__,
                JETSTREAM_WAIT,
            )
        await asyncio.sleep(0.5)

    def bind(self, runtime: Runtime) -> None:
        """The runtime that runs on this mesh's log and store (it closes them from now on)."""
        self.runtime = runtime

    def info(self) -> dict[str, Any]:
        return {
            "servers": list(self.options.servers),
            "namespace": self.namespace,
            "replicas": self.replicas,
        }

    async def close(self) -> None:
        """Leave the registry and close what :meth:`open` opened (the runtime closes
        the log and the store it was given)."""
        if self.registry is not None:
            await self.registry.leave()
        sub, self._status_sub = self._status_sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self.runtime is None:  # never handed over: ours to close
            if self.log is not None:
                await self.log.close()
            if self.state is not None:
                await self.state.close()
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()

    # -- what the registry reports ---------------------------------------------------------

    def _addresses(self) -> dict[str, str]:
        return dict(self.runtime.listeners) if self.runtime is not None else {}

    def _devices(self) -> int:
        if self.runtime is None:
            return 0
        return self.runtime.registry.connected_devices()

    async def nodes(self) -> list[NodeInfo]:
        assert self.registry is not None
        return await self.registry.nodes()

    async def live_nodes(self) -> set[str]:
        assert self.registry is not None
        return await self.registry.live()

    # -- MQTT across the nodes ------------------------------------------------------------

    def mqtt(self, source: str, max_message_size: int) -> MqttMesh:
        """The router and session store of the MqttBrokerSource ``source`` (``ns/name``)."""
        from headwater.cluster.mqtt.link import MeshLink
        from headwater.cluster.mqtt.span import MqttMesh

        assert self.state is not None
        options = self.options

        async def connect_for(purpose: str, no_echo: bool) -> Any:
            return await connect(options, f"headwater {self.node} {purpose}", no_echo=no_echo)

        link = MeshLink(
            connect=connect_for,
            state=self.state,
            node=self.node,
            namespace=self.namespace,
            source=source,
            replicas=self.replicas,
            max_message_size=max_message_size,
            live_nodes=self.live_nodes,
            lease=self.lease,
        )
        return MqttMesh(link)

    # -- one node at a time ----------------------------------------------------------------

    def lease(self, key: str) -> Lease:
        assert self.leases is not None
        return Lease(self.leases, key, self.node, self.instance)

    def wrap(self, resource: Resource, component: Component) -> Component:
        """``component`` as it runs in a mesh (leased when one node at a time must run it)."""
        kind = resource.kind
        ordered = isinstance(resource, Trigger | Subscription) and _ordered(resource)
        if kind not in SINGLETON_KINDS and not ordered:
            return component
        lease = self.lease("/".join(resource.key))
        rewind = self._rewinder(resource) if ordered else None
        return LeasedComponent(component, lease, before_start=rewind)

    def _rewinder(self, resource: Resource) -> Callable[[], Any] | None:
        if isinstance(resource, Trigger):
            stream = f"broker/{resource.namespace}/{resource.spec.broker}"
            consumer = f"trigger/{resource.namespace}/{resource.name}"
        elif isinstance(resource, Subscription):
            ref = resource.spec.channel
            if ref.kind == "InMemoryChannel":
                return None  # each node's own, in memory
            stream = f"channel/{resource.namespace}/{ref.name}"
            consumer = f"subscription/{resource.namespace}/{resource.name}"
        else:
            return None
        log_ = self.log

        async def rewind() -> None:
            assert log_ is not None
            try:
                position = await log_.reset_consumer(stream, consumer)
            except StreamNotFound:
                return  # not created yet: its first reader creates the consumer
            except LogError as exc:
                raise RuntimeError(f"cannot rewind {consumer}: {exc}") from exc
            log.info("%s resumes after offset %d on this node", consumer, position)

        return rewind

    # -- statuses from every node ---------------------------------------------------------------

    def _local_status(self, key: Key) -> dict[str, Any] | None:
        runtime = self.runtime
        if runtime is None or runtime.get(key) is None:
            return None
        return runtime.status(key)

    async def _answer_status(self, message: Any) -> None:
        try:
            request = orjson.loads(message.data)
            if request.get("from") == self.node or not message.reply:
                return
            kind, namespace, name = request["key"]
            status = self._local_status((str(kind), str(namespace), str(name)))
            await self.nc.publish(
                message.reply,
                orjson.dumps({"node": self.node, "status": status}, default=str),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, nats.errors.Error):
            log.debug("unreadable status request on %s", message.subject)

    async def statuses(self, key: Key) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """``key``'s status on each live node that runs it, and the nodes that did not answer."""
        assert self.registry is not None
        out: dict[str, dict[str, Any]] = {}
        local = self._local_status(key)
        if local is not None:
            out[self.node] = local
        try:
            others = {n.name for n in await self.registry.nodes()} - {self.node}
        except StateError:
            return out, []
        if not others:
            return out, []
        answered: set[str] = set()
        done = asyncio.Event()

        async def answer(message: Any) -> None:
            try:
                reply = orjson.loads(message.data)
                node = str(reply["node"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return
            answered.add(node)
            if isinstance(reply.get("status"), dict):
                out[node] = reply["status"]
            if others <= answered:
                done.set()

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=answer)
        try:
            await self.nc.publish(
                self.status_subject,
                orjson.dumps({"from": self.node, "key": list(key)}),
                reply=inbox,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), GATHER_TIMEOUT)
        except nats.errors.Error as exc:
            log.debug("status request failed: %s", exc)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return out, sorted(others - answered)
