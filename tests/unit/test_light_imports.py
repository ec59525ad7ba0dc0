"""The schema layer and the log's package stay light: checked in a fresh interpreter.

``headwater.resources`` is what ``headwater apply`` and the config loader
validate with, and ``headwater.log`` what every node opens; neither may pull in
the HTTP client, the NATS client, prometheus_client or the sinks' I/O.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "nats", "prometheus_client")
"""Third-party packages whose import costs start-up time and memory."""

SINKS_AND_RUNTIME = (
    "headwater.eventing",
    "headwater.runtime",
    "headwater.api",
    "headwater.sinks.display",
    "headwater.sinks.influxdb",
    "headwater.sinks.mqtt",
    "headwater.sinks.prometheus",
)


def imported_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"import sys\n{statement}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("import headwater.resources", id="resources"),
        pytest.param("from headwater.resources import load_text, KINDS", id="resources-names"),
    ],
)
def test_the_resource_schema_imports_no_io(statement: str) -> None:
    modules = imported_after(statement)
    assert offending(modules, HEAVY + SINKS_AND_RUNTIME + ("headwater.log",)) == []


def test_loading_a_sink_resource_imports_no_io() -> None:
    statement = (
        "from headwater.resources import load_text\n"
        "load_text('''apiVersion: sinks.headwater.dev/v1alpha1\n"
        "kind: PrometheusSink\nmetadata: {name: p}\n"
        "spec: {metrics: [{name: t, value: temperature}]}\n''', 'p.yaml')"
    )
    assert offending(imported_after(statement), HEAVY + SINKS_AND_RUNTIME) == []


def test_the_log_package_loads_jetstream_when_named() -> None:
    assert offending(imported_after("import headwater.log"), ("nats",)) == []
    named = imported_after("from headwater.log import JetStreamLog")
    assert "headwater.log.jetstream" in named and "nats" in named


def test_the_state_package_loads_jetstream_when_named() -> None:
    assert offending(imported_after("import headwater.state"), ("nats",)) == []
    named = imported_after("from headwater.state import JetStreamStore")
    assert "headwater.state.jetstream" in named and "nats" in named
