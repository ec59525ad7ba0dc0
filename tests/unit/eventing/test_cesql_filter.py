from __future__ import annotations

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import FilterError, RecordingSink, Trigger, compile_filters

EVENT = CloudEvent(
    {
        "specversion": "1.0",
        "id": "1",
        "source": "mqtt://gw/sensors/greenhouse-7/temperature",
        "type": "dev.headwater.mqtt.message",
        "subject": "greenhouse-7",
        "temperature": 31,
        "zone": "north",
    },
    b"{}",
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("type = 'dev.headwater.mqtt.message'", True, id="equal"),
        pytest.param("temperature > 30 AND zone = 'north'", True, id="and"),
        pytest.param("temperature > 40", False, id="false"),
        pytest.param("source LIKE 'mqtt://gw/sensors/%'", True, id="like"),
        pytest.param("EXISTS subject", True, id="exists"),
        pytest.param("EXISTS humidity", False, id="not-exists"),
        pytest.param("missing = 'x'", False, id="missing-attribute-is-an-error-so-false"),
        pytest.param("1 / 0 = 1", False, id="evaluation-error-is-false"),
        pytest.param("'not a boolean'", False, id="non-boolean-is-false"),
        pytest.param("zone", False, id="string-value-is-not-true"),
    ],
)
@pytest.mark.parametrize("dialect", ["cesql", "sql"])
def test_cesql_dialect(expression: str, expected: bool, dialect: str) -> None:
    assert compile_filters([{dialect: expression}])(EVENT) is expected


def test_cesql_composes_with_other_dialects() -> None:
    f = compile_filters([{"all": [{"cesql": "temperature > 30"}, {"prefix": {"type": "dev."}}]}])
    assert f(EVENT)
    assert not compile_filters([{"not": {"cesql": "temperature > 30"}}])(EVENT)


@pytest.mark.parametrize("expression", ["temperature >", "AND", "type = 'x", "", "   "])
def test_invalid_cesql_rejects_the_trigger(expression: str) -> None:
    with pytest.raises(FilterError, match="cesql"):
        Trigger("t", RecordingSink(), filters=[{"cesql": expression}])
