"""MQTT topics as NATS subjects, and messages as they travel between nodes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cluster.mqtt.link import decode, encode, kv_key
from headwater.cluster.mqtt.subjects import (
    decode_level,
    encode_level,
    filter_subjects,
    subject_topic,
    topic_subject,
    unescape,
)
from headwater.mqtt.session import Message
from headwater.mqtt.topics import topic_matches

P = "hw.mqtt.src.s"

_TOKEN = re.compile(r"[^.\s*>]+\Z")

levels = st.text(
    st.characters(blacklist_characters="/#+\x00", blacklist_categories=("Cs",)), max_size=12
)
topics = st.lists(levels, min_size=1, max_size=5).map("/".join)


@pytest.mark.parametrize(
    ("level", "token"),
    [
        pytest.param("kitchen", "kitchen", id="plain"),
        pytest.param("", "%", id="empty"),
        pytest.param("a.b", "a%2Eb", id="dot"),
        pytest.param("*", "%2A", id="star"),
        pytest.param(">", "%3E", id="gt"),
        pytest.param("50%", "50%25", id="percent"),
        pytest.param("a b", "a%20b", id="space"),
        pytest.param("ü", "%C3%BC", id="utf8"),
        pytest.param("$SYS", "$SYS", id="dollar"),
    ],
)
def test_levels_become_safe_tokens(level: str, token: str) -> None:
    assert encode_level(level) == token
    assert decode_level(token) == level


@given(topics)
def test_every_topic_round_trips_and_makes_valid_tokens(topic: str) -> None:
    subject = topic_subject(P, topic)
    assert subject_topic(P, subject) == topic
    assert all(_TOKEN.match(t) for t in subject.split("."))


def test_filters_become_subjects_and_hash_matches_its_parent() -> None:
    assert filter_subjects(P, "a/+/c") == (f"{P}.a.*.c",)
    assert filter_subjects(P, "a/#") == (f"{P}.a.>", f"{P}.a")
    assert filter_subjects(P, "#") == (f"{P}.>",)
    assert filter_subjects(P, "+") == (f"{P}.*",)
    assert filter_subjects(P, "a//b") == (f"{P}.a.%.b",)


def _nats_matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


filters = st.lists(
    st.one_of(st.just("+"), levels.filter(lambda x: x != "")), min_size=1, max_size=4
).map("/".join) | st.lists(levels, min_size=0, max_size=3).map(lambda ls: "/".join([*ls, "#"]))


@given(filters, topics)
def test_nats_matching_of_the_subjects_covers_mqtt_matching(flt: str, topic: str) -> None:
    """What MQTT matches, NATS delivers (the node's own tree then applies MQTT's rules)."""
    if topic_matches(flt, topic):
        subject = topic_subject(P, topic)
        assert any(_nats_matches(p, subject) for p in filter_subjects(P, flt))


def test_kv_keys_are_allowed_and_long_topics_are_hashed() -> None:
    assert kv_key("sensors/one") == "sensors/one"
    assert kv_key("a.b c") == "a=2Eb=20c"
    assert unescape(kv_key("a.b c=ü"), "=") == "a.b c=ü"
    long = kv_key("x" * 300)
    assert long.startswith("h/") and len(long) < 100


@given(
    st.builds(
        Message,
        topics,
        st.binary(max_size=64),
        st.integers(0, 2),
        st.booleans(),
        st.none() | st.integers(0, 1),
        st.none() | st.floats(0, 2e9),
        st.none() | st.text(max_size=8),
        st.none() | topics,
        st.none() | st.binary(max_size=8),
        st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2).map(tuple),
        st.none() | st.text(max_size=8),
    )
)
def test_messages_travel_unchanged(message: Message) -> None:
    assert decode(encode(message, "n1", "id-1")) == (message, "n1", "id-1")


def test_garbage_is_not_an_envelope() -> None:
    with pytest.raises(ValueError):
        decode(b"no newline here")
