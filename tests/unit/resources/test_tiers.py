"""The tier kinds (Uplink, Downlink, Edge) and Broker retention: checked before anything runs."""

from __future__ import annotations

import textwrap

import pytest

from headwater.log import StreamConfig
from headwater.resources import ConfigError, check_references, load_text
from headwater.resources.models import Broker, parse_quantity, retention_limits
from headwater.resources.tiers import Downlink, Edge, Uplink


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_references(load_text(textwrap.dedent(text), "r.yaml"))
    return [str(p) for p in info.value.problems]


UPLINK = """\
apiVersion: sources.headwater.dev/v1alpha1
kind: Uplink
metadata: {name: up}
spec:
  broker: default
  sink: {uri: "https://cloud.example:8443/default/default"}
"""


def test_an_uplink_with_defaults() -> None:
    [item] = load_text(UPLINK, "r.yaml")
    uplink = item.resource
    assert isinstance(uplink, Uplink)
    spec = uplink.spec
    assert (spec.format, spec.compression, spec.ordering) == ("auto", "auto", "ordered")
    assert spec.delivery.backoff_max == "PT10S"
    assert spec.start is None  # latest, as for a Trigger


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            '  filter: "temperature >"\n',
            "r.yaml:7: Uplink up: spec.filter: invalid CESQL expression: line 1, column 14",
            id="cesql",
        ),
        pytest.param(
            "  start: yesterday\n",
            "r.yaml:7: Uplink up: spec.start: start 'yesterday' must be earliest, latest",
            id="start",
        ),
        pytest.param(
            "  headers: {Authorization: Bearer x}\n",
            "r.yaml:7: Uplink up: spec.headers: put credentials in `tokenEnv`",
            id="no secrets in files",
        ),
        pytest.param(
            "  delivery: {backoffDelay: PT10S, backoffMax: PT1S}\n",
            "r.yaml:7: Uplink up: spec.delivery: `backoffMax` must be at least `backoffDelay`",
            id="backoff bounds",
        ),
        pytest.param("  linger: soon\n", "spec.linger", id="duration"),
        pytest.param("  format: avro\n", "spec.format", id="format"),
    ],
)
def test_uplink_mistakes_are_located(spec: str, expected: str) -> None:
    problems = _problems(UPLINK + spec)
    assert any(expected in p for p in problems), problems


def test_an_uplink_sends_to_a_url_and_reads_an_existing_broker() -> None:
    text = UPLINK.replace(
        'sink: {uri: "https://cloud.example:8443/default/default"}',
        "sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}",
    )
    assert any("its sink is a `uri`" in p for p in _problems(text))
    assert _problems(UPLINK) == [
        "r.yaml:1: Uplink up: spec.broker: no Broker 'default' in namespace 'default'"
    ]


def test_edge_and_downlink() -> None:
    [edge, downlink] = load_text(
        textwrap.dedent(
            """\
            apiVersion: sinks.headwater.dev/v1alpha1
            kind: Edge
            metadata: {name: site-7}
            spec:
              tokenEnv: SITE7_TOKEN
              retention: {maxAge: P1D, maxEvents: 500}
            ---
            apiVersion: sources.headwater.dev/v1alpha1
            kind: Downlink
            metadata: {name: down}
            spec:
              url: https://cloud.example/edges/default/site-7
              sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
            """
        ),
        "r.yaml",
    )
    assert isinstance(edge.resource, Edge)
    limits = edge.resource.spec.retention.limits()
    assert StreamConfig(**limits) == StreamConfig(max_age=86400.0, max_events=500)
    assert isinstance(downlink.resource, Downlink)
    assert downlink.resource.spec.wait == "PT20S"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "kind: Edge\nmetadata: {name: e}\nspec: {}\n",
            "r.yaml:4: Edge e: spec.tokenEnv: required field is missing",
            id="an edge needs its token",
        ),
        pytest.param(
            "kind: Downlink\nmetadata: {name: d}\nspec:\n  url: https://c/edges/default/e\n"
            "  wait: PT5M\n  sink: {uri: http://x/}\n",
            "`wait` must be at most 60 seconds",
            id="wait",
        ),
    ],
)
def test_edge_and_downlink_mistakes(text: str, expected: str) -> None:
    version = "sinks" if "kind: Edge" in text else "sources"
    problems = _problems(f"apiVersion: {version}.headwater.dev/v1alpha1\n{text}")
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9), (" 1Gi ", 2**30)],
)
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "1.5Gi", "-1", "1 GB", "Mi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="byte count"):
        parse_quantity(text)


def test_broker_retention_annotations() -> None:
    assert retention_limits(
        {
            "headwater.dev/retention-max-age": "PT24H",
            "headwater.dev/retention-max-bytes": "1Gi",
            "headwater.dev/retention-max-events": "1000000",
        }
    ) == {"max_age": 86400.0, "max_bytes": 2**30, "max_events": 1_000_000}
    assert retention_limits({}) == {}


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        ("headwater.dev/retention-max-age", "forever", "duration"),
        ("headwater.dev/retention-max-age", "PT0S", "more than zero"),
        ("headwater.dev/retention-max-bytes", "lots", "byte count"),
        ("headwater.dev/retention-max-events", "0", "positive integer"),
    ],
)
def test_bad_retention_annotations_are_located(annotation: str, value: str, expected: str) -> None:
    text = (
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n"
        f"  annotations: {{{annotation}: '{value}'}}\n"
    )
    problems = _problems(text)
    assert any(expected in p and p.startswith("r.yaml:") for p in problems), problems
    assert Broker  # the model that checks them
