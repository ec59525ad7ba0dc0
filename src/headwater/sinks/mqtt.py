"""MqttSink: CloudEvents out to MQTT (commands to devices), with request/response.

How this works: :meth:`MqttSink.deliver` renders the topic template
(``devices/{subject}/commands``: ``{id}``, ``{source}``, ``{type}``,
``{subject}`` or ``{ext.<name>}``), encodes the event with the CloudEvents
MQTT binding (binary mode by default on MQTT 5, structured otherwise) and
publishes it through a :class:`Publisher`: the embedded broker in-process
(no socket) or an external broker over :class:`~headwater.mqtt.client.Client`
(reconnected on the next delivery after a failure). A missing template
variable is a non-retryable 400; a broker that is down or refuses is a
retryable 503, so the Trigger's retries and dead letter sink apply.

Request/response: when the event has a ``correlationid`` extension, the
PUBLISH carries an MQTT 5 Response Topic (``{response prefix}/{event id}``) and
Correlation Data (the correlation id), and delivery waits up to
``response_timeout`` for the device's answer on that topic. The answer
becomes the reply CloudEvent: taken as is if it is one (MQTT 5 binary or
structured), else ``dev.headwater.command.response`` with the payload as data,
the command's subject and ``correlationid``. No answer in time: 504,
retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
from dataclasses import dataclass, replace
from typing import Final, Protocol

from headwater.cloudevents import CloudEvent, InvalidEvent
from headwater.cloudevents.mqtt import MQTT_5, Mode, from_mqtt, is_cloudevent_mqtt, to_mqtt
from headwater.eventing import DeliveryError
from headwater.mqtt.client import Client, ClientConfig, ConnectionLost, PublishRefused
from headwater.mqtt.packets import Properties, ReasonCode
from headwater.mqtt.session import Message
from headwater.sources.mapping import JSON, OCTET_STREAM
from headwater.sources.mqttbroker import MqttBrokerSource
from headwater.tracing.flows import trace_fields

__all__ = [
    "CORRELATION_EXTENSION",
    "RESPONSE_TYPE",
    "EmbeddedPublisher",
    "ExternalPublisher",
    "MqttSink",
    "Publisher",
    "Response",
    "TopicTemplate",
]

CORRELATION_EXTENSION: Final = "correlationid"
RESPONSE_TYPE: Final = "dev.headwater.command.response"


#: Refusals a resend cannot change: the event goes to the dead letters at once.
_PERMANENT_REFUSALS: Final = frozenset(
    {
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.TOPIC_NAME_INVALID,
        ReasonCode.PAYLOAD_FORMAT_INVALID,
        ReasonCode.PACKET_TOO_LARGE,
    }
)


@dataclass(frozen=True, slots=True)
class Response:
    """A device's answer: what the response PUBLISH carried."""

    payload: bytes
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


class Publisher(Protocol):
    """Where an MqttSink publishes: the embedded broker or an external one."""

    version: int

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        *,
        content_type: str | None,
        user_properties: tuple[tuple[str, str], ...],
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None: ...

    def expect_response(self, topic: str) -> asyncio.Future[Response]: ...


class TopicTemplate:
    """A compiled topic template; :meth:`render` raises ``KeyError`` for a missing value."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parts = [(literal, name) for literal, name, _, _ in string.Formatter().parse(text)]

    def render(self, event: CloudEvent) -> str:
        out = []
        for literal, name in self._parts:
            out.append(literal)
            if name is None:
                continue
            attribute = name[4:] if name.startswith("ext.") else name
            value = event.get(attribute)
            if value is None:
                raise KeyError(attribute)
            text = str(value)
            if not text or ("/" in text and name != "source") or "+" in text or "#" in text:
                raise KeyError(f"{attribute} (value {text[:60]!r} cannot be one topic level)")
            out.append(text)
        return "".join(out)


class MqttSink:
    """The Sink; ``close()`` closes an external connection."""

    def __init__(
        self,
        topic: str,
        publisher: Publisher,
        *,
        qos: int = 1,
        retain: bool = False,
        mode: Mode = "binary",
        response_prefix: str = "headwater/responses",
        response_timeout: float = 10.0,
        source: str = "/headwater/sinks/mqtt",
    ) -> None:
        self.template = TopicTemplate(topic)
        self.publisher = publisher
        self.qos = qos
        self.retain = retain
        self.mode: Mode = mode if publisher.version == MQTT_5 else "structured"
        self.response_prefix = response_prefix
        self.response_timeout = response_timeout
        self.source = source
        self.published = 0
        self.responses = 0

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        try:
            topic = self.template.render(event)
        except KeyError as exc:
            raise DeliveryError(
                400, False, reason=f"topic template {self.template.text!r}: no value for {exc}"
            ) from exc
        message = to_mqtt(event, self.mode, version=self.publisher.version)
        user_properties = message.user_properties
        if self.mode == "structured" and self.publisher.version == MQTT_5:
            # Trace Context: MQTT: "User properties MUST be used to propagate trace
            # context" (binary mode carries the event's as attributes already).
            user_properties = (*user_properties, *trace_fields(event))
        correlation = event.get(CORRELATION_EXTENSION)
        waiting: asyncio.Future[Response] | None = None
        response_topic = None
        if correlation is not None and self.publisher.version == MQTT_5:
            response_topic = f"{self.response_prefix}/{event.id}".replace("+", "_").replace(
                "#", "_"
            )
            waiting = self.publisher.expect_response(response_topic)
        try:
            await self.publisher.publish(
                topic,
                message.payload,
                self.qos,
                self.retain,
                content_type=message.content_type,
                user_properties=user_properties,
                response_topic=response_topic,
                correlation_data=str(correlation).encode() if waiting is not None else None,
            )
            self.published += 1
            if waiting is None:
                return None
            try:
                response = await asyncio.wait_for(waiting, self.response_timeout)
            except TimeoutError as exc:
                raise DeliveryError(
                    504,
                    True,
                    reason=f"no response on {response_topic!r} in {self.response_timeout}s",
                ) from exc
        except PublishRefused as exc:
            # What the broker can never take is not worth retrying (dead letter);
            # anything else (quota, a busy broker) may pass later.
            permanent = exc.reason_code in _PERMANENT_REFUSALS
            raise DeliveryError(
                400 if permanent else 503, not permanent, reason=f"publish to {topic!r}: {exc}"
            ) from exc
        except (ConnectionLost, OSError) as exc:
            raise DeliveryError(503, True, reason=f"publish to {topic!r}: {exc}") from exc
        finally:
            if waiting is not None and not waiting.done():
                waiting.cancel()
        self.responses += 1
        return self._reply(event, response, str(correlation))

    def _reply(self, command: CloudEvent, response: Response, correlation: str) -> CloudEvent:
        if is_cloudevent_mqtt(response.content_type, response.user_properties):
            try:
                reply = from_mqtt(response.payload, response.content_type, response.user_properties)
            except InvalidEvent as exc:
                raise DeliveryError(502, False, reason=f"the device's response: {exc}") from exc
            if CORRELATION_EXTENSION not in reply:
                reply = reply.evolve({CORRELATION_EXTENSION: correlation})
            return reply
        content_type = response.content_type
        if content_type is None:
            try:
                import orjson

                orjson.loads(response.payload)
                content_type = JSON
            except orjson.JSONDecodeError:
                content_type = OCTET_STREAM
        attributes: dict[str, object] = {
            "specversion": "1.0",
            "id": f"{command.id}.response",
            "source": self.source,
            "type": RESPONSE_TYPE,
            "datacontenttype": content_type,
            CORRELATION_EXTENSION: correlation,
        }
        if command.subject is not None:
            attributes["subject"] = command.subject
        return CloudEvent(attributes, response.payload)

    async def close(self) -> None:
        closer = getattr(self.publisher, "close", None)
        if closer is not None:
            await closer()


class ExternalPublisher:
    """Publishes to an external broker; connects on first use and after a failure."""

    def __init__(self, config: ClientConfig) -> None:
        # Responses carry nothing to keep: acknowledged on receipt.
        self.config = replace(config, auto_ack=True)
        self.version = int(config.version)
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._responses: dict[str, asyncio.Future[Response]] = {}
        self._router: asyncio.Task[None] | None = None
        self.response_filter = f"headwater/responses/{config.client_id or 'sink'}/#"

    async def _connected(self) -> Client:
        client = self._client
        if client is not None and not client.closed:
            return client
        async with self._lock:
            if self._client is not None and not self._client.closed:
                return self._client
            await self._drop()
            client = Client(self.config)
            await client.__aenter__()
            if self.version == MQTT_5:
                await client.subscribe([(self.response_filter, 1)])
            self._client = client
            self._router = asyncio.get_running_loop().create_task(self._route(client))
            return client

    async def _route(self, client: Client) -> None:
        async for message in client.messages:
            future = self._responses.pop(message.topic, None)
            if future is not None and not future.done():
                p = message.properties
                future.set_result(Response(message.payload, p.content_type, p.user_properties))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        *,
        content_type: str | None,
        user_properties: tuple[tuple[str, str], ...],
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        client = await self._connected()
        properties = (
            Properties(
                content_type=content_type,
                user_properties=user_properties,
                response_topic=response_topic,
                correlation_data=correlation_data,
            )
            if self.version == MQTT_5
            else Properties()
        )
        await client.publish(topic, payload, qos, retain, properties)

    def expect_response(self, topic: str) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        # The response topic lives under this client's subscription.
        self._responses[topic] = future
        future.add_done_callback(lambda _: self._responses.pop(topic, None))
        return future

    async def _drop(self) -> None:
        if self._router is not None:
            self._router.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._router
            self._router = None
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def close(self) -> None:
        await self._drop()


class EmbeddedPublisher:
    """Publishes into the embedded broker of an MqttBrokerSource, in-process."""

    version = MQTT_5

    def __init__(self, source: MqttBrokerSource) -> None:
        self.source = source

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        *,
        content_type: str | None,
        user_properties: tuple[tuple[str, str], ...],
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        await self.source.broker.publish(
            topic,
            payload,
            qos,
            retain,
            content_type=content_type,
            user_properties=user_properties,
            response_topic=response_topic,
            correlation_data=correlation_data,
        )

    def expect_response(self, topic: str) -> asyncio.Future[Response]:
        message = self.source.expect_response(topic)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def done(m: asyncio.Future[Message]) -> None:
            if future.done():
                return
            if m.cancelled():
                future.cancel()
            else:
                msg = m.result()
                future.set_result(Response(msg.payload, msg.content_type, msg.user_properties))

        message.add_done_callback(done)
        future.add_done_callback(lambda f: message.cancel() if f.cancelled() else None)
        return future
