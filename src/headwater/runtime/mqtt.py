"""What the MQTT kinds become when they run: MqttBrokerSource, MqttSource, MqttSink.

How this works: as in :mod:`headwater.runtime.components`, each kind is a
component with ``start``/``stop``/``update``/``status``. A source resolves its
``sink`` Destination once and hands each event to that sink's ``deliver``
(for a Broker or Channel ref: the durable append). An MqttSink without a
``broker`` publishes in-process into the namespace's running
MqttBrokerSource (looked up at each delivery, so the order in which the two
start does not matter); with one, into that external broker. Any change to
an MQTT resource recreates its component (listeners, sessions and
connections are not patched in place). An MqttBrokerSource keeps its
sessions and retained messages where its ``dataDir`` says, else under the
node's data directory (``<data-dir>/mqtt/<namespace>/<name>``), so that
everything a node stores is in one place; with no data directory (a runtime
in memory), in memory. On a node of a mesh they live in JetStream instead,
shared by every node: the broker gets the mesh's router and session store
(:class:`~headwater.runtime.context.MqttSpan`, opened before it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError, Sink
from headwater.eventing.broker import DEFAULT_TTL, TTL_EXTENSION
from headwater.eventing.sink import deliver_many
from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.broker import BrokerConfig, Listener, server_tls_context
from headwater.mqtt.client import ClientConfig, tls_context
from headwater.mqtt.packets import ProtocolVersion
from headwater.resources.models import Resource
from headwater.resources.mqtt import (
    Credentials,
    ListenerSpec,
    MqttBrokerSource,
    MqttBrokerSourceSpec,
    MqttSink,
    MqttSource,
    Tls,
    parse_broker_url,
)
from headwater.runtime.context import Context, Kind, Registry, Stage
from headwater.runtime.devices import device_metric_families, device_plane
from headwater.sinks.mqtt import (
    EmbeddedPublisher,
    ExternalPublisher,
    Publisher,
    Response,
)
from headwater.sinks.mqtt import MqttSink as MqttSinkRunner
from headwater.sources.mqtt import MqttSourceRunner
from headwater.sources.mqttbroker import MqttBrokerSource as BrokerSourceRunner

log = logging.getLogger(__name__)

LABELS = ["namespace", "name"]


def _listener(spec: ListenerSpec) -> Listener:
    context = None
    if spec.tls is not None:
        assert spec.tls.cert_file is not None  # the model requires it
        context = server_tls_context(
            spec.tls.cert_file,
            spec.tls.key_file,
            cafile=spec.tls.ca_file,
            require_client_cert=spec.tls.require_client_cert,
        )
    return Listener(
        spec.host,
        spec.port,
        context,
        spec.websocket,
        spec.path,
        spec.cert_username,
        spec.allow_anonymous,
        spec.name,
    )


def _auth(spec: MqttBrokerSourceSpec) -> tuple[PasswordFile | None, Acl | None]:
    passwords = PasswordFile.load(spec.password_file) if spec.password_file else None
    return passwords, Acl.load(spec.acl_file) if spec.acl_file else None


class MqttBrokerSourceComponent:
    def __init__(self, context: Context, resource: MqttBrokerSource) -> None:
        spec = resource.spec
        self.resource = resource
        self._sink, _ = context.destinations.resolve(spec.sink, resource.namespace)
        passwords, acl = _auth(spec)
        mesh = context.mesh
        config = BrokerConfig(
            listeners=tuple(_listener(listener) for listener in spec.listeners),
            # In a mesh sessions and retained messages live in JetStream instead.
            data_dir=session_dir(context.data_dir, resource) if mesh is None else None,
            passwords=passwords,
            acl=acl,
            max_packet_size=max(spec.max_event_size * 2, 64 * 1024),
            max_queued_messages=spec.max_queued_messages,
        )
        if spec.max_incomplete_bytes is not None:
            config = replace(config, max_incomplete_bytes=spec.max_incomplete_bytes)
        self.mqtt_mesh = (
            mesh.mqtt(f"{resource.namespace}/{resource.name}", config.max_packet_size)
            if mesh is not None
            else None
        )
        mapping = spec.mapping.compile()
        if spec.sink.ref is not None and spec.sink.ref.kind == "Broker":
            # What the Broker's ingress would add to each event, set once per topic.
            mapping = mapping.stamping({TTL_EXTENSION: DEFAULT_TTL})
        name = f"{resource.namespace}/{resource.name}"
        emit_many: Any = functools.partial(deliver_many, self._sink)
        self.plane = None
        if spec.devices is not None:
            self.plane = device_plane(
                context.devices, resource.namespace, name, spec.devices, self._sink
            )
            emit_many = self.plane.tap(emit_many)
        self.source = BrokerSourceRunner(
            config,
            mapping,
            self._sink.deliver,
            emit_many=emit_many,
            topics=tuple(spec.topics),
            device_events=spec.device_events,
            max_event_size=spec.max_event_size,
            name=name,
            devices=self.plane,
            router=self.mqtt_mesh.router if self.mqtt_mesh is not None else None,
            store=self.mqtt_mesh.sessions if self.mqtt_mesh is not None else None,
        )
        self.registry: Registry = context.registry
        self._devices = context.devices

    @property
    def _listener_name(self) -> str:
        return f"mqtt/{self.resource.namespace}/{self.resource.name}"

    async def start(self) -> None:
        # The registry is read before the first CONNECT; in a mesh, the router and
        # the session store join NATS before the listeners open.
        async with contextlib.AsyncExitStack() as undo:
            if self.plane is not None:
                await self.plane.start()
                undo.push_async_callback(self.plane.stop)
            if self.mqtt_mesh is not None:
                await self.mqtt_mesh.open()
                undo.push_async_callback(self.mqtt_mesh.close)
            await self.source.__aenter__()
            undo.pop_all()  # started: stop() undoes it
        self._announce()

    def _announce(self) -> None:
        for listener, host, port in self.source.broker.addresses:
            scheme = listener.label.partition("://")[0] if not listener.name else "mqtt"
            url = f"{scheme}://{host}:{port}"
            self.registry.listeners[self._listener_name] = url
            log.info("mqtt listening on %s (%s)", url, self.resource.name)
        self.registry.mqtt_brokers[self.resource.key] = self.source

    async def stop(self) -> None:
        self.registry.listeners.pop(self._listener_name, None)
        self.registry.mqtt_brokers.pop(self.resource.key, None)
        try:
            await self.source.__aexit__(None, None, None)
        finally:
            try:
                if self.mqtt_mesh is not None:
                    await self.mqtt_mesh.close()
            finally:
                if self.plane is not None:
                    await self.plane.stop()

    async def update(self, resource: Resource) -> bool:
        """A change of the password file or ACL only is applied in place (as
        Mosquitto's reload on SIGHUP): nobody is disconnected, and every later
        delivery is checked against the new ACL. Anything else recreates the broker."""
        assert isinstance(resource, MqttBrokerSource)
        auth = {"password_file": None, "acl_file": None}
        old = self.resource.spec.model_copy(update=auth)
        if resource.spec.model_copy(update=auth) != old:
            return False
        self.source.broker.reload_auth(*_auth(resource.spec))
        self.resource = resource
        return True

    def status(self) -> dict[str, Any]:
        status = self.source.status()
        if self.plane is not None:
            status.update(self.plane.status())
        if self.mqtt_mesh is not None:
            status.update(self.mqtt_mesh.status())
        return status

    def metric_families(self) -> list[Metric]:
        """The embedded broker's counters of hostile or refused input, for ``/metrics``."""
        labels = [self.resource.namespace, self.resource.name]
        stats = self.source.broker.stats
        families: list[Metric] = []
        for name, value, doc in (
            ("auth_failures", stats.auth_failures, "CONNECTs refused for bad credentials."),
            ("protocol_errors", stats.protocol_errors, "Connections closed for protocol errors."),
            ("denied_publish", stats.denied_publish, "PUBLISHes the ACL denied."),
            ("denied_subscribe", stats.denied_subscribe, "SUBSCRIBE filters the ACL denied."),
            ("denied_delivery", stats.denied_delivery, "Deliveries the receiver's ACL denied."),
            (
                "refused_acknowledged",
                stats.refused_acknowledged,
                "Publishes refused for good and acknowledged to MQTT 3.1.1 clients.",
            ),
            (
                "payload_format_invalid",
                stats.payload_format_invalid,
                "Publishes with Payload Format Indicator 1 that were not UTF-8 (0x99).",
            ),
            (
                "incomplete_over_budget",
                stats.incomplete_over_budget,
                "Connections closed: their partial packets would exceed the memory budget.",
            ),
            (
                "connections_refused",
                stats.connections_refused,
                "Sockets closed on accept: the connection cap was reached.",
            ),
            (
                "sessions_reset_owner",
                stats.sessions_reset_owner,
                "Sessions discarded because another user connected with their client id.",
            ),
        ):
            family = CounterMetricFamily(f"headwater_mqtt_{name}", doc, labels=LABELS)
            family.add_metric(labels, value)
            families.append(family)
        held = GaugeMetricFamily(
            "headwater_mqtt_incomplete_bytes",
            "Bytes held across connections for packets still arriving.",
            labels=LABELS,
        )
        held.add_metric(labels, self.source.broker.incomplete_bytes)
        families.append(held)
        if self.plane is not None:
            families.extend(device_metric_families(self.plane, self._devices, LABELS, labels))
        return families


def session_dir(data_dir: Path | None, resource: MqttBrokerSource) -> str | None:
    """Where an MqttBrokerSource keeps sessions: its ``dataDir``, else the node's ``data_dir``."""
    if resource.spec.data_dir is not None:
        return resource.spec.data_dir
    if data_dir is None:
        return None
    return str(data_dir / "mqtt" / resource.namespace / resource.name)


def _password(credentials: Credentials) -> bytes | None:
    if credentials.password_env:
        value = os.environ.get(credentials.password_env)
        if value is None:
            raise ValueError(f"environment variable {credentials.password_env} is not set")
        return value.encode()
    if credentials.password_file:
        return Path(credentials.password_file).read_bytes().rstrip(b"\r\n")
    return None


def _client_config(
    url: str,
    client_id: str,
    version: int,
    credentials: Credentials | None,
    tls: Tls | None,
    **extra: Any,
) -> ClientConfig:
    use_tls, host, port, user, password = parse_broker_url(url)
    context = None
    if use_tls or tls is not None:
        t = tls or Tls()
        context = tls_context(t.ca_file, t.cert_file, t.key_file, insecure=t.insecure_skip_verify)
    if credentials is not None:
        user = credentials.username or user
        secret = _password(credentials)
        password = secret.decode() if secret is not None else password
    return ClientConfig(
        host,
        port,
        client_id,
        ProtocolVersion(version),
        username=user,
        password=password.encode() if password is not None else None,
        tls=context,
        **extra,
    )


class MqttSourceComponent:
    def __init__(self, context: Context, resource: MqttSource) -> None:
        spec = resource.spec
        # A stable client id: the persistent session survives Headwater restarts.
        client_id = spec.client_id or f"headwater-{resource.namespace}-{resource.name}"
        self._sink, _ = context.destinations.resolve(spec.sink, resource.namespace)
        config = _client_config(
            spec.broker,
            client_id,
            spec.protocol_version,
            spec.credentials,
            spec.tls,
            clean_start=False,
            session_expiry=spec.session_expiry,
            keep_alive=spec.keep_alive,
        )
        self.runner = MqttSourceRunner(
            config,
            [(t.filter, t.qos) for t in spec.topics],
            spec.mapping.compile(),
            self._sink.deliver,
            emit_many=functools.partial(deliver_many, self._sink),
            max_backoff=spec.max_backoff,
            listener=f"{config.host}:{config.port}",
            max_event_size=spec.max_event_size,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Owned and cancelled in stop(): the subscription lives as long as the resource.
        self._task = asyncio.create_task(
            self.runner.run(), name=f"mqttsource:{self.runner.listener}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return self.runner.status()


class _LateEmbedded:
    """The namespace's MqttBrokerSource, found at each delivery (it may start later)."""

    version = 5

    def __init__(self, registry: Registry, namespace: str) -> None:
        self.registry = registry
        self.namespace = namespace

    def _target(self) -> EmbeddedPublisher:
        source = self.registry.mqtt_broker(self.namespace)
        if source is None:
            raise DeliveryError(
                None, True, reason=f"no MqttBrokerSource is running in namespace {self.namespace!r}"
            )
        return EmbeddedPublisher(source)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool, **kw: Any) -> None:
        await self._target().publish(topic, payload, qos, retain, **kw)

    def expect_response(self, topic: str) -> asyncio.Future[Response]:
        return self._target().expect_response(topic)


class MqttSinkComponent:
    def __init__(self, context: Context, resource: MqttSink) -> None:
        spec = resource.spec
        publisher: Publisher
        prefix = "headwater/responses"
        if spec.broker is None:
            publisher = _LateEmbedded(context.registry, resource.namespace)
        else:
            client_id = spec.client_id or (
                f"headwater-{resource.namespace}-{resource.name}-{secrets.token_hex(3)}"
            )
            config = _client_config(
                spec.broker,
                client_id,
                spec.protocol_version,
                spec.credentials,
                spec.tls,
                clean_start=True,
                session_expiry=0,
            )
            external = ExternalPublisher(config)
            prefix = external.response_filter.removesuffix("/#")
            publisher = external
        self.runner = MqttSinkRunner(
            spec.topic,
            publisher,
            qos=spec.qos,
            retain=spec.retain,
            mode=spec.mode,
            response_prefix=prefix,
            response_timeout=spec.response_timeout,
            source=f"/apis/v1alpha1/namespaces/{resource.namespace}/mqttsinks/{resource.name}",
        )
        self.sink: Sink = self

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        return await self.runner.deliver(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.runner.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {"published": self.runner.published, "responses": self.runner.responses}


KINDS: dict[str, Kind] = {
    "MqttSink": Kind(MqttSinkComponent, Stage.SINK),
    "MqttBrokerSource": Kind(MqttBrokerSourceComponent, Stage.SOURCE),
    "MqttSource": Kind(MqttSourceComponent, Stage.SOURCE),
}
"""What each MQTT kind becomes (``build(context, resource) -> Component``) and when it starts."""
