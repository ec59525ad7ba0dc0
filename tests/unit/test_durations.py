"""ISO 8601 durations as Knative writes them: what parses, to how many seconds, and what not."""

from __future__ import annotations

import pytest

from headwater.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("PT0.2S", 0.2, id="fraction"),
        pytest.param("PT10S", 10.0, id="seconds"),
        pytest.param("PT1M30S", 90.0, id="minutes-seconds"),
        pytest.param("PT1H", 3600.0, id="hours"),
        pytest.param("P1D", 86400.0, id="days"),
        pytest.param("P1W", 604800.0, id="weeks"),
        pytest.param("P1DT1S", 86401.0, id="date-and-time"),
        pytest.param("PT0,5S", 0.5, id="comma-decimal"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "10S", "10s", "PT1", "PTS", "PT-1S", "-PT1S", "P1Y", "P1M", "PT1S ", "P1DT"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)
