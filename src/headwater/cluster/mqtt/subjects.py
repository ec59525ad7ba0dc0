"""MQTT topics and filters as NATS subjects, one topic level per subject token.

How this works: an MQTT topic's levels (split at ``/``) become the tokens of
a NATS subject under a prefix, so that NATS's own interest matching does
MQTT's: the filter ``a/+/c`` is the subject ``<prefix>.a.*.c``, and ``a/#``
is ``<prefix>.a.>`` plus ``<prefix>.a`` (MQTT's ``#`` also matches the parent
level, NATS's ``>`` does not). A level is kept as it is when it consists of
characters that are plain in a NATS token (letters, digits, ``-``, ``_``,
``$``, ``:``, ``@``, ``=``, ``,``, ``~``, ``!``, ``'``, ``(``, ``)``);
otherwise each byte of its UTF-8 outside that set is written ``%XX``, and
an empty level is ``%`` alone (``%`` followed by anything else always has
two hex digits, so the encoding is unambiguous and reversible). No token
is then ever ``*``, ``>``, empty or contains ``.`` or white space.

NATS matching is a superset of MQTT's in one respect only: a filter that
starts with a wildcard matches topics beginning with ``$`` in NATS but not
in MQTT [MQTT-4.7.2-1]; the receiving node matches each message against its
own subscription tree, which applies the rule.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

__all__ = [
    "decode_level",
    "encode_level",
    "filter_subjects",
    "subject_topic",
    "topic_subject",
    "unescape",
]

_PLAIN: Final = re.compile(r"[A-Za-z0-9_\-$:@=,~!'()]+\Z")
_PLAIN_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-$:@=,~!'()"
)


def encode_level(level: str) -> str:
    """One topic level as a NATS token (see the module docstring)."""
    if _PLAIN.match(level):
        return level
    if not level:
        return "%"
    return "".join(chr(b) if b in _PLAIN_BYTES else f"%{b:02X}" for b in level.encode())


def decode_level(token: str) -> str:
    """The topic level a token stands for."""
    if "%" not in token:
        return token
    if token == "%":
        return ""
    return unescape(token, "%")


def unescape(text: str, marker: str) -> str:
    """``text`` with each ``<marker>XX`` (hex) turned back into its byte, read as UTF-8."""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == marker:
            raw += bytes.fromhex(text[i + 1 : i + 3])
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode(errors="replace")


@lru_cache(maxsize=65536)
def topic_subject(prefix: str, topic: str) -> str:
    """The subject a message on ``topic`` is published to."""
    return prefix + "." + ".".join(map(encode_level, topic.split("/")))


def subject_topic(prefix: str, subject: str) -> str:
    """The topic of a message received on ``subject`` (the inverse of :func:`topic_subject`)."""
    return "/".join(map(decode_level, subject[len(prefix) + 1 :].split(".")))


def filter_subjects(prefix: str, topic_filter: str) -> tuple[str, ...]:
    """The subjects whose messages a (valid, share-prefix-free) filter wants."""
    levels = topic_filter.split("/")
    tokens = ["*" if level == "+" else encode_level(level) for level in levels[:-1]]
    last = levels[-1]
    if last == "#":
        if not tokens:
            return (prefix + ".>",)
        parent = prefix + "." + ".".join(tokens)
        return (parent + ".>", parent)
    tokens.append("*" if last == "+" else encode_level(last))
    return (prefix + "." + ".".join(tokens),)
