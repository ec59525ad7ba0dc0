"""MQTT message -> CloudEvent: the mapping every MQTT source shares (pure functions).

How this works: a :class:`Mapping` is compiled once from a source's settings
(topic pattern, attribute templates, JMESPath lifts) and validated then, so a
bad template fails when the resource is applied, not at the first message.
:func:`to_cloudevent` turns one :class:`Inbound` message into an event:

* an MQTT 5 message that already carries a CloudEvent (binary-mode User
  Properties or an ``application/cloudevents*`` Content Type) is taken as is
  (``passthrough``), only the ``mqtt*`` extensions are added;
* otherwise the topic is matched against the pattern (``sensors/{device}/{metric}``:
  one ``{name}`` per topic level, a final ``#`` for any rest). A topic that
  does not match raises :class:`Unmatched` (the caller routes the message
  between devices as usual, and counts it); every capture becomes an
  extension and a template variable;
* ``type``/``source``/``subject`` are templates over the captures plus
  ``{topic}``, ``{clientid}`` and ``{listener}``;
* ``datacontenttype`` is the MQTT 5 Content Type, else ``application/json``
  when the payload parses as JSON, else ``application/octet-stream`` (so a
  non-UTF-8 payload is carried, unchanged, as bytes);
* JMESPath expressions lift payload fields into extensions so CESQL can filter
  on them. CloudEvents has no float type: an integral number within 32 bits
  becomes an Integer, any other number or value its JSON text as a String,
  a bool a Boolean; a missing field (JMESPath ``null``) adds nothing.

The ``id`` comes from the caller (an :class:`IdSequence`), unique per message:
the mapping never invents randomness, so it stays a pure function.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple

import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent
from headwater.cloudevents._types import check_media_type, check_string, check_timestamp
from headwater.cloudevents.mqtt import MQTT_5, from_mqtt, is_cloudevent_mqtt

__all__ = [
    "DEFAULT_TYPE",
    "IdSequence",
    "Inbound",
    "InvalidMapping",
    "Mapping",
    "TopicPattern",
    "Unmatched",
    "timestamp",
    "to_cloudevent",
]

DEFAULT_TYPE: Final = "dev.headwater.mqtt.message"
DEFAULT_SOURCE: Final = "mqtt://{listener}/{topic}"
DEFAULT_SUBJECT: Final = "{topic}"
OCTET_STREAM: Final = "application/octet-stream"
JSON: Final = "application/json"

_INT32 = range(-(2**31), 2**31)
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}\Z")
_CAPTURE = re.compile(r"\{([a-z0-9]+)\}\Z")
_BUILTINS: Final = frozenset({"topic", "clientid", "listener"})
_RESERVED: Final = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
    | {"data", "data_base64", "mqtttopic", "mqttqos", "mqttretain"}
)


class InvalidMapping(ValueError):
    """A mapping setting that can never work; raised when the mapping is compiled."""


class Unmatched(LookupError):
    """The topic does not match the source's topic pattern: not an event of this source."""


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """``sensors/{device}/{metric}``: literal levels, ``{name}`` captures one level, final ``#``.

    ``filter`` is the MQTT topic filter that subscribes to exactly these topics.
    """

    text: str
    levels: tuple[tuple[bool, str], ...]  # (is capture, literal text or capture name)
    rest: bool
    filter: str

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        if not text:
            raise InvalidMapping("the topic pattern is empty")
        parts = text.split("/")
        rest = parts[-1] == "#"
        if rest:
            parts = parts[:-1]
        levels: list[tuple[bool, str]] = []
        seen: set[str] = set()
        for part in parts:
            m = _CAPTURE.match(part)
            if m:
                name = m.group(1)
                if name in seen:
                    raise InvalidMapping(f"topic pattern {text!r}: {{{name}}} appears twice")
                if name in _RESERVED or name in _BUILTINS or len(name) > 20:
                    raise InvalidMapping(
                        f"topic pattern {text!r}: {{{name}}} cannot be an extension name "
                        f"(reserved, or longer than 20 characters)"
                    )
                seen.add(name)
                levels.append((True, name))
            elif "{" in part or "}" in part or part in ("+", "#") or "+" in part or "#" in part:
                raise InvalidMapping(
                    f"topic pattern {text!r}: level {part!r} must be a literal, a whole "
                    "{name} of lower-case letters and digits, or a final '#'"
                )
            else:
                levels.append((False, part))
        mqtt_filter = "/".join("+" if capture else lit for capture, lit in levels)
        if rest:
            mqtt_filter = f"{mqtt_filter}/#" if levels else "#"
        return cls(text, tuple(levels), rest, mqtt_filter)

    @property
    def captures(self) -> tuple[str, ...]:
        return tuple(name for capture, name in self.levels if capture)

    def match(self, topic: str) -> dict[str, str] | None:
        """The captures of ``topic``, or ``None`` when it does not match."""
        parts = topic.split("/")
        n = len(self.levels)
        if len(parts) < n or (len(parts) > n and not self.rest):
            return None
        found: dict[str, str] = {}
        for part, (capture, text) in zip(parts, self.levels, strict=False):
            if capture:
                found[text] = part
            elif part != text:
                return None
        return found


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, variables: frozenset[str], what: str) -> _Template:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise InvalidMapping(f"{what} template {text!r}: {exc}") from exc
        fields = []
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if spec or conversion or name not in variables:
                known = ", ".join(sorted(variables))
                raise InvalidMapping(
                    f"{what} template {text!r}: unknown variable {{{name}}}; use one of {known}"
                )
            fields.append(name)
        return cls(text, tuple(fields))

    def render(self, values: MappingABC[str, str]) -> str:
        return self.text.format_map(values) if self.fields else self.text


class Inbound(NamedTuple):
    """One MQTT PUBLISH as a source receives it (no MQTT library types); a named
    tuple, built once per message at the lowest cost."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    client_id: str = ""
    listener: str = "localhost"
    version: int = MQTT_5


@dataclass(frozen=True, slots=True)
class Mapping:
    """A compiled mapping; build it with :meth:`compile` (which validates everything)."""

    pattern: TopicPattern | None
    type: _Template
    source: _Template
    subject: _Template | None
    extensions: tuple[tuple[str, ParsedResult], ...]
    time: ParsedResult | None
    passthrough: bool = True
    static: tuple[tuple[str, str], ...] = field(default=())
    #: Attributes the destination would add to every event anyway (a Broker's
    #: ``knativebrokerttl``), set here once per topic instead of per event there.
    stamped: tuple[tuple[str, Any], ...] = field(default=())
    #: Whether a template uses the client id / the listener (then attributes
    #: differ per client / listener, not only per topic).
    per_client: bool = False
    per_listener: bool = False
    #: Per topic (and client id / listener where a template uses them): the
    #: attributes that follow from them, validated once (or ``Unmatched``).
    _by_topic: dict[tuple[str, str, str], _Topic | Unmatched] = field(
        default_factory=dict, compare=False, repr=False
    )

    def stamping(self, attributes: MappingABC[str, Any]) -> Mapping:
        """This mapping, also setting ``attributes`` on every event (validated
        with the rest of the topic's attributes)."""
        return replace(self, stamped=tuple(attributes.items()), _by_topic={})

    @classmethod
    def compile(
        cls,
        *,
        topic_pattern: str | None = None,
        type: str = DEFAULT_TYPE,
        source: str = DEFAULT_SOURCE,
        subject: str | None = DEFAULT_SUBJECT,
        extensions: MappingABC[str, str] | None = None,
        time: str | None = None,
        passthrough: bool = True,
        static: MappingABC[str, str] | None = None,
    ) -> Mapping:
        pattern = TopicPattern.parse(topic_pattern) if topic_pattern else None
        variables = _BUILTINS | frozenset(pattern.captures if pattern else ())
        lifted: list[tuple[str, ParsedResult]] = []
        for name, expression in (extensions or {}).items():
            _check_extension_name(name, "extension")
            if pattern is not None and name in pattern.captures:
                raise InvalidMapping(f"extension {name!r} is also a topic capture")
            lifted.append((name, _jmespath(expression, f"extension {name!r}")))
        for name in static or {}:
            _check_extension_name(name, "static extension")
        templates = (
            _Template.parse(type, variables, "type"),
            _Template.parse(source, variables, "source"),
            _Template.parse(subject, variables, "subject") if subject else None,
        )
        used = {name for t in templates if t is not None for name in t.fields}
        return cls(
            pattern,
            *templates,
            tuple(lifted),
            _jmespath(time, "time") if time else None,
            passthrough,
            tuple((static or {}).items()),
            per_client="clientid" in used,
            per_listener="listener" in used,
        )

    @property
    def topic_filter(self) -> str:
        """The MQTT filter that selects this mapping's topics (``#`` without a pattern)."""
        return self.pattern.filter if self.pattern is not None else "#"


def _check_extension_name(name: str, what: str) -> None:
    if not _ATTRIBUTE_NAME.match(name) or name in _RESERVED:
        raise InvalidMapping(
            f"{what} {name!r}: CloudEvents extension names are 1-20 lower-case letters or "
            "digits, and not a core attribute or mqtttopic/mqttqos/mqttretain"
        )


def _jmespath(expression: str, what: str) -> ParsedResult:
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise InvalidMapping(f"{what}: invalid JMESPath {expression!r}: {exc}") from exc


def _lifted(value: Any) -> str | int | bool | None:
    """A JSON value as a CloudEvents attribute value (see the module docstring)."""
    if value is None:
        return None
    if type(value) is bool or type(value) is str:
        return value
    if type(value) is int and value in _INT32:
        return value
    if type(value) is float and value.is_integer() and int(value) in _INT32:
        return int(value)
    return orjson.dumps(value).decode()


_JSON_FIRST_BYTES: Final = frozenset(b'{["-0123456789tfn \t\r\n')
"""The bytes a JSON text can begin with (RFC 8259 §2: ``ws value ws``; a value is an
object, array, string, number, ``true``, ``false`` or ``null``). A payload that
begins otherwise (binary telemetry, CBOR, protobuf) is not JSON, and is known
to be without a failed parse, whose exception costs seven times a successful one."""


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON or media.endswith("+json")


def to_cloudevent(mapping: Mapping, message: Inbound, event_id: str, now: float) -> CloudEvent:
    """The CloudEvent for ``message``.

    Raises :class:`Unmatched` when the topic is not this source's, and
    :class:`~headwater.cloudevents.InvalidEvent` when a carried CloudEvent is
    malformed or a template renders an invalid attribute.
    """
    return map_publish(mapping, *message, event_id, now)


def map_publish(
    mapping: Mapping,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    content_type: str | None,
    user_properties: tuple[tuple[str, str], ...],
    client_id: str,
    listener: str,
    version: int,
    event_id: str,
    now: float,
    records: list[bytes | None] | None = None,
) -> CloudEvent:
    """:func:`to_cloudevent` from the fields of an :class:`Inbound` (the hot path:
    a source that has them at hand saves building one per message).

    With ``records``, the event's log record is appended to it: encoded here
    from the topic's attributes encoded once (an event of the usual shape:
    nothing lifted, every attribute the mapping stamps as stamped), else None
    (the log encodes it).
    """
    if (
        mapping.passthrough
        and version == MQTT_5
        and is_cloudevent_mqtt(content_type, user_properties)
    ):
        carried = from_mqtt(payload, content_type, user_properties)
        if records is not None:
            records.append(None)
        return carried.evolve({"mqtttopic": topic, "mqttqos": qos, "mqttretain": retain})
    key = (
        topic,
        client_id if mapping.per_client else "",
        listener if mapping.per_listener else "",
    )
    found = mapping._by_topic.get(key)
    entry = (
        found if type(found) is _Topic else _topic_entry(mapping, key, topic, client_id, listener)
    )
    base = entry.attributes
    parsed: Any = None
    is_json = False
    foreign_type: str | None = None
    if content_type is not None and not _is_media_type(content_type):
        # MQTT 5 Content Type is "a UTF-8 Encoded String describing the content
        # of the Application Message" (§3.3.2.3.9) and its meaning is the
        # application's business [MQTT-3.3.2-19]: a value that is no media type
        # (`text`, empty) cannot be `datacontenttype`, but it is never a reason to
        # refuse a device's telemetry. It is kept in `mqttcontenttype` instead.
        foreign_type, content_type = content_type, None
    lifting = bool(mapping.extensions or mapping.time)
    if content_type is None:
        if payload and payload[0] in _JSON_FIRST_BYTES:
            try:
                parsed = orjson.loads(payload)
                is_json = True
            except orjson.JSONDecodeError:
                pass
        content_type = JSON if is_json else OCTET_STREAM
    elif lifting and _is_json(content_type):
        try:
            parsed = orjson.loads(payload)
            is_json = True
        except orjson.JSONDecodeError:
            pass  # declared JSON but is not: carried as is, nothing lifted
    # The attributes of the topic were validated when first seen; the rest of
    # what is set here is valid by construction (the id from IdSequence, the
    # time from timestamp(), a media type checked above, QoS 0-2, a bool), but
    # what comes from the payload, which is checked value by value.
    attributes = base.copy()
    attributes["id"] = event_id
    attributes["time"] = stamp = timestamp(now)
    attributes["datacontenttype"] = content_type
    attributes["mqttqos"] = qos
    attributes["mqttretain"] = retain
    usual = foreign_type is None and not (is_json and lifting)
    if foreign_type is not None and foreign_type.isprintable():
        attributes[CONTENT_TYPE_EXTENSION] = foreign_type
    if is_json and lifting:
        for name, expression in mapping.extensions:
            value = _lifted(_search(expression, parsed))
            if value is not None:
                if type(value) is str and not (value.isascii() and value.isprintable()):
                    check_string(name, value)
                attributes[name] = value
        if mapping.time is not None:
            device_time = _search(mapping.time, parsed)
            if device_time is not None:
                attributes["time"] = check_timestamp("time", _device_time(device_time))
    if records is not None:  # last: nothing raises after the record is in
        head = entry.head
        if head is None or not usual:
            records.append(None)  # another shape: encoded by the log
        else:
            tail = _tail(stamp, content_type, qos, retain)
            records.append(entry.record(head, _dumps(event_id), tail, payload))
    return CloudEvent._trusted(attributes, payload if payload else NO_DATA)


CONTENT_TYPE_EXTENSION: Final = "mqttcontenttype"
"""Where an MQTT 5 Content Type that is not a media type goes (see :func:`to_cloudevent`)."""


@lru_cache(maxsize=256)
def _is_media_type(value: str) -> bool:
    try:
        check_media_type("datacontenttype", value)
    except InvalidEvent:
        return False
    return True


#: Topics whose attributes a mapping remembers; the memory is cleared when full.
TOPIC_CACHE_MAX: Final = 10_000


class _Topic:
    """What follows from a topic (and client id and listener where a template uses
    them): its validated attributes, and the start of their records."""

    __slots__ = ("attributes", "head", "record")

    def __init__(self, mapping: Mapping, attributes: dict[str, Any]) -> None:
        # Here, not at the top: the resource schema validates mappings with this
        # module and must not load the event log (tests/unit/test_light_imports.py).
        from headwater.log import attributes_head, bytes_record

        self.attributes = attributes
        #: The log's record of an event of this topic (see :func:`map_publish`).
        self.record = bytes_record
        #: The attributes JSON of the topic's events up to their id's value (see
        #: :func:`~headwater.log.bytes_record`); None when it cannot be written once,
        #: or when a capture replaced an attribute the mapping stamps (so that
        #: every record carries the stamped attributes, as the source promises).
        self.head: bytes | None = None
        if all(attributes.get(name, _MISSING) == value for name, value in mapping.stamped):
            head = attributes_head(attributes)
            if head is not None:
                self.head = head + b',"id":'


_MISSING: Final = object()
_dumps: Final = orjson.dumps

#: The attributes JSON after the id, per (time, content type, QoS, retain) of the
#: latest receive times (a batch shares its time): written once each.
_tails: dict[tuple[str, str, int, bool], bytes] = {}


def _tail(stamp: str, content_type: str, qos: int, retain: bool) -> bytes:
    key = (stamp, content_type, qos, retain)
    tail = _tails.get(key)
    if tail is None:
        if len(_tails) >= 64:
            _tails.clear()
        json = _dumps(
            {"time": stamp, "datacontenttype": content_type, "mqttqos": qos, "mqttretain": retain}
        )
        tail = _tails[key] = b"," + json[1:]
    return tail


def _topic_entry(
    mapping: Mapping, key: tuple[str, str, str], topic: str, client_id: str, listener: str
) -> _Topic:
    """The topic's entry (validated attributes, cached); raises :class:`Unmatched` or
    :class:`~headwater.cloudevents.InvalidEvent` as the mapping would."""
    cache = mapping._by_topic
    found = cache.get(key)
    if found is None:
        try:
            found = _Topic(mapping, _render_topic(mapping, topic, client_id, listener))
        except Unmatched as exc:
            found = exc
        if len(cache) >= TOPIC_CACHE_MAX:
            cache.clear()
        cache[key] = found
    if isinstance(found, Unmatched):
        raise found
    return found


def _render_topic(mapping: Mapping, topic: str, client_id: str, listener: str) -> dict[str, Any]:
    captures: dict[str, str] = {}
    if mapping.pattern is not None:
        matched = mapping.pattern.match(topic)
        if matched is None:
            raise Unmatched(f"topic {topic!r} does not match {mapping.pattern.text!r}")
        captures = matched
    variables = {**captures, "topic": topic, "clientid": client_id, "listener": listener}
    attributes: dict[str, object] = {
        "specversion": "1.0",
        "id": "-",
        "source": mapping.source.render(variables),
        "type": mapping.type.render(variables),
    }
    if mapping.subject is not None:
        attributes["subject"] = mapping.subject.render(variables)
    attributes.update(mapping.static)
    attributes.update(mapping.stamped)
    attributes.update(captures)
    attributes["mqtttopic"] = topic
    # Validated as a whole event once (InvalidEvent for a bad rendering, not cached).
    validated = CloudEvent(attributes).attributes
    return {k: v for k, v in validated.items() if k != "id"}


def _search(expression: ParsedResult, document: Any) -> Any:
    ast = expression.parsed
    if ast["type"] == "field":
        # A top-level key, the usual lift (`temperature`): the same result as
        # JMESPath's interpreter (None for a missing key or a non-object) at a
        # fraction of its cost per message.
        return document.get(ast["value"]) if type(document) is dict else None
    try:
        return expression.search(document)
    except JMESPathError:
        return None  # a type error in the expression against this payload: nothing lifted


_last_stamp: tuple[float, str] = (0.0, "")


def timestamp(now: float) -> str:
    """``now`` (epoch seconds) as RFC 3339 with microseconds, in UTC.

    The events of one batch share their receive time: the last value is kept,
    so that a batch formats it once.
    """
    global _last_stamp
    if _last_stamp[0] == now:
        return _last_stamp[1]
    text = (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )
    _last_stamp = (now, text)
    return text


def _device_time(value: Any) -> str:
    """A device time: epoch seconds (number) or an RFC 3339 string (validated by the event)."""
    if type(value) in (int, float):
        try:
            return timestamp(float(value))
        except (ValueError, OverflowError, OSError) as exc:
            # Milliseconds or nanoseconds since the epoch (Go's UnixNano), NaN, inf:
            # datetime refuses them with one of three exceptions, by size.
            raise InvalidEvent(
                "time", f"the device time {value!r} is not a time in epoch seconds ({exc})"
            ) from exc
    if type(value) is str:
        return value
    raise InvalidEvent("time", f"the device time {value!r} is not a number or a string")


class IdSequence:
    """Unique event ids: ``{prefix}-{n}``, with a random prefix per source instance.

    The prefix is 64 random bits, so ids of a restarted source never collide
    with ones it appended before.
    """

    __slots__ = ("_n", "prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or secrets.token_hex(8)
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self.prefix}-{self._n}"

    def take(self, count: int) -> list[str]:
        """The next ``count`` ids at once (a batch's, formatted in one pass)."""
        first = self._n + 1
        self._n += count
        prefix = self.prefix
        return [f"{prefix}-{n}" for n in range(first, first + count)]
