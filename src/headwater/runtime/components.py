"""What each resource kind becomes when it runs.

How this works: every component has ``start``/``stop``/``update``/``status``
(the reconciler's :class:`~headwater.runtime.reconciler.Component`) and is
built from its resource and the builders' :class:`~headwater.runtime.context.Context`.
Brokers and Channels wrap the eventing fan-outs; a Trigger or Subscription
attaches itself to its Broker or Channel, and an ``update`` re-attaches it
under the same consumer name, so a changed filter or subscriber keeps the
cursor. What else a component is (``Addressable``: a ``sink`` a
Destination's ``ref`` resolves to in-process; ``HasMetrics``; ...) is one of
the Protocols of :mod:`headwater.runtime.capabilities`. :data:`KINDS` says
how each kind is built and when it starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from prometheus_client.core import Metric

from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryError, Dispatcher, Sink
from headwater.eventing import Subscription as SubscriptionMember
from headwater.eventing import Trigger as TriggerMember
from headwater.eventing._fanout import Saturated
from headwater.log import LogFull, LogUnavailable, StreamConfig, StreamNotFound
from headwater.resources import (
    Broker,
    Channel,
    ContainerSource,
    EventDisplay,
    InMemoryChannel,
    PingSource,
    Resource,
    Subscription,
    Trigger,
)
from headwater.resources.models import (
    KAFKA_ORDER_ANNOTATION,
    MAX_INFLIGHT_ANNOTATION,
    ORDER_ANNOTATION,
    START_ANNOTATION,
    replicas_annotation,
    retention_limits,
)
from headwater.runtime.context import Context, Kind, Stage
from headwater.runtime.metrics import fanout_families, member_families, source_families
from headwater.runtime.replay import start_position
from headwater.sinks.display import EventDisplaySink
from headwater.sources.container import ProcessSpec, ProcessSupervisor
from headwater.sources.ping import PingSchedule, PingSourceRunner


class AcceptSink:
    """Delivering to a Broker or Channel means appending to it durably."""

    def __init__(self, fanout: BrokerFanout | ChannelFanout) -> None:
        self.fanout = fanout

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        """One event (a Trigger's reply, a dead letter route): refused with 503 at
        once when the log is saturated, and retried by its delivery policy."""
        await self._accept([event], wait=False)
        return None

    async def deliver_many(self, events: Sequence[CloudEvent]) -> None:
        """One durable append for all of ``events`` (all or nothing).

        A source's batch waits for a saturated log rather than being refused: the
        source holds its producers back meanwhile (MQTT: by not reading), under its
        own append timeout.
        """
        await self._accept(events, wait=True)

    async def _accept(self, events: Sequence[CloudEvent], *, wait: bool) -> None:
        try:
            await self.fanout.accept(events, wait=wait)
        except LogFull as exc:
            # 507 Insufficient Storage (RFC 4918 §11.5): retryable once space is freed.
            raise DeliveryError(507, True, reason=f"{self.fanout!r}: {exc}") from exc
        except (LogUnavailable, Saturated) as exc:
            raise DeliveryError(503, True, reason=f"{self.fanout!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"{self.fanout!r}"


class BrokerComponent:
    def __init__(self, context: Context, resource: Broker) -> None:
        self.context = context
        self.broker = BrokerFanout(
            resource.namespace,
            resource.name,
            context.log,
            delivery=context.destinations.delivery_spec(resource.spec.delivery, resource.namespace),
            retention=_retention(resource),
        )
        self.sink: Sink = AcceptSink(self.broker)

    @property
    def fanout(self) -> BrokerFanout:
        return self.broker

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, Broker)
        self.broker.delivery = self.context.destinations.delivery_spec(
            resource.spec.delivery, resource.namespace
        )
        await self.broker.set_retention(_retention(resource))
        # Re-attach every Trigger so the new defaults apply; cursors are kept.
        for trigger in list(self.broker.triggers().values()):
            await self.broker.add_trigger(trigger)
        return True

    def status(self) -> dict[str, Any]:
        status = self.broker.status()
        status["address"] = self.context.registry.ingress_url(
            self.broker.namespace, self.broker.name
        )
        return status

    def metric_families(self) -> list[Metric]:
        return fanout_families("Broker", self.broker)


def _retention(resource: Broker) -> StreamConfig:
    """Its retention and, in a mesh, its replicas (headwater.dev/replicas)."""
    annotations = resource.metadata.annotations
    return StreamConfig(**retention_limits(annotations), replicas=replicas_annotation(annotations))


class ChannelComponent:
    def __init__(self, context: Context, resource: Channel | InMemoryChannel) -> None:
        self.context = context
        self.kind = resource.kind
        delivery = context.destinations.delivery_spec(resource.spec.delivery, resource.namespace)
        in_memory = isinstance(resource, InMemoryChannel) or (
            isinstance(resource, Channel)
            and resource.spec.channel_template is not None
            and resource.spec.channel_template.kind == "InMemoryChannel"
        )
        if in_memory:
            self.channel = ChannelFanout.in_memory(
                resource.namespace, resource.name, delivery=delivery
            )
        else:
            self.channel = ChannelFanout(
                resource.namespace,
                resource.name,
                context.log,
                delivery=delivery,
                retention=StreamConfig(replicas=replicas_annotation(resource.metadata.annotations)),
            )
        self.sink: Sink = AcceptSink(self.channel)

    @property
    def fanout(self) -> ChannelFanout:
        return self.channel

    async def start(self) -> None:
        await self.channel.start()

    async def stop(self) -> None:
        await self.channel.stop()

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, Channel | InMemoryChannel)
        if isinstance(resource, Channel) and resource.spec.channel_template is not None:
            return False  # the backing store may change: recreate
        replicas = replicas_annotation(resource.metadata.annotations)
        if replicas != self.channel.retention.replicas:
            await self.channel.set_retention(replace(self.channel.retention, replicas=replicas))
        self.channel.delivery = self.context.destinations.delivery_spec(
            resource.spec.delivery, resource.namespace
        )
        for subscription in list(self.channel.subscriptions().values()):
            await self.channel.subscribe(subscription)
        return True

    def status(self) -> dict[str, Any]:
        status = self.channel.status()
        status["address"] = self.context.registry.channel_url(
            self.channel.namespace, self.channel.name
        )
        return status

    def metric_families(self) -> list[Metric]:
        return fanout_families(self.kind, self.channel)


def _member_options(context: Context, resource: Trigger | Subscription) -> dict[str, Any]:
    annotations = resource.metadata.annotations
    order = annotations.get(ORDER_ANNOTATION, annotations.get(KAFKA_ORDER_ANNOTATION))
    options: dict[str, Any] = {
        "namespace": resource.namespace,
        "delivery": (
            context.destinations.delivery_spec(resource.spec.delivery, resource.namespace)
            if resource.spec.delivery is not None
            else None
        ),
        "ordering": order or "unordered",
        "start": start_position(annotations.get(START_ANNOTATION)),
    }
    if MAX_INFLIGHT_ANNOTATION in annotations:
        options["max_inflight"] = int(annotations[MAX_INFLIGHT_ANNOTATION])
    return options


class TriggerComponent:
    def __init__(self, context: Context, resource: Trigger) -> None:
        self.context = context
        self.resource = resource
        self.member: TriggerMember | None = None

    def _broker(self, resource: Trigger) -> BrokerFanout:
        return self.context.destinations.broker(resource.namespace, resource.spec.broker)

    def _build(self, resource: Trigger) -> TriggerMember:
        spec = resource.spec
        subscriber, uri = self.context.destinations.resolve(
            spec.subscriber, resource.namespace, spec.delivery
        )
        return TriggerMember(
            resource.name,
            subscriber,
            subscriber_uri=uri,
            attributes=spec.filter.attributes if spec.filter else None,
            filters=[f.model_dump(by_alias=True, exclude_none=True) for f in spec.filters],
            **_member_options(self.context, resource),
        )

    async def start(self) -> None:
        self.member = self._build(self.resource)
        await self._broker(self.resource).add_trigger(self.member)

    async def stop(self) -> None:
        if self.member is not None:
            with contextlib.suppress(LookupError):
                await self._broker(self.resource).remove_trigger(self.resource.name)
            self.member = None

    async def removed(self) -> None:
        """Its Trigger was deleted: its cursor goes too (a Trigger made later under its
        name starts at its ``headwater.dev/start``, LATEST by default, instead of
        replaying what came while none existed)."""
        with contextlib.suppress(LookupError, StreamNotFound):
            broker = self._broker(self.resource)
            await broker.forget_cursor(
                f"{TriggerMember.kind}/{self.resource.namespace}/{self.resource.name}"
            )

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, Trigger)
        if resource.spec.broker != self.resource.spec.broker:
            return False  # spec.broker is immutable in Knative; move = recreate
        member = self._build(resource)
        await self._broker(resource).add_trigger(member)  # same consumer: cursor kept
        self.resource, self.member = resource, member
        return True

    def dispatcher(self) -> Dispatcher | None:
        if self.member is None:
            return None
        with contextlib.suppress(LookupError):  # its Broker is not running
            return self._broker(self.resource).dispatchers().get(self.member.consumer)
        return None

    def status(self) -> dict[str, Any]:
        if self.member is None:
            return {}
        dispatcher = self.dispatcher()
        if dispatcher is None:
            return {"subscriberUri": self.member.subscriber_uri, **self.member.stats.snapshot()}
        return {"subscriberUri": self.member.subscriber_uri, **dispatcher.status()}

    def metric_families(self) -> list[Metric]:
        if self.member is None:
            return []
        parent = self.resource.spec.broker
        return member_families(self.resource.key, parent, self.member.stats)


class SubscriptionComponent:
    def __init__(self, context: Context, resource: Subscription) -> None:
        self.context = context
        self.resource = resource
        self.member: SubscriptionMember | None = None

    def _channel(self, resource: Subscription) -> ChannelFanout:
        ref = resource.spec.channel
        return self.context.destinations.channel(ref.kind, resource.namespace, ref.name)

    def _build(self, resource: Subscription) -> SubscriptionMember:
        spec = resource.spec
        destinations = self.context.destinations
        subscriber, uri = destinations.resolve(spec.subscriber, resource.namespace, spec.delivery)
        reply = (
            destinations.resolve(spec.reply, resource.namespace)[0]
            if spec.reply is not None
            else None
        )
        return SubscriptionMember(
            resource.name,
            subscriber,
            subscriber_uri=uri,
            reply=reply,
            **_member_options(self.context, resource),
        )

    async def start(self) -> None:
        self.member = self._build(self.resource)
        await self._channel(self.resource).subscribe(self.member)

    async def stop(self) -> None:
        if self.member is not None:
            with contextlib.suppress(LookupError):
                await self._channel(self.resource).unsubscribe(self.resource.name)
            self.member = None

    async def removed(self) -> None:
        """Its Subscription was deleted: its cursor goes too (see TriggerComponent)."""
        with contextlib.suppress(LookupError, StreamNotFound):
            channel = self._channel(self.resource)
            await channel.forget_cursor(
                f"{SubscriptionMember.kind}/{self.resource.namespace}/{self.resource.name}"
            )

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, Subscription)
        if resource.spec.channel != self.resource.spec.channel:
            return False
        member = self._build(resource)
        await self._channel(resource).subscribe(member)
        self.resource, self.member = resource, member
        return True

    def dispatcher(self) -> Dispatcher | None:
        if self.member is None:
            return None
        with contextlib.suppress(LookupError):  # its Channel is not running
            return self._channel(self.resource).dispatchers().get(self.member.consumer)
        return None

    def metric_families(self) -> list[Metric]:
        if self.member is None:
            return []
        parent = self.resource.spec.channel.name
        return member_families(self.resource.key, parent, self.member.stats)

    def status(self) -> dict[str, Any]:
        if self.member is None:
            return {}
        dispatcher = self.dispatcher()
        base = {"subscriberUri": self.member.subscriber_uri}
        if dispatcher is None:
            return {**base, **self.member.stats.snapshot()}
        return {**base, **dispatcher.status(), "repliesDiscarded": self.member.replies_discarded}


class EventDisplayComponent:
    def __init__(self, context: Context, resource: EventDisplay) -> None:
        self._display = EventDisplaySink(resource.spec.format)
        self.received = 0
        self.sink: Sink = self

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        self.received += 1
        return await self._display.deliver(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._display.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {"received": self.received}


class PingSourceComponent:
    def __init__(self, context: Context, resource: PingSource) -> None:
        spec = resource.spec
        self.key = resource.key
        data: bytes | None = None
        if spec.data is not None:
            data = spec.data.encode()
        elif spec.data_base64 is not None:
            data = base64.b64decode(spec.data_base64)
        self._sink, _ = context.destinations.resolve(spec.sink, resource.namespace)
        self.runner = PingSourceRunner(
            namespace=resource.namespace,
            name=resource.name,
            schedule=PingSchedule(spec.schedule, spec.timezone),
            emit=self._sink.deliver,
            data=data,
            content_type=spec.content_type,
            extensions=spec.ce_overrides.extensions if spec.ce_overrides else None,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Owned and cancelled in stop(): the schedule lives as long as the resource.
        self._task = asyncio.create_task(self.runner.run(), name=f"pingsource:{self.runner.source}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        r = self.runner
        return {"sent": r.sent, "failed": r.failed, "lastError": r.last_error}

    def metric_families(self) -> list[Metric]:
        return source_families(self.key, self.runner.sent, self.runner.failed)


class ContainerSourceComponent:
    """Each container of the source as a supervised process (see ``sources.container``)."""

    def __init__(self, context: Context, resource: ContainerSource) -> None:
        spec = resource.spec
        self._registry = context.registry
        self._sink = spec.sink
        self._namespace = resource.namespace
        extensions = spec.ce_overrides.extensions if spec.ce_overrides else None
        containers = spec.template.spec.containers
        self.supervisors = [
            ProcessSupervisor(
                ProcessSpec(
                    name=f"ContainerSource {resource.namespace}/{resource.name}"
                    + (f" [{c.name or i}]" if len(containers) > 1 else ""),
                    argv=[*(c.command or ()), *c.args],
                    env={var.name: var.value for var in c.env},
                    cwd=c.working_dir,
                ),
                sink_url=self.sink_url,
                extensions=extensions,
                grace=spec.template.spec.termination_grace_period_seconds,
            )
            for i, c in enumerate(containers)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def sink_url(self) -> str | None:
        """``K_SINK``: the sink's HTTP address, once Headwater listens (None before)."""
        if self._sink.ref is None:
            return self._sink.uri
        ref = self._sink.ref
        namespace = ref.namespace or self._namespace
        if ref.kind == "Broker":
            url = self._registry.ingress_url(namespace, ref.name)
        else:
            url = self._registry.channel_url(namespace, ref.name)
        # A wildcard bind address is not one to connect to: use loopback.
        return (
            url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")
            if url
            else None
        )

    async def start(self) -> None:
        # Owned and awaited in stop(): the processes live as long as the resource.
        self._tasks = [asyncio.create_task(s.run(), name=s.spec.name) for s in self.supervisors]

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {"sinkUri": self.sink_url(), "processes": [s.status() for s in self.supervisors]}


KINDS: dict[str, Kind] = {
    "EventDisplay": Kind(EventDisplayComponent, Stage.SINK),
    "Broker": Kind(BrokerComponent, Stage.FANOUT),
    "Channel": Kind(ChannelComponent, Stage.FANOUT),
    "InMemoryChannel": Kind(ChannelComponent, Stage.FANOUT),
    "Trigger": Kind(TriggerComponent, Stage.MEMBER),
    "Subscription": Kind(SubscriptionComponent, Stage.MEMBER),
    "PingSource": Kind(PingSourceComponent, Stage.SOURCE),
    "ContainerSource": Kind(ContainerSourceComponent, Stage.SOURCE),
}
"""What each kind becomes (``build(context, resource) -> Component``) and when it starts."""
