from __future__ import annotations

import sys
from typing import Any

import pytest

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
