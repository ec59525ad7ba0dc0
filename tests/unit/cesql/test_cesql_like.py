"""LIKE matchers (spec.md 3.4.3): every pattern shape, and linear time on hostile input."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.cesql.like import like_matcher, parse_pattern


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        pytest.param("abc", "abc", True, id="exact"),
        pytest.param("abc", "abcd", False, id="exact-longer"),
        pytest.param("ab%", "abxyz", True, id="prefix"),
        pytest.param("%yz", "abxyz", True, id="suffix"),
        pytest.param("%x%", "abxyz", True, id="contains"),
        pytest.param("%x%", "abyz", False, id="contains-not"),
        pytest.param("a%a", "a", False, id="head-and-tail-do-not-overlap"),
        pytest.param("a%a", "aa", True, id="head-and-tail-adjacent"),
        pytest.param("a%b%c%d", "abcd", True, id="middles-empty-runs"),
        pytest.param("a%b%c%d", "axbxcxd", True, id="middles"),
        pytest.param("a%c%b%d", "abcd", False, id="middles-out-of-order"),
        pytest.param("%%", "", True, id="double-percent"),
        pytest.param("_%_", "ab", True, id="underscores-around-percent"),
        pytest.param("_%_", "a", False, id="underscores-need-two"),
        pytest.param("%a_c%", "xxabcxx", True, id="underscore-in-middle"),
        pytest.param("%a_c%", "xxacxx", False, id="underscore-in-middle-needs-one"),
        pytest.param("%a_c", "abcabc", True, id="underscore-in-tail"),
        pytest.param("a\\%", "a%", True, id="escaped-percent"),
        pytest.param("a\\%", "ab", False, id="escaped-percent-is-literal"),
        pytest.param("a\\_", "a_", True, id="escaped-underscore"),
        pytest.param("a\\_", "ab", False, id="escaped-underscore-is-literal"),
        pytest.param("a\\b", "a\\b", True, id="other-backslash-kept"),
        pytest.param("a\\", "a\\", True, id="trailing-backslash"),
        pytest.param("a.*", "a.*", True, id="regex-characters-are-literal"),
        pytest.param("a.*", "abc", False, id="regex-characters-do-not-match"),
        pytest.param("_", "\n", True, id="underscore-matches-newline"),
        pytest.param("%", "\n\n", True, id="percent-matches-newlines"),
    ],
)
def test_like(pattern: str, value: str, expected: bool) -> None:
    assert like_matcher(pattern)(value) is expected


def test_patterns_split_at_unescaped_percent() -> None:
    assert parse_pattern("a_\\%%b") == [("a", "", "%"), ("b",)]


def _reference(pattern: str) -> re.Pattern[str]:
    parts = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and pattern[i + 1 : i + 2] in ("%", "_"):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append({"%": ".*", "_": "."}.get(pattern[i], re.escape(pattern[i])))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


@settings(max_examples=1000, deadline=None)
@given(st.text("ab%_\\", max_size=8), st.text("ab%_\\", max_size=10))
def test_agrees_with_a_backtracking_reference(pattern: str, value: str) -> None:
    assert like_matcher(pattern)(value) is (_reference(pattern).fullmatch(value) is not None)


def test_hostile_values_take_linear_time() -> None:
    # A backtracking matcher needs about n**5 steps here; ours a few passes.
    # Measured in this thread's CPU time: the work done, whatever else loads the machine.
    match = like_matcher("%a%a%a%a%a%b")
    value = "a" * 20_000
    started = time.thread_time()
    assert not match(value)
    assert time.thread_time() - started < 0.5
    match = like_matcher("%a_a%a_a%b")
    started = time.thread_time()
    assert not match(value)
    assert time.thread_time() - started < 0.5
