"""Every example in examples/ loads, validates and has no dangling references."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.resources import check_references, load_paths

EXAMPLES = sorted(p for p in (Path(__file__).parents[2] / "examples").iterdir() if p.is_dir())


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(example: Path) -> None:
    loaded = load_paths([example])
    assert loaded
    check_references(loaded)
