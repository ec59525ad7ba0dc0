from __future__ import annotations

import io

import orjson
import pytest

from headwater.cloudevents import CloudEvent
from headwater.sinks.display import EventDisplaySink, format_pretty

EVENT = CloudEvent(
    {
        "specversion": "1.0",
        "id": "42",
        "source": "/greenhouse/s1",
        "type": "dev.headwater.telemetry",
        "time": "2026-11-28T12:00:00Z",
        "datacontenttype": "application/json",
        "subject": "s1",
        "zone": "north",
        "alert": True,
    },
    b'{"temperature":21.5}',
)


def test_pretty_matches_knative_event_display() -> None:
    assert format_pretty(EVENT) == (
        "☁️  cloudevents.Event\n"
        "Context Attributes,\n"
        "  specversion: 1.0\n"
        "  type: dev.headwater.telemetry\n"
        "  source: /greenhouse/s1\n"
        "  subject: s1\n"
        "  id: 42\n"
        "  time: 2026-11-28T12:00:00Z\n"
        "  datacontenttype: application/json\n"
        "Extensions,\n"
        "  alert: true\n"
        "  zone: north\n"
        "Data,\n"
        "  {\n"
        '    "temperature": 21.5\n'
        "  }"
    )


def test_pretty_shows_binary_and_text_data() -> None:
    base = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    assert format_pretty(CloudEvent(base, b"\xff\x00")).endswith("<2 bytes of binary data>")
    text = CloudEvent({**base, "datacontenttype": "text/plain"}, "line one\nline two")
    assert format_pretty(text).endswith("Data,\n  line one\n  line two")
    assert "Data," not in format_pretty(CloudEvent(base))


async def test_json_lines() -> None:
    out = io.StringIO()
    sink = EventDisplaySink("json", out)
    assert await sink.deliver(EVENT) is None
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert orjson.loads(line)["data"] == {"temperature": 21.5}


def test_unknown_format_rejected() -> None:
    with pytest.raises(ValueError, match="unknown EventDisplay format 'xml'"):
        EventDisplaySink("xml")
