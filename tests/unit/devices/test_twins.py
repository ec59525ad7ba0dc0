"""Merge patches and deltas (pure), and the twin store's versions and limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.devices.model import DeviceConflict
from headwater.devices.twins import (
    MAX_STATE_BYTES,
    InvalidTwin,
    Twins,
    TwinTooLarge,
    delta,
    merge_patch,
)
from headwater.state import MemoryStore


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        # RFC 7386, appendix A (the object cases).
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch(target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]) -> None:
    assert merge_patch(target, patch) == result


@pytest.mark.parametrize(
    ("desired", "reported", "expected"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 1.0}, {}),
        ({"a": True}, {"a": 1}, {"a": True}),  # JSON: true is not 1
        ({"a": 1}, {}, {"a": 1}),
        ({"a": None}, {}, {"a": None}),
        ({"m": {"x": 1, "y": 2}}, {"m": {"x": 1, "y": 3}}, {"m": {"y": 2}}),
        ({"m": {"x": 1}}, {"m": 5}, {"m": {"x": 1}}),
        ({"l": [1, 2]}, {"l": [1, 2]}, {}),
        ({"l": [1, 2]}, {"l": [2, 1]}, {"l": [1, 2]}),
        ({}, {"extra": 1}, {}),
    ],
)
def test_delta(desired: dict[str, Any], reported: dict[str, Any], expected: dict[str, Any]) -> None:
    assert delta(desired, reported) == expected


keys = st.sampled_from(["a", "b", "c"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["x", "y"]),
    lambda inner: st.dictionaries(keys, inner, max_size=3) | st.lists(inner, max_size=2),
    max_leaves=6,
)
objects = st.dictionaries(keys, json_values, max_size=3)


@given(objects, objects)
def test_reporting_the_delta_leaves_nothing_to_do(
    desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    desired = merge_patch({}, desired)  # as stored: no null members
    todo = delta(desired, reported)
    assert delta(desired, merge_patch(reported, todo)) == {}


async def test_versions_and_conflicts() -> None:
    twins = Twins(MemoryStore())
    await twins.start()
    change = await twins.set_desired("default", "d", {"a": 1})
    assert change.changed and change.after.desired_version == 1
    same = await twins.set_desired("default", "d", {"a": 1})
    assert not same.changed and same.after.desired_version == 1  # nothing to change
    with pytest.raises(DeviceConflict, match="version 1, not 0"):
        await twins.set_desired("default", "d", {"a": 2}, version=0)
    replaced = await twins.set_desired("default", "d", {"b": None, "c": 1}, merge=False)
    assert replaced.after.desired == {"c": 1}
    reported = await twins.report("default", "d", {"c": 1})
    assert reported.after.reported_version == 1 and reported.after.delta() == {}


async def test_limits() -> None:
    twins = Twins(MemoryStore())
    await twins.start()
    half = {"x": "y" * (MAX_STATE_BYTES // 2)}
    await twins.set_desired("default", "d", half)
    with pytest.raises(TwinTooLarge, match="over the limit"):
        await twins.set_desired("default", "d", {"z": "y" * (MAX_STATE_BYTES // 2)})
    with pytest.raises(InvalidTwin, match="member names"):
        await twins.report("default", "d", {"": 1})
    with pytest.raises(InvalidTwin, match="JSON object"):
        await twins.report("default", "d", [1])
