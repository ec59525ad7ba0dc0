"""Fixtures for end-to-end tests: `headwater up` as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.headwater_process import Headwater, start_headwater


@pytest.fixture
def headwater_up(tmp_path: Path) -> Iterator[Callable[..., Headwater]]:
    started: list[Headwater] = []

    def start(*args: str) -> Headwater:
        hw = start_headwater(args, tmp_path)
        started.append(hw)
        return hw

    yield start
    for hw in started:
        hw.close()
