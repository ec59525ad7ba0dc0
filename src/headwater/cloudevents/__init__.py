"""CloudEvents for Headwater: the event model, the JSON format and the protocol bindings.

All of it is sans-IO: pure functions over bytes, headers and values. Every
decoder raises :class:`InvalidEvent` (naming the attribute or header and the
rule) and nothing else; whatever decodes is a valid event that encodes again.

Decisions where the specifications leave room, each documented at its code:

* Nothing is added, dropped or rewritten in transit, with one exception the
  JSON format asks for (json-format.md 3.1.2): JSON data without
  ``datacontenttype`` gets ``application/json`` made explicit in binary modes.
* Data typed ``application/cloudevents...`` cannot be sent in HTTP, MQTT or
  Kafka binary mode (the receiver would read structured mode): encoding
  refuses it rather than produce a message that decodes to something else.
* CloudEvents 0.3 stays 0.3; its binary data without ``datacontentencoding``
  is written as ``data_base64`` rather than adding that attribute.
* Extension names are limited to 20 characters (a SHOULD made a MUST).
* Receivers fall back to structured JSON where a sender could not have used
  headers (a NATS message without headers, a Kafka record without
  ``content-type`` or ``ce_`` headers); MQTT User Properties that cannot be
  attribute names are application properties and are ignored.
"""

from headwater.cloudevents.errors import InvalidEvent
from headwater.cloudevents.event import NO_DATA, CloudEvent, is_json_content_type
from headwater.cloudevents.http import from_http, is_cloudevent, to_http, to_http_batch
from headwater.cloudevents.json import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    from_json,
    from_json_batch,
    to_json,
    to_json_batch,
)
from headwater.cloudevents.kafka import KafkaRecord, from_kafka, to_kafka
from headwater.cloudevents.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    MqttMessage,
    from_mqtt,
    is_cloudevent_mqtt,
    to_mqtt,
)
from headwater.cloudevents.nats import from_nats, to_nats

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "MQTT_3_1_1",
    "MQTT_5",
    "NO_DATA",
    "CloudEvent",
    "InvalidEvent",
    "KafkaRecord",
    "MqttMessage",
    "from_http",
    "from_json",
    "from_json_batch",
    "from_kafka",
    "from_mqtt",
    "from_nats",
    "is_cloudevent",
    "is_cloudevent_mqtt",
    "is_json_content_type",
    "to_http",
    "to_http_batch",
    "to_json",
    "to_json_batch",
    "to_kafka",
    "to_mqtt",
    "to_nats",
]
