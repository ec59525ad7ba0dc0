"""W3C Trace Context: ``traceparent`` and ``tracestate``, parsed and written (sans-IO).

How this works: :func:`parse_traceparent` and :func:`parse_tracestate` are pure
functions from header (or MQTT User Property, or CloudEvent attribute) values
to a :class:`TraceContext`, or ``None`` for a value the spec says to ignore;
they never raise on input. :func:`extract` applies the rules that span both
fields (several ``traceparent`` values, ``tracestate`` without a valid
``traceparent``). A context is immutable and keeps the ids as the lower-case
hex the wire carries, so that propagating one costs no conversion.

What is accepted follows the W3C Recommendation (Trace Context Level 1,
section 3.2 and 3.3) and its test suite (``w3c/trace-context/test``):

* ``version``: two lower-case hex digits, not ``ff``. Version ``00`` is exactly
  ``00-{32 hex}-{16 hex}-{2 hex}``; a higher version is parsed "by trying the
  following": at least 55 characters, the same three fields, then the end of
  the value or a ``-`` (what follows it is a future field and is dropped).
* ``trace-id`` / ``parent-id``: lower-case hex ("HEXDIGLC"), not all zeros.
  Upper-case hex is invalid: "Vendors MUST ignore the traceparent when the
  parent-id is invalid (for example, if it contains non-lowercase hex
  characters)".
* leading and trailing spaces and tabs (HTTP's optional whitespace) are
  ignored; two ``traceparent`` values make both invalid.
* ``tracestate``: at most 32 list-members, each ``key=value`` with the key
  and value grammar of section 3.3.1.3 (a simple key, or ``tenant@system``),
  no key twice; empty members are allowed. "If the vendor failed to parse
  traceparent, it MUST NOT attempt to parse tracestate"; a tracestate that
  fails to parse is dropped whole, and never affects the traceparent.
* tracestate limits: "Vendors SHOULD propagate at least 512 characters of a
  combined header", so a longer one is cut to :data:`MAX_TRACESTATE` the way
  the spec asks ("Entries larger than 128 characters long SHOULD be removed
  first. Then entries SHOULD be removed starting from the end").

Only the ``sampled`` flag is understood; the other bits are kept when a
context is propagated unchanged and cleared when Headwater writes its own
("The behavior of other flags ... is not defined ... Vendors MUST set those to
zero").
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "MAX_TRACESTATE",
    "SAMPLED",
    "TRACEPARENT",
    "TRACESTATE",
    "TraceContext",
    "extract",
    "is_canonical",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "parse_tracestate",
    "remember_canonical",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
"""The names of the two fields: HTTP headers, MQTT 5 User Properties ("MUST be set
in user properties under the name traceparent. All lower case") and the
CloudEvents distributed tracing extension's attributes alike."""

SAMPLED: Final = 0x01
"""The ``sampled`` bit of ``trace-flags``."""

MAX_TRACESTATE: Final = 512
"""Characters of ``tracestate`` propagated at most: the spec's "at least 512" is
also enough for every vendor entry in practice, and keeps what an untrusted
device can make Headwater store and resend with every event small."""

_MAX_MEMBERS: Final = 32
_LARGE_MEMBER: Final = 128

# Version 00: the whole value. Higher versions: the same prefix, then the end
# or "-" and future fields.
_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch
_FUTURE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.S)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_OWS: Final = " \t"

# 3.3.1.3.1 (Level 1): simple-key / tenant-id "@" system-id.
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
).fullmatch
# 3.3.1.3.2: value = 0*255(chr) nblk-chr, chr = %x20 / nblk-chr,
# nblk-chr = %x21-2B / %x2D-3C / %x3E-7E.
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]").fullmatch


class TraceContext(NamedTuple):
    """One position in a trace: ``trace_id`` (32 hex), ``span_id`` (16 hex), flags, state.

    ``tracestate`` is the validated, combined list as propagated (``""`` when
    there is none). Build one with :func:`parse_traceparent` /
    :func:`extract`, or :meth:`child` of another. A named tuple, not a frozen
    dataclass: one is built per event on the hot path when tracing is on, and a
    tuple is several times cheaper to build while as immutable.
    """

    trace_id: str
    span_id: str
    flags: int = 0
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> str:
        """The value written out: always version ``00`` ("construct the new
        traceparent field according to the highest version ... known")."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self, span_id: str, sampled: bool) -> TraceContext:
        """The context of a new span under this one: same trace, its own id and
        recording decision, the state carried over unchanged."""
        return TraceContext(self.trace_id, span_id, SAMPLED if sampled else 0, self.tracestate)

    def fields(self) -> list[tuple[str, str]]:
        """``traceparent`` (and ``tracestate`` when there is one) as name/value pairs."""
        if self.tracestate:
            return [(TRACEPARENT, self.traceparent), (TRACESTATE, self.tracestate)]
        return [(TRACEPARENT, self.traceparent)]


def new_trace_id() -> str:
    """A random, valid trace-id (the spec's "considerations for trace-id field
    generation": random, so that sampling by trace-id is fair)."""
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    """A random, valid parent-id (span id)."""
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


_CANONICAL: set[str] = set()
_CANONICAL_MAX: Final = 4096
"""Values found canonical lately (or written so by Headwater): an event's value is
checked when a Trigger takes it and again when a sink writes it out, and a set
lookup costs a tenth of the pattern. Cleared when full (bounded memory)."""


def is_canonical(value: str) -> bool:
    """Whether ``value`` is a valid version-00 traceparent exactly as Headwater writes
    one (then it can be propagated as is, without parsing and writing it again)."""
    if value in _CANONICAL:
        return True
    if _V00(value) is None or value[3:35] == _ZERO_TRACE or value[36:52] == _ZERO_SPAN:
        return False
    remember_canonical(value)
    return True


def remember_canonical(value: str) -> None:
    """Note a value known to be canonical (one Headwater wrote)."""
    if len(_CANONICAL) >= _CANONICAL_MAX:
        _CANONICAL.clear()
    _CANONICAL.add(value)


def parse_traceparent(value: object) -> TraceContext | None:
    """The context in a ``traceparent`` value, or None when the spec says to ignore it.

    Any value, of any type, is safe to pass: what is not a valid traceparent
    (a number, a wrong length, upper-case hex, ``ff``, all-zero ids) is None.
    """
    if type(value) is not str:
        return None
    match = _V00(value)
    if match is None:
        value = value.strip(_OWS)
        match = _V00(value)
        if match is None:
            return _parse_future(value)
    trace_id, span_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16))


def _parse_future(value: str) -> TraceContext | None:
    """A version above 00: "If the size of the header is shorter than 55
    characters, the vendor should not parse the header"; else the three known
    fields, which must each be followed by a dash or (flags) the end."""
    if len(value) < 55:
        return None
    match = _FUTURE.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    # "Version ff is forbidden"; 00 reached here had trailing fields, which
    # version 00 does not have.
    if version in ("ff", "00") or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16))


def parse_tracestate(values: Iterable[str]) -> str | None:
    """The combined, validated ``tracestate`` of one or more values, or None if invalid.

    Several values are joined with commas first (RFC 7230 3.2.2, as the spec
    asks for several header fields). The result keeps the members in order,
    written ``key=value`` joined by ``,`` (optional whitespace dropped), cut to
    :data:`MAX_TRACESTATE`; ``""`` when there are no members.
    """
    members: list[str] = []
    keys: set[str] = set()
    for value in values:
        if type(value) is not str:
            return None
        for raw in value.split(","):
            member = raw.strip(_OWS)
            if not member:
                continue  # "Empty and whitespace-only list members are allowed"
            key, sep, val = member.partition("=")
            if not sep or _KEY(key) is None or _VALUE(val) is None or key in keys:
                return None
            keys.add(key)
            members.append(member)
            if len(members) > _MAX_MEMBERS:
                return None  # "There can be a maximum of 32 list-members"
    return _truncate(members)


def _truncate(members: list[str]) -> str:
    joined = ",".join(members)
    if len(joined) <= MAX_TRACESTATE:
        return joined
    # "the vendor MUST truncate whole entries. Entries larger than 128
    # characters long SHOULD be removed first. Then entries SHOULD be removed
    # starting from the end of tracestate."
    kept = [member for member in members if len(member) <= _LARGE_MEMBER]
    while kept and len(",".join(kept)) > MAX_TRACESTATE:
        kept.pop()
    return ",".join(kept)


def extract(traceparents: Iterable[str], tracestates: Iterable[str] = ()) -> TraceContext | None:
    """The incoming context of a message from all its ``traceparent`` and
    ``tracestate`` values (HTTP header fields or MQTT 5 User Properties).

    No valid traceparent, or more than one value (the test suite's
    "traceparent duplicated": a new trace), gives None; an invalid tracestate
    is dropped and the traceparent kept.
    """
    found: TraceContext | None = None
    for count, value in enumerate(traceparents):
        if count:
            return None
        found = parse_traceparent(value)
    if found is None:
        return None
    state = parse_tracestate(tracestates)
    if state:
        return TraceContext(found.trace_id, found.span_id, found.flags, state)
    return found
