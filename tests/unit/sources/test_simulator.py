"""The simulated climate sensor model: deterministic, bounded, obeys commands."""

from __future__ import annotations

from headwater.sources.simulator import Climate


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
