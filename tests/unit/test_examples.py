"""Every example in examples/ loads, validates and has no dangling references."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing.filters import compile_filters
from headwater.resources import check_references, load_paths
from headwater.sources.mapping import Inbound, to_cloudevent
from headwater.sources.simulator import Climate

ROOT = Path(__file__).parents[2] / "examples"
EXAMPLES = sorted({p.parent for p in ROOT.rglob("*.yaml")})
"""Every folder of examples/ that holds resource files: one mesh each (edge-cloud has two)."""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokens the examples read from the environment (edge-cloud)."""
    monkeypatch.setenv("CLOUD_TOKEN", "cloud-token")
    monkeypatch.setenv("SITE7_TOKEN", "site-7-token")


def test_there_are_examples() -> None:
    assert EXAMPLES


APPLIED_TO: dict[str, list[Path]] = {"apply": [ROOT / "greenhouse"]}
"""Examples applied to a running mesh, and the mesh they refer to."""


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_is_valid(example: Path) -> None:
    mesh = APPLIED_TO.get(str(example.relative_to(ROOT)), [])
    loaded = load_paths([example, *mesh])
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


def test_greenhouse_filters_match_the_simulated_readings() -> None:
    """A simulated reading, mapped as the demo maps it, reaches the Triggers meant for it.

    CESQL compares integers only; a reading lifted as a String ("31.27") would
    make `temperature > 25` a cast error, and the alert would never fire.
    """
    root = Path(__file__).parents[2]
    loaded = {
        (i.resource.KIND, i.resource.name): i.resource
        for i in load_paths([root / "examples/greenhouse"])
    }
    source = loaded[("MqttBrokerSource", "greenhouse")]
    mapping = source.spec.mapping.compile()  # type: ignore[attr-defined]
    reading = Climate("sim-1", seed=7).reading(1_700_000_000.0)

    def mapped(temperature: float) -> CloudEvent:
        payload = orjson.dumps({**reading, "temperature": temperature})
        return to_cloudevent(mapping, Inbound("sensors/sim-1/climate", payload, qos=1), "id-1", 0.0)

    def matches(trigger: str, event: CloudEvent) -> bool:
        filters = loaded[("Trigger", trigger)].spec.filters  # type: ignore[attr-defined]
        return compile_filters([f.model_dump(exclude_none=True) for f in filters])(event)

    hot, mild = mapped(31.27), mapped(21.57)
    assert hot.get("temperature") == 31 and hot.data_bytes().startswith(b"{")
    assert matches("too-hot", hot) and not matches("too-hot", mild)
    assert matches("sample", hot)
    assert not matches("sample", mapped(21.57).evolve({"subject": "sim-2"}))
