"""A ContainerSource under `headwater up`: its process runs, is described, and ends with it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.e2e.headwater_process import Headwater

SOURCE = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {{name: sleeper}}
spec:
  template:
    spec:
      containers:
        - command: [{python}, -c]
          args:
            - |
              import os, time
              open("pid", "w").write(str(os.getpid()))
              print(os.environ["K_SINK"], flush=True)
              time.sleep(120)
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""


def test_the_process_runs_with_k_sink_and_stops_with_headwater(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "source.yaml").write_text(
        SOURCE.format(python=orjson.dumps(sys.executable).decode())
    )
    hw = headwater_up("-f", "source.yaml")
    pid_file = tmp_path / "pid"
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.02)
    pid = int(pid_file.read_text())
    [described] = orjson.loads(hw.cli("get", "containersource", "sleeper", "-o", "json").stdout)
    [process] = described["status"]["processes"]
    assert process["state"] == "running" and process["pid"] == pid
    assert described["status"]["sinkUri"] == f"{hw.url}/default/default"
    # Its output is Headwater's log, line by line, under the source's name.
    assert hw.process.stdout is not None
    for _ in range(50):
        line = hw.process.stdout.readline()
        if f"ContainerSource default/sleeper: {hw.url}/default/default" in line:
            break
    else:
        raise AssertionError("the process's output is not in Headwater's log")
    assert hw.stop() == 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"process {pid} outlived headwater")
