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


def test_greenhouse_with_influxdb_is_valid() -> None:
    """What `make run` loads when INFLUXDB_URL is set (scripts/demo.sh)."""
    root = Path(__file__).parents[2]
    loaded = load_paths(
        [root / "examples" / "greenhouse", root / "deploy/grafana/influxdb-sink.yaml"]
    )
    check_references(loaded)
    kinds = {(item.resource.KIND, item.resource.name) for item in loaded}
    assert ("InfluxDBSink", "influxdb") in kinds
    assert ("MqttBrokerSource", "greenhouse") in kinds
