"""`headwater tail --filter`: what a filter author is told when the filter cannot work."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import orjson

from tests.e2e.headwater_process import Headwater


def post_event(hw: Headwater, event_id: str, **extensions: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/test",
        "ce-type": "dev.headwater.test",
        "Content-Type": "application/json",
        **{f"ce-{name}": value for name, value in extensions.items()},
    }
    request = urllib.request.Request(
        hw.url + "/default/default", data=b"{}", headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202


def test_tail_warns_once_about_an_attribute_no_event_has(
    headwater_up: Callable[..., Headwater],
) -> None:
    hw = headwater_up()
    for i in range(10):
        post_event(hw, f"e{i}", temperature="25")
    post_event(hw, "end", temperature="25")
    result = hw.cli(
        "tail",
        "--from",
        "earliest",
        "--json",
        "--max",
        "1",
        "--filter",
        "id = 'end' OR temprature > 23",
    )
    assert [orjson.loads(line)["id"] for line in result.stdout.splitlines()] == ["end"]
    assert result.stderr.count("warning:") == 1
    assert (
        "warning: none of the first 10 events has the attribute 'temprature': the filter "
        "cannot match them (MissingAttributeError); did you mean 'temperature'?"
    ) in result.stderr
    assert hw.stop() == 0


def test_tail_says_cesql_has_no_decimals(headwater_up: Callable[..., Headwater]) -> None:
    hw = headwater_up()
    result = hw.cli("tail", "--filter", "temperature > 23.5", check=False)
    assert result.returncode == 1
    assert "23.5: CESQL v1 has only integers, no decimal numbers" in result.stderr
    assert hw.stop() == 0
