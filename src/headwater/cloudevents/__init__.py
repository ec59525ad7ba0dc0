"""CloudEvents for Headwater: the event model, the JSON format and the protocol bindings.

All of it is sans-IO: pure functions over bytes, headers and values.
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
