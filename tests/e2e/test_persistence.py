"""What `headwater apply` created survives a restart of `headwater up`; who owns what.

Real processes: `headwater up` is stopped (SIGTERM) and started again on the
same data directory, and driven by the real CLI, as a user would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from tests.e2e.headwater_process import Headwater

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
"""

APPLIED = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: everything}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: beat}
spec:
  schedule: "* * * * *"
  data: '{"token": "${BEAT_TOKEN:-none}"}'
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""


def sources(hw: Headwater) -> dict[str, str]:
    items = orjson.loads(hw.cli("get", "all", "-o", "json").stdout)
    return {f"{i['kind']}/{i['metadata']['name']}": i["status"]["origin"]["source"] for i in items}


def applied_then_stopped(tmp_path: Path, headwater_up: Callable[..., Headwater]) -> None:
    """`headwater up` with MESH, `headwater apply` of APPLIED, then a clean stop."""
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "applied.yaml").write_text(APPLIED)
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    hw.cli("apply", "-f", str(tmp_path / "applied.yaml"))
    assert hw.stop() == 0


def test_applied_resources_survive_a_restart_until_deleted(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "applied.yaml").write_text(APPLIED)
    up = ("-f", "mesh.yaml", "--data-dir", "data")
    hw = headwater_up(*up)
    applied = hw.cli("apply", "-f", str(tmp_path / "applied.yaml")).stdout
    assert "trigger/everything created" in applied and "pingsource/beat created" in applied
    before = sources(hw)
    assert before == {
        "Broker/default": "file",
        "EventDisplay/display": "file",
        "PingSource/beat": "api",
        "Trigger/everything": "api",
    }
    table = hw.cli("get", "triggers").stdout
    assert "SOURCE" in table and "api" in table
    described = hw.cli("describe", "trigger", "everything").stdout
    assert f"Source:       applied through the API (from {tmp_path / 'applied.yaml'}:1)" in (
        described
    )
    assert "Source:       file mesh.yaml:1" in hw.cli("describe", "broker", "default").stdout
    assert hw.stop() == 0

    hw = headwater_up(*up)  # the same files, the same data directory
    assert sources(hw) == before
    [trigger] = orjson.loads(hw.cli("get", "trigger", "everything", "-o", "json").stdout)
    assert trigger["status"]["conditions"][0]["status"] == "True"
    assert trigger["metadata"]["resourceVersion"].isdigit()
    assert hw.cli("delete", "trigger", "everything").stdout.strip() == "trigger/everything deleted"
    assert hw.stop() == 0

    hw = headwater_up(*up)
    assert "Trigger/everything" not in sources(hw)
    assert "PingSource/beat" in sources(hw)
    assert hw.stop() == 0


def test_the_api_may_not_change_what_a_file_defines(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    (tmp_path / "broker.yaml").write_text(
        MESH.split("---")[0].replace("{name: default}", "{name: default, labels: {a: b}}")
    )
    refused = hw.cli("apply", "-f", str(tmp_path / "broker.yaml"), check=False)
    assert refused.returncode == 1
    assert (
        "cannot change Broker default/default: it is defined by file mesh.yaml:1, which owns "
        "it; edit mesh.yaml:1 instead" in refused.stderr
    )
    deleted = hw.cli("delete", "broker", "default", check=False)
    assert deleted.returncode == 1 and "it is defined by file mesh.yaml:1" in deleted.stderr
    assert hw.stop() == 0


def test_a_file_takes_over_what_the_api_applied(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    applied_then_stopped(tmp_path, headwater_up)

    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "trigger.yaml").write_text(APPLIED.split("---")[0])
    hw = headwater_up("-f", "mesh.yaml", "-f", "more", "--data-dir", "data")
    assert sources(hw)["Trigger/everything"] == "file"
    assert any(
        "Trigger default/everything, applied through the API, is now defined by file "
        "more/trigger.yaml:1: the file's version runs and the applied copy is removed" in line
        for line in hw.output
    )
    assert hw.stop() == 0

    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")  # without that file again
    assert "Trigger/everything" not in sources(hw)
    assert hw.stop() == 0


def test_an_applied_resource_that_no_longer_resolves_is_kept_aside(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    applied_then_stopped(tmp_path, headwater_up)

    (tmp_path / "mesh.yaml").write_text(MESH.split("---")[1])  # no Broker any more
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    assert set(sources(hw)) == {"EventDisplay/display"}
    warning = next(line for line in hw.output if "not starting Trigger default/everything" in line)
    assert "no Broker 'default' in namespace 'default'" in warning
    assert "`headwater delete trigger everything -n default` removes it" in warning
    hw.cli("delete", "trigger", "everything")
    hw.cli("delete", "pingsource", "beat")
    assert hw.stop() == 0

    (tmp_path / "mesh.yaml").write_text(MESH)
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    assert set(sources(hw)) == {"Broker/default", "EventDisplay/display"}
    assert hw.stop() == 0
