"""ContainerSource: local processes supervised with K_SINK and K_CE_OVERRIDES."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from headwater.api import add_ingress
from headwater.resources import ConfigError, load_text
from headwater.runtime import Runtime
from headwater.runtime.components import ContainerSourceComponent
from headwater.sources.container import ProcessSpec, ProcessSupervisor, sink_environment
from tests.helpers import wait_until

# An adapter as Knative writes them: POST one binary-mode CloudEvent to
# $K_SINK with the extensions of $K_CE_OVERRIDES, print the status, then wait.
ADAPTER = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request
    overrides = json.loads(os.environ.get("K_CE_OVERRIDES", "{}")).get("extensions", {})
    headers = {"ce-specversion": "1.0", "ce-id": "a-1", "ce-source": "/adapter",
               "ce-type": "dev.example.reading", "content-type": "application/json"}
    headers.update({"ce-" + k: v for k, v in overrides.items()})
    request = urllib.request.Request(os.environ["K_SINK"], data=b'{"t": 21}', headers=headers)
    print("posted", urllib.request.urlopen(request).status, os.environ["GREETING"], flush=True)
    time.sleep(60)
    """
)


def source_yaml(
    command: list[str],
    sink: str = "ref: {kind: Broker, name: default, apiVersion: eventing.knative.dev/v1}",
) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: default}}
        ---
        apiVersion: sources.knative.dev/v1
        kind: ContainerSource
        metadata: {{name: adapter}}
        spec:
          template:
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: adapter
                  image: example.com/adapter:1.0
                  workingDir: /tmp
                  command: {json.dumps(command)}
                  env:
                    - name: GREETING
                      value: hello
          ceOverrides:
            extensions: {{site: greenhouse-2}}
          sink:
            {sink}
        """
    )


# -- the resource -------------------------------------------------------------


def test_a_knative_container_source_with_a_command_loads() -> None:
    [_, loaded] = load_text(source_yaml(["adapter", "--period=1"]))
    container = loaded.resource.spec.template.spec.containers[0]  # type: ignore[attr-defined]
    assert container.command == ["adapter", "--period=1"]
    assert container.env[0].value == "hello"
    assert container.working_dir == "/tmp"


async def test_a_channel_sink_is_its_http_address() -> None:
    """A Channel has an HTTP ingress too: K_SINK is its address."""
    sink = "ref: {kind: Channel, name: orders, apiVersion: messaging.knative.dev/v1}"
    channel = "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: orders}\n"
    runtime = Runtime()
    try:
        runtime.listeners["http"] = "http://127.0.0.1:8999"
        await runtime.apply(load_text(channel + "---\n" + source_yaml(["true"], sink)))
        status = runtime.status(("ContainerSource", "default", "adapter"))
        assert status["sinkUri"] == "http://127.0.0.1:8999/channels/default/orders"
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("fragment", "replacement", "message"),
    [
        ('command: ["adapter"]', "args: [x]", "Headwater runs local processes"),
        ("value: hello", "valueFrom: {secretKeyRef: {name: s, key: k}}", "`valueFrom` reads"),
        ("kind: Broker, name: default,", "kind: EventDisplay, name: d,", "must be a Broker"),
        ("image: example", "imag: example", "did you mean `image`"),
    ],
)
def test_mistakes_are_config_errors(fragment: str, replacement: str, message: str) -> None:
    text = source_yaml(["adapter"])
    assert fragment in text
    with pytest.raises(ConfigError) as caught:
        load_text(text.replace(fragment, replacement, 1))
    assert message in str(caught.value)
    assert "ContainerSource" in str(caught.value)


def test_overrides_are_knatives_json() -> None:
    assert sink_environment("http://h/ns/b", {"site": "x"}) == {
        "K_SINK": "http://h/ns/b",
        "K_CE_OVERRIDES": '{"extensions": {"site": "x"}}',
    }
    assert sink_environment("http://h/ns/b", None) == {"K_SINK": "http://h/ns/b"}


# -- the supervisor -----------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


async def test_exits_are_restarted_with_doubling_delays(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    supervisor = ProcessSupervisor(
        ProcessSpec(
            "crashy",
            python(f"open({str(runs)!r}, 'a').write('x'); print('boom', flush=True); exit(3)"),
        ),
        sink_url=lambda: "http://127.0.0.1:9/default/default",
        restart_delay=0.05,
        restart_delay_max=0.2,
    )
    task = asyncio.create_task(supervisor.run())
    # Stopped between runs: a stop during a run would end that run by SIGTERM.
    await wait_until(lambda: supervisor.restarts >= 3 and supervisor.state == "backoff")
    await supervisor.stop()
    await task
    assert supervisor.last_exit_code == 3
    assert supervisor.last_error == "exited with code 3: boom"
    assert len(runs.read_text()) == supervisor.starts >= 3


async def test_waits_for_the_sink_address_before_starting(tmp_path: Path) -> None:
    seen = tmp_path / "sink"
    address: list[str] = []
    asked = 0

    def sink_url() -> str | None:
        nonlocal asked
        asked += 1
        return address[0] if address else None

    supervisor = ProcessSupervisor(
        ProcessSpec(
            "w", python(f"import os; open({str(seen)!r}, 'w').write(os.environ['K_SINK'])")
        ),
        sink_url=sink_url,
        restart_delay=10,
    )
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: asked >= 3)  # it looked, and looked again
    assert supervisor.state == "waiting" and supervisor.starts == 0
    address.append("http://127.0.0.1:1234/default/default")
    await wait_until(lambda: supervisor.state == "backoff")
    assert seen.read_text() == "http://127.0.0.1:1234/default/default"
    await supervisor.stop()
    await task


async def test_stop_kills_the_whole_group_after_the_grace_period(tmp_path: Path) -> None:
    child_pid = tmp_path / "child"
    code = f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(child_pid)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(60)
    """
    supervisor = ProcessSupervisor(
        ProcessSpec("stubborn", python(code)), sink_url=lambda: "http://x/", grace=0.3
    )
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: "ready" in supervisor.output)
    assert supervisor.pid is not None
    await supervisor.stop()
    await task
    pid = int(child_pid.read_text())
    await wait_until(lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, merely unreaped
        return stat.read().split(") ")[1][0] != "Z"


async def test_a_missing_program_is_an_error_that_is_retried() -> None:
    supervisor = ProcessSupervisor(
        ProcessSpec("missing", ["/nonexistent/adapter"]),
        sink_url=lambda: "http://x/",
        restart_delay=0.02,
    )
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: supervisor.restarts >= 2)
    await supervisor.stop()
    await task
    assert supervisor.starts == 0
    assert supervisor.last_error is not None
    assert supervisor.last_error.startswith("cannot start '/nonexistent/adapter': No such file")


async def test_long_output_lines_are_logged_in_pieces() -> None:
    supervisor = ProcessSupervisor(
        ProcessSpec("loud", python("print('y' * 40000, flush=True); print('end', flush=True)")),
        sink_url=lambda: "http://x/",
        restart_delay=10,
    )
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: supervisor.state == "backoff")
    await supervisor.stop()
    await task
    assert list(supervisor.output)[-1] == "end"
    assert sum(len(line) for line in supervisor.output) == 40003


# -- in the runtime -----------------------------------------------------------


async def test_the_process_posts_to_the_broker_with_the_overrides(tmp_path: Path) -> None:
    runtime = Runtime()
    app = web.Application()
    add_ingress(app, runtime)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await runtime.apply(load_text(source_yaml(python(ADAPTER))))
        key = ("ContainerSource", "default", "adapter")
        await asyncio.sleep(0.3)
        assert runtime.status(key)["processes"][0]["state"] == "waiting"
        runtime.listeners["http"] = str(server.make_url("")).rstrip("/")
        broker = runtime.broker("default", "default")
        reader = runtime.log.reader(broker.stream, "test")
        [(_, event)] = await reader.next_batch(10, timeout=10)
        assert (event.id, event.source, event.get("site")) == ("a-1", "/adapter", "greenhouse-2")
        assert event.data == b'{"t": 21}'
        status = runtime.status(key)
        assert status["sinkUri"] == runtime.listeners["http"] + "/default/default"
        component = runtime.reconciler.component(key)
        assert isinstance(component, ContainerSourceComponent)
        [supervisor] = component.supervisors
        await wait_until(lambda: "posted 202 hello" in supervisor.output)
        assert status["processes"][0]["state"] == "running"
        pid = supervisor.pid
        assert pid is not None
        await runtime.delete([key])  # the process goes with its resource
        assert not _alive(pid)
    finally:
        await runtime.close()
        await server.close()
