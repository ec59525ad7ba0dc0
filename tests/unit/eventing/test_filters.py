from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent
from headwater.eventing import MATCH_ALL, FilterError, compile_filters, compile_trigger_filter
from headwater.eventing.filters import compile_attributes_filter

EVENT = CloudEvent(
    {
        "specversion": "1.0",
        "id": "1",
        "source": "https://github.com/cloudevents/spec/pull",
        "type": "com.github.pull.create",
        "subject": "123",
        "knativebrokerttl": 255,
        "alert": True,
    },
    b"{}",
)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        pytest.param({}, True, id="empty-matches-all"),
        pytest.param({"type": "com.github.pull.create"}, True, id="exact"),
        pytest.param({"type": "com.github.pull.Create"}, False, id="case-sensitive"),
        pytest.param({"type": "com.github.pull"}, False, id="no-prefix-match"),
        pytest.param({"subject": ""}, True, id="empty-value-needs-presence"),
        pytest.param({"dataschema": ""}, False, id="empty-value-absent-attribute"),
        pytest.param({"type": "com.github.pull.create", "subject": "123"}, True, id="all-keys"),
        pytest.param({"type": "com.github.pull.create", "subject": "9"}, False, id="one-key-off"),
        pytest.param({"knativebrokerttl": "255"}, True, id="integer-canonical-string"),
        pytest.param({"alert": "true"}, True, id="boolean-canonical-string"),
        pytest.param({"missing": "x"}, False, id="absent"),
    ],
)
def test_knative_attributes_filter(attributes: dict[str, str], expected: bool) -> None:
    assert compile_attributes_filter(attributes)(EVENT) is expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param([], True, id="empty"),
        pytest.param([{"exact": {"type": "com.github.pull.create"}}], True, id="exact"),
        pytest.param([{"exact": {"type": "com.github.pull"}}], False, id="exact-not-prefix"),
        pytest.param(
            [{"exact": {"type": "com.github.pull.create", "subject": "123"}}],
            True,
            id="exact-several-attributes",
        ),
        pytest.param([{"exact": {"subject": "123", "id": "2"}}], False, id="exact-one-off"),
        pytest.param([{"prefix": {"type": "com.github."}}], True, id="prefix"),
        pytest.param([{"prefix": {"type": "com.gitlab."}}], False, id="prefix-miss"),
        pytest.param([{"prefix": {"dataschema": "x"}}], False, id="prefix-absent"),
        pytest.param([{"suffix": {"type": ".create"}}], True, id="suffix"),
        pytest.param([{"suffix": {"type": ".delete"}}], False, id="suffix-miss"),
        pytest.param(
            [{"all": [{"prefix": {"type": "com."}}, {"suffix": {"type": "create"}}]}],
            True,
            id="all",
        ),
        pytest.param(
            [{"all": [{"prefix": {"type": "com."}}, {"suffix": {"type": "x"}}]}],
            False,
            id="all-one-false",
        ),
        pytest.param(
            [{"any": [{"exact": {"type": "nope"}}, {"exact": {"subject": "123"}}]}],
            True,
            id="any",
        ),
        pytest.param(
            [{"any": [{"exact": {"type": "nope"}}, {"exact": {"subject": "1"}}]}],
            False,
            id="any-none",
        ),
        pytest.param([{"not": {"exact": {"type": "com.github.push"}}}], True, id="not"),
        pytest.param([{"not": {"prefix": {"type": "com."}}}], False, id="not-false"),
        pytest.param(
            [{"prefix": {"type": "com."}}, {"exact": {"subject": "nope"}}],
            False,
            id="list-is-and",
        ),
        pytest.param(
            [{"not": {"any": [{"exact": {"alert": "false"}}, {"suffix": {"id": "9"}}]}}],
            True,
            id="nested",
        ),
    ],
)
def test_subscriptions_api_dialects(filters: list[dict[str, Any]], expected: bool) -> None:
    assert compile_filters(filters)(EVENT) is expected


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        pytest.param([{"regex": {"type": "x"}}], "unsupported filter dialect", id="dialect"),
        pytest.param([{}], "exactly one dialect", id="no-dialect"),
        pytest.param(
            [{"exact": {"type": "x"}, "prefix": {"type": "y"}}], "exactly one", id="two-dialects"
        ),
        pytest.param([{"exact": {"type": ""}}], "non-empty", id="empty-value"),
        pytest.param([{"prefix": {"": "x"}}], "non-empty", id="empty-name"),
        pytest.param([{"suffix": {}}], "needs a map", id="empty-map"),
        pytest.param([{"exact": {"type": 3}}], "non-empty string", id="non-string"),
        pytest.param([{"all": []}], "non-empty list", id="empty-all"),
        pytest.param([{"any": "x"}], "non-empty list", id="any-not-list"),
        pytest.param([{"not": [{"exact": {"a": "b"}}]}], "exactly one dialect", id="not-list"),
        pytest.param(
            [{"all": [{"exact": {"type": "a"}}, {"bogus": {}}]}],
            "filters[0]: all[1]: unsupported filter dialect",
            id="nested-path",
        ),
    ],
)
def test_invalid_filters_are_rejected_at_compile_time(
    filters: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(FilterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compile_filters(filters)


def test_filters_replace_filter_when_non_empty() -> None:
    f = compile_trigger_filter({"type": "nope"}, [{"prefix": {"type": "com."}}])
    assert f(EVENT)
    assert not compile_trigger_filter({"type": "nope"}, [])(EVENT)
    assert compile_trigger_filter(None, None) is MATCH_ALL


def test_attribute_filter_rejects_non_strings() -> None:
    with pytest.raises(FilterError):
        compile_attributes_filter({"type": 1})  # type: ignore[dict-item]


def test_cesql_without_an_engine_rejects_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "headwater.cesql", None)
    with pytest.raises(FilterError, match="CESQL engine"):
        compile_filters([{"cesql": "type = 'x'"}])


# -- properties -------------------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8)
_events = st.builds(
    lambda t, s, ext: CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": t, "subject": s, **ext}
    ),
    _text,
    _text,
    st.dictionaries(st.sampled_from(["zone", "level", "device"]), _text, max_size=3),
)
_leaves = st.builds(
    lambda dialect, name, value: {dialect: {name: value}},
    st.sampled_from(["exact", "prefix", "suffix"]),
    st.sampled_from(["type", "subject", "zone", "level"]),
    _text,
)
_expressions = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=8,
)


@given(_expressions, _events)
def test_composite_dialects_follow_boolean_logic(expression: dict[str, Any], e: CloudEvent) -> None:
    f = compile_filters([expression])
    assert compile_filters([{"not": {"not": expression}}])(e) is f(e)
    assert compile_filters([{"all": [expression]}])(e) is f(e)
    assert compile_filters([{"any": [expression, {"not": expression}]}])(e) is True
    assert compile_filters([{"all": [expression, {"not": expression}]}])(e) is False


@given(_events, st.sampled_from(["type", "subject", "zone"]))
def test_an_attributes_own_value_matches_exact_prefix_and_suffix(e: CloudEvent, name: str) -> None:
    value = e.get(name)
    if value is None:
        assert not compile_filters([{"exact": {name: "x"}}])(e)
        return
    for dialect in ("exact", "prefix", "suffix"):
        assert compile_filters([{dialect: {name: value}}])(e)
    assert compile_filters([{"prefix": {name: value[:1]}}])(e)
    assert compile_filters([{"suffix": {name: value[-1:]}}])(e)
    assert compile_attributes_filter({name: value})(e)
    assert compile_attributes_filter({name: ""})(e)
