"""EventDisplay: print each event like Knative's event_display, or as one JSON line.

The pretty form is the CloudEvents Go SDK's ``Event.String()``, which is what
Knative's ``event_display`` logs: context attributes, extensions (sorted), then
the data, pretty-printed when it is JSON.
"""

from __future__ import annotations

import base64
import sys
from typing import TextIO

import orjson

from headwater.cloudevents import CloudEvent, to_json
from headwater.cloudevents.event import is_json_content_type

# The order in which the Go SDK prints context attributes.
_CONTEXT_ORDER = (
    "specversion",
    "type",
    "source",
    "subject",
    "id",
    "time",
    "dataschema",
    "schemaurl",
    "datacontenttype",
    "datacontentencoding",
)


def format_pretty(event: CloudEvent) -> str:
    """The event as Knative's event_display shows it."""
    lines = ["☁️  cloudevents.Event", "Context Attributes,"]
    attributes = event.attributes
    lines.extend(f"  {n}: {_text(attributes[n])}" for n in _CONTEXT_ORDER if n in attributes)
    extensions = {k: v for k, v in attributes.items() if k not in _CONTEXT_ORDER}
    if extensions:
        lines.append("Extensions,")
        lines.extend(f"  {name}: {_text(extensions[name])}" for name in sorted(extensions))
    if event.has_data:
        lines.append("Data,")
        lines.append("  " + _data_text(event).replace("\n", "\n  "))
    return "\n".join(lines)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _data_text(event: CloudEvent) -> str:
    data = event.data
    if is_json_content_type(event.datacontenttype):
        try:
            value = orjson.loads(data) if isinstance(data, bytes) else data
            return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        except (orjson.JSONDecodeError, TypeError):
            pass
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(data)} bytes of binary data>"
    return str(data)


class EventDisplaySink:
    """A sink that writes every event to a stream (stdout by default) and never fails."""

    def __init__(self, fmt: str = "pretty", stream: TextIO | None = None) -> None:
        if fmt not in ("pretty", "json"):
            raise ValueError(f"unknown EventDisplay format {fmt!r}; use 'pretty' or 'json'")
        self._format = fmt
        self._stream = stream

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        stream = self._stream or sys.stdout
        if self._format == "json":
            stream.write(to_json(event).decode() + "\n")
        else:
            stream.write(format_pretty(event) + "\n")
        stream.flush()
        return None

    async def close(self) -> None:
        return None
