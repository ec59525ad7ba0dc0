"""The simulated climate sensor model: deterministic, bounded, obeys commands."""

from __future__ import annotations

import math

import pytest

from headwater.sources.simulator import (
    VENT_EVERY,
    VENT_FIRST,
    VENT_RAMP,
    VENT_STUCK,
    Climate,
    VentFailures,
)


def test_same_seed_same_readings() -> None:
    a, b = Climate("d", 7), Climate("d", 7)
    assert [a.reading(1000.0 + i) for i in range(50)] == [b.reading(1000.0 + i) for i in range(50)]
    assert Climate("d", 8).reading(1000.0) != Climate("d", 7).reading(1000.0)


def test_readings_stay_realistic() -> None:
    c = Climate("d", 1)
    readings = [c.reading(i * 60.0) for i in range(5000)]
    assert [r["seq"] for r in readings[:3]] == [1, 2, 3]
    assert all(5 < r["temperature"] < 40 for r in readings)  # type: ignore[operator]
    assert all(20 <= r["humidity"] <= 95 for r in readings)  # type: ignore[operator]
    assert readings[-1]["battery"] < readings[0]["battery"]  # type: ignore[operator]


def test_setpoint_command() -> None:
    c = Climate("d", 1)
    assert c.command(b'{"setpoint": 30}') == {"ok": True, "device": "d", "setpoint": 30.0}
    assert c.command(b"nope") == {"ok": False, "error": "not JSON"}
    later = [c.reading(43200.0)["temperature"] for _ in range(20)]
    assert sum(later) / len(later) > 27  # type: ignore[arg-type]


@pytest.mark.parametrize("hour", range(24))
def test_the_demo_has_a_heat_alert_within_its_first_minute_at_any_hour(hour: int) -> None:
    """`make run`: 20 devices at 10 readings/s, each device every 2 s. Whatever the time
    of day, a reading in the first minute is over the greenhouse's `temperature > 25`."""
    start = 1_767_225_600.0 + hour * 3600 + 1234.5  # 2026-01-01, any hour
    for seed in range(5):
        devices = [
            Climate(f"sim-{n}", seed * 100_003 + n, vents=VentFailures(start, n, 20))
            for n in range(20)
        ]
        alerts = [
            device.device
            for second in range(0, 60, 2)
            for device in devices
            if math.floor(float(device.reading(start + second)["temperature"])) > 25  # type: ignore[arg-type]
        ]
        assert "sim-0" in alerts, (hour, seed)


def test_a_stuck_vent_is_fixed_again_and_another_one_sticks_later() -> None:
    start = 1_767_225_600.0
    first, second = VentFailures(start, 0, 20), VentFailures(start, 1, 20)
    assert first.heat(start) == 0.0 and first.heat(start + VENT_FIRST + VENT_RAMP) == 1.0
    assert first.heat(start + VENT_FIRST + 2 * VENT_RAMP + VENT_STUCK) == 0.0
    assert second.heat(start + VENT_FIRST + VENT_RAMP) == 0.0
    assert second.heat(start + VENT_FIRST + VENT_EVERY + VENT_RAMP) == 1.0
    assert first.heat(start + VENT_FIRST + 20 * VENT_EVERY + VENT_RAMP) == 1.0  # its turn again
