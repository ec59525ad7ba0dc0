from __future__ import annotations

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.sinks.metricspec import MetricSpec
from headwater.sinks.prometheus import PrometheusSink


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reading(device: str, data: object, type: str = "telemetry", **extra: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/gw",
            "type": type,
            "subject": device,
            **extra,
        },
        data,
    )


TEMPERATURE = MetricSpec(
    "greenhouse_temperature_celsius",
    help="Air temperature.",
    value="reading.celsius",
    labels={"device": "subject", "zone": "zone"},
)
EVENTS = MetricSpec("greenhouse_events", type="counter", labels={"device": "subject"})
RAIN = MetricSpec("rain_mm", type="counter", value="rain", labels={"device": "subject"})


def samples(sink: PrometheusSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in sink.metric_families()
        for s in family.samples
        if not s.name.endswith("_created")
    }


async def test_gauges_keep_the_latest_value_per_label_set() -> None:
    sink = PrometheusSink([TEMPERATURE])
    await sink.deliver(reading("s1", {"reading": {"celsius": 20.5}}, zone="north"))
    await sink.deliver(reading("s1", {"reading": {"celsius": 21}}, zone="north"))
    await sink.deliver(reading("s2", b'{"reading": {"celsius": "19.25"}}'))
    assert samples(sink) == {
        ("greenhouse_temperature_celsius", (("device", "s1"), ("zone", "north"))): 21.0,
        ("greenhouse_temperature_celsius", (("device", "s2"), ("zone", ""))): 19.25,
    }


async def test_counters_count_events_or_add_values() -> None:
    sink = PrometheusSink([EVENTS, RAIN])
    for rain in (0.5, 1.25, None):
        await sink.deliver(reading("s1", {"rain": rain}))
    assert samples(sink) == {
        ("greenhouse_events_total", (("device", "s1"),)): 3.0,
        ("rain_mm_total", (("device", "s1"),)): 1.75,
    }
    with pytest.raises(DeliveryError, match="cannot go down") as raised:
        await sink.deliver(reading("s9", {"rain": -1}))
    assert not raised.value.retryable
    assert ("rain_mm_total", (("device", "s9"),)) not in samples(sink)


async def test_series_of_a_silent_device_disappear_after_staleness() -> None:
    clock = Clock()
    sink = PrometheusSink([TEMPERATURE], staleness=60, clock=clock)
    await sink.deliver(reading("s1", {"reading": {"celsius": 20}}))
    clock.now += 30
    await sink.deliver(reading("s2", {"reading": {"celsius": 22}}))
    clock.now += 45  # s1 silent for 75 s, s2 for 45 s
    assert [labels for _, labels in samples(sink)] == [(("device", "s2"), ("zone", ""))]
    clock.now += 16
    assert samples(sink) == {}
    assert sink.series_count() == 0


async def test_events_without_the_value_or_of_another_type_leave_metrics_alone() -> None:
    only_telemetry = MetricSpec("v", value="v", event_type="telemetry")
    sink = PrometheusSink([only_telemetry])
    await sink.deliver(reading("s1", {"v": 1}, type="alarm"))
    await sink.deliver(reading("s1", {"other": 1}))
    await sink.deliver(reading("s1", {"v": "not a number"}))
    await sink.deliver(reading("s1", b"\x00", datacontenttype="application/octet-stream"))
    assert samples(sink) == {}
    assert (sink.received, sink.unused) == (4, 4)
    await sink.deliver(reading("s1", {"v": True}))
    assert samples(sink) == {("v", ()): 1.0}


async def test_cardinality_guard_refuses_new_series_but_reuses_stale_room() -> None:
    clock = Clock()
    sink = PrometheusSink([TEMPERATURE], max_series=2, staleness=10, clock=clock)
    for device in ("a", "b"):
        await sink.deliver(reading(device, {"reading": {"celsius": 1}}))
    with pytest.raises(DeliveryError, match="already has 2 series") as raised:
        await sink.deliver(reading("c", {"reading": {"celsius": 1}}))
    assert not raised.value.retryable
    await sink.deliver(reading("a", {"reading": {"celsius": 2}}))  # existing series: fine
    clock.now += 11
    await sink.deliver(reading("c", {"reading": {"celsius": 3}}))  # a and b were stale
    assert sink.series_count() == 1


def test_render_is_the_text_exposition_format() -> None:
    sink = PrometheusSink([TEMPERATURE])
    assert sink.render() == (
        b"# HELP greenhouse_temperature_celsius Air temperature.\n"
        b"# TYPE greenhouse_temperature_celsius gauge\n"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"name": "9lives", "value": "v"}, "metric name", id="metric-name"),
        pytest.param({"name": "m", "value": "v", "labels": {"__x": "id"}}, "label", id="reserved"),
        pytest.param({"name": "m", "value": "v", "labels": {"a-b": "id"}}, "label", id="label"),
        pytest.param({"name": "m"}, "needs a `value`", id="gauge-without-value"),
        pytest.param({"name": "m", "value": "a[0"}, "JMESPath", id="bad-path"),
    ],
)
def test_invalid_metric_specs_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusSink([MetricSpec(**spec)])  # type: ignore[arg-type]


def test_metric_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        PrometheusSink([TEMPERATURE, TEMPERATURE])


@pytest.mark.parametrize(
    ("first", "second"),
    [("counter", "counter"), ("counter", "gauge"), ("gauge", "counter")],
)
def test_names_exposed_twice_are_refused(first: str, second: str) -> None:
    """A counter ``events`` is exposed as ``events_total``: with a metric of that name
    the exposition would hold one name twice (invalid, one ``# TYPE`` per name)."""
    metrics = [
        MetricSpec("events", type=first, value="v"),  # type: ignore[arg-type]
        MetricSpec("events_total", type=second, value="v"),  # type: ignore[arg-type]
    ]
    with pytest.raises(ValueError, match=r"unique.*_total.*\['events', 'events_total'\]"):
        PrometheusSink(metrics)


async def test_an_event_one_metric_refuses_changes_no_metric() -> None:
    """Its dead letter, re-driven, must count once: nothing was counted the first time."""
    sink = PrometheusSink([EVENTS, RAIN])
    with pytest.raises(DeliveryError, match="cannot go down"):
        await sink.deliver(reading("s1", {"rain": -2}))
    assert samples(sink) == {}
    await sink.deliver(reading("s1", {"rain": 2}))
    assert samples(sink) == {
        ("greenhouse_events_total", (("device", "s1"),)): 1.0,
        ("rain_mm_total", (("device", "s1"),)): 2.0,
    }
