"""Topic validation and the subscription tree (MQTT 5.0 §4.7, §4.8.2; 3.1.1 §4.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.mqtt.topics import (
    InvalidTopic,
    SharedFilter,
    SubscriptionTree,
    filter_covers,
    parse_filter,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty-4.7.3-1"),
        pytest.param("a/\x00", id="nul-4.7.3-2"),
        pytest.param("a/+", id="plus-3.3.2-2"),
        pytest.param("a/#", id="hash-3.3.2-2"),
        pytest.param("é" * 40000, id="too-long"),
    ],
)
def test_invalid_topic_names(name: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic_name(name)


@pytest.mark.parametrize("name", ["a", "/", "a//b", "$SYS/x", " ", "a/b/c/d"])
def test_valid_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize(
    "topic_filter",
    [
        pytest.param("", id="empty"),
        pytest.param("sport/tennis#", id="hash-not-alone-4.7.1-2"),
        pytest.param("sport/tennis/#/ranking", id="hash-not-last-4.7.1-2"),
        pytest.param("sport+", id="plus-not-alone-4.7.1-3"),
        pytest.param("sport/+tennis", id="plus-prefix-4.7.1-3"),
        pytest.param("a\x00", id="nul"),
    ],
)
def test_invalid_filters(topic_filter: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["#", "+", "+/+", "/+", "sport/#", "+/tennis/#", "$SYS/#"])
def test_valid_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/b", SharedFilter(None, "a/b")),
        ("$share/g1/a/+", SharedFilter("g1", "a/+")),
        ("$share/g/#", SharedFilter("g", "#")),
    ],
)
def test_parse_filter(text: str, expected: SharedFilter) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("$share/", id="no-name-4.8.2-1"),
        pytest.param("$share//a", id="empty-name-4.8.2-1"),
        pytest.param("$share/g+/a", id="plus-in-name-4.8.2-2"),
        pytest.param("$share/g#/a", id="hash-in-name-4.8.2-2"),
        pytest.param("$share/g", id="no-filter-4.8.2-2"),
        pytest.param("$share/g/a#", id="bad-filter"),
    ],
)
def test_invalid_shared_filters(text: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_filter(text)


MATCH_CASES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),  # §4.7.1.2
    ("#", "sport", True),
    ("+/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("a/b", "a/b", True),
    ("a/b", "a/bb", False),
    ("A", "a", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_CASES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_CASES)
def test_tree_matches_like_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    tree.subscribe(topic_filter, "c", 1)
    assert [k for k, _, _ in tree.match(topic)] == (["c"] if expected else [])


_level = st.sampled_from(["a", "b", "", "$x"])
_topics = st.lists(_level, min_size=1, max_size=4).map("/".join)
_filters = st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"]), "#"])
)


@given(st.lists(_filters, min_size=1, max_size=8, unique=True), _topics)
def test_tree_agrees_with_reference_matcher(filters: list[str], topic: str) -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    for f in filters:
        tree.subscribe(f, f, 0)
    got = sorted(k for k, _, _ in tree.match(topic))
    assert got == sorted(f for f in filters if topic_matches(f, topic))
    # And the cached second lookup agrees with the first, as does the broker's fast path.
    assert sorted(k for k, _, _ in tree.match(topic)) == got
    assert sorted(k for table in tree.subscribers(topic) for k in table) == got
    assert tree.shared(topic) == []


def test_subscribe_replaces_and_unsubscribe_prunes() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    assert tree.subscribe("a/b", "c1", 1) is False
    assert tree.subscribe("a/b", "c1", 2) is True  # [MQTT-3.8.4-3] replaces
    assert list(tree.match("a/b")) == [("c1", 2, None)]
    tree.subscribe("a/#", "c2", 0)
    assert len(tree) == 2
    assert tree.unsubscribe("a/b", "c1") == 2
    assert tree.unsubscribe("a/b", "c1") is None
    assert [k for k, _, _ in tree.match("a/b")] == ["c2"]
    assert tree.unsubscribe("a/#", "c2") == 0
    assert len(tree) == 0
    assert list(tree.match("a/b")) == []
    assert list(tree.filters()) == []


def test_cache_invalidated_by_new_filter() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    tree.subscribe("x/y", "c1", 0)
    assert [k for k, _, _ in tree.match("a/b")] == []
    tree.subscribe("a/+", "c2", 0)
    assert [k for k, _, _ in tree.match("a/b")] == ["c2"]
    tree.unsubscribe("a/+", "c2")
    assert [k for k, _, _ in tree.match("a/b")] == []


def test_shared_group_round_robin_one_member_per_message() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    for member in ("m1", "m2", "m3"):
        tree.subscribe("t/+", member, 1, share="g")
    tree.subscribe("t/#", "other", 0, share="h")
    tree.subscribe("t/x", "plain", 0)
    picks = []
    for _ in range(6):
        got = list(tree.match("t/x"))
        assert ("plain", 0, None) in got
        assert sum(1 for _, _, s in got if s == "g") == 1
        assert sum(1 for _, _, s in got if s == "h") == 1
        picks.extend(k for k, _, s in got if s == "g")
    assert picks == ["m1", "m2", "m3", "m1", "m2", "m3"]


def test_shared_group_prefers_available_members() -> None:
    tree: SubscriptionTree[str, int] = SubscriptionTree()
    for member in ("m1", "m2", "m3"):
        tree.subscribe("t", member, 1, share="g")
    online = {"m3"}
    picks = [k for _ in range(3) for k, _, _ in tree.match("t", online.__contains__)]
    assert picks == ["m3", "m3", "m3"]
    assert tree.shared("t", online.__contains__) == [("m3", 1, "g")]
    assert tree.subscribers("t") == [{}]
    # Nobody available: still exactly one member (its session queues the message).
    assert len(list(tree.match("t", lambda _: False))) == 1
    assert tree.unsubscribe("t", "m3", share="g") == 1
    assert tree.get("t", "m1", share="g") == 1
    assert tree.get("t", "m3", share="g") is None


@pytest.mark.parametrize(
    ("pattern", "topic_filter", "expected"),
    [
        ("devices/+/#", "devices/a/#", True),
        ("devices/a/#", "devices/#", False),
        ("devices/a/#", "devices/a", True),
        ("devices/a/#", "devices/a/x/+", True),
        ("devices/+", "devices/a", True),
        ("devices/+", "devices/+", True),
        ("devices/+", "devices/#", False),
        ("devices/a", "devices/+", False),
        ("#", "anything/#", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_filter_covers(pattern: str, topic_filter: str, expected: bool) -> None:
    assert filter_covers(pattern, topic_filter) is expected
