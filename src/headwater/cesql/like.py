"""LIKE patterns (spec.md 3.4.3) as matchers that run in linear time.

How this works: the pattern is split at its unescaped ``%`` into segments of
fixed length (literal characters and ``_``, each exactly one character). The
first segment must match at the start, the last at the end, and each middle
segment is found leftmost after the previous one; taking the leftmost
occurrence is always safe for ``%`` (any run), so no backtracking is needed
and a hostile value cannot make matching slow, whatever the pattern.
Segments without ``_`` use plain string methods; those with ``_`` a regular
expression of fixed length. Python strings are sequences of code points, so
``_`` is one character, never one byte.

Escapes: "Both % and _ can be escaped with \\, in order to be matched
literally". A backslash before any other character is that backslash, as the
spec's escapes are only those two (so ``'ab\\c' LIKE 'ab\\c'`` is true).
"""

from __future__ import annotations

import re
from collections.abc import Callable

Segment = tuple[str, ...]  # one item per character; "" stands for `_`


def parse_pattern(pattern: str) -> list[Segment]:
    """The fixed-length segments between the unescaped ``%`` of ``pattern``."""
    segments: list[Segment] = []
    current: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            current.append(pattern[i + 1])
            i += 2
            continue
        if char == "%":
            segments.append(tuple(current))
            current = []
        elif char == "_":
            current.append("")
        else:
            current.append(char)
        i += 1
    segments.append(tuple(current))
    return segments


def scan_passes(pattern: str) -> int:
    """How many times matching ``pattern`` may read a whole value, at most.

    The first and last segments are anchored (they cost their own length); a
    literal middle segment is one ``str.find``, one pass; a middle segment with
    ``_`` is a regular expression search, which may try each of its characters
    at each position of the value: as many passes as it has characters.
    """
    middle = parse_pattern(pattern)[1:-1]
    return sum(len(segment) if "" in segment else 1 for segment in middle if segment)


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A function telling whether a string matches the LIKE ``pattern``."""
    segments = parse_pattern(pattern)
    if len(segments) == 1:
        (only,) = segments
        if "" not in only:
            return "".join(only).__eq__
        return _regex(only, fullmatch=True)
    head, *middle, tail = segments
    middle = [segment for segment in middle if segment]  # `%%` is `%`
    if "" not in head + tail and not any("" in segment for segment in middle):
        return _literal_matcher("".join(head), ["".join(m) for m in middle], "".join(tail))
    return _general_matcher(head, middle, tail)


def _literal_matcher(head: str, middle: list[str], tail: str) -> Callable[[str], bool]:
    if not middle:
        if not tail:
            return lambda value: value.startswith(head)
        if not head:
            return lambda value: value.endswith(tail)
        least = len(head) + len(tail)
        return lambda value: len(value) >= least and value.startswith(head) and value.endswith(tail)
    if not head and not tail and len(middle) == 1:
        (inner,) = middle
        return lambda value: inner in value
    least = len(head) + len(tail) + sum(map(len, middle))

    def match(value: str) -> bool:
        if len(value) < least or not value.startswith(head) or not value.endswith(tail):
            return False
        position, end = len(head), len(value) - len(tail)
        for segment in middle:
            found = value.find(segment, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True

    return match


def _general_matcher(head: Segment, middle: list[Segment], tail: Segment) -> Callable[[str], bool]:
    match_head = _regex(head, fullmatch=False)
    match_tail = _regex(tail, fullmatch=False)
    searches = [_compile(segment).search for segment in middle]
    lengths = [len(segment) for segment in middle]
    least = len(head) + len(tail) + sum(lengths)

    def match(value: str) -> bool:
        if len(value) < least:
            return False
        end = len(value) - len(tail)
        if not match_head(value, 0) or not match_tail(value, end):
            return False
        position = len(head)
        for search, length in zip(searches, lengths, strict=True):
            found = search(value, position, end)
            if found is None:
                return False
            position = found.start() + length
        return True

    return match


def _compile(segment: Segment) -> re.Pattern[str]:
    return re.compile("".join(re.escape(c) if c else "." for c in segment), re.DOTALL)


def _regex(segment: Segment, *, fullmatch: bool) -> Callable[..., bool]:
    compiled = _compile(segment)
    if fullmatch:
        return lambda value: compiled.fullmatch(value) is not None
    return lambda value, position: compiled.match(value, position) is not None
