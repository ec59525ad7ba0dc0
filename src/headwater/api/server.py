"""``headwater up``: load resources, start the runtime and the HTTP listener, run until told.

How this works: the resource files are loaded and checked before anything
listens (a config error exits without side effects); the runtime applies them;
the HTTP listener (admin API, and the data-plane ingress) binds; a ready line
says what listens where. SIGTERM/SIGINT stop accepting, let the runtime finish
in-flight work and commit cursors, and return normally.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import json
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from headwater.api.app import create_app
from headwater.eventing import Ingress
from headwater.log import NotAHeadwaterLog, SqliteLog
from headwater.log.sqlite import Durability
from headwater.resources import ConfigError, Loaded, load_paths, load_text
from headwater.runtime.runtime import Runtime
from headwater.runtime.watch import watch

log = logging.getLogger(__name__)


SHUTDOWN_GRACE = 5.0
"""Seconds in-flight HTTP requests get to finish when Headwater stops."""

GC_THRESHOLDS = (20_000, 20, 50)
"""The collector's generation thresholds while serving (see ``run``)."""

DEFAULT_DRAIN_TIMEOUT = 10.0
"""Seconds deliveries under way get to finish at shutdown (after ingress stopped)."""


@dataclass
class UpOptions:
    files: Sequence[Path] = ()
    data_dir: Path = Path("headwater-data")
    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int = 1883
    watch: bool = False
    token: str | None = None
    durability: Durability = "fsync"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    http_worker: bool = True


# With no resource files, `headwater up` runs the embedded default: a Broker
# named `default` whose every event is shown by an EventDisplay, and the
# embedded MQTT broker, whose every publish becomes an event on that Broker.
EMBEDDED_DEFAULTS = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: display}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: mqtt}
spec:
  listeners:
    - {host: %(host)s, port: %(port)d}
  dataDir: %(data_dir)s
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""
EMBEDDED_MQTT = ("MqttBrokerSource", "default", "mqtt")


def embedded_defaults(options: UpOptions) -> str:
    return EMBEDDED_DEFAULTS % {
        "host": json.dumps(options.host),
        "port": options.mqtt_port,
        "data_dir": json.dumps(str(options.data_dir / "mqtt")),
    }


class StartupError(RuntimeError):
    """Headwater cannot start; the message says why and what to change."""


@dataclass
class Server:
    runtime: Runtime
    runner: web.AppRunner
    urls: dict[str, str] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(options: UpOptions) -> list[Loaded]:
    if options.files:
        return load_paths(options.files)
    return load_text(embedded_defaults(options), "<embedded defaults>")


def open_log(options: UpOptions) -> SqliteLog:
    try:
        options.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteLog(options.data_dir / "events.db", durability=options.durability)
    except (OSError, NotAHeadwaterLog) as exc:
        raise StartupError(f"cannot open the event log in {options.data_dir}: {exc}") from exc


async def start(options: UpOptions) -> Server:
    if not is_loopback(options.host) and not options.token:
        raise StartupError(
            f"refusing to serve the admin API on {options.host} without a token: "
            "set --token or HEADWATER_TOKEN, or bind to 127.0.0.1"
        )
    loaded = load(options)  # ConfigError propagates before anything listens
    runtime = Runtime(open_log(options), http_worker=options.http_worker)
    try:
        if runtime.http_worker is not None:
            await runtime.http_worker.start()
        await runtime.apply(loaded)
        if not options.files:
            _check_embedded_mqtt(runtime, options)
        app = create_app(runtime, token=options.token)
        Ingress(runtime.ingress_lookup).add_routes(app)
        # Tails (server-sent events) never end by themselves: after this grace
        # period at shutdown their handlers are cancelled.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        await runner.setup()
        site = web.TCPSite(runner, options.host, options.http_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"HTTP port {options.http_port} on {options.host} is in use; "
                    "choose another with --http-port (0 picks a free one)"
                ) from exc
            raise StartupError(
                f"cannot listen on {options.host}:{options.http_port}: {exc}"
            ) from exc
    except BaseException:
        await runtime.close()
        raise
    server = Server(runtime, runner)
    for sock_host, port in _bound(runner):
        server.urls["http"] = f"http://{_url_host(sock_host)}:{port}"
    runtime.listeners.update(server.urls)
    for key, url in runtime.listeners.items():
        if key.startswith("mqtt/"):
            # The embedded default's one broker is "mqtt"; with files, each source by name.
            server.urls[key if options.files else "mqtt"] = url
    return server


def _check_embedded_mqtt(runtime: Runtime, options: UpOptions) -> None:
    """The embedded MQTT broker is part of the defaults: not listening is a startup error."""
    [ready] = runtime.status(EMBEDDED_MQTT)["conditions"]
    if ready["status"] == "True":
        return
    message = ready.get("message") or ready.get("reason") or "unknown error"
    if "in use" in message.lower():
        raise StartupError(
            f"MQTT port {options.mqtt_port} on {options.host} is in use; "
            "choose another with --mqtt-port (0 picks a free one)"
        )
    raise StartupError(
        f"cannot start the embedded MQTT broker on {options.host}:{options.mqtt_port}: "
        f"{message} (see --mqtt-port)"
    )


def _bound(runner: web.AppRunner) -> list[tuple[str, int]]:
    return [(str(a[0]), int(a[1])) for a in runner.addresses if isinstance(a, tuple)]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def stop(server: Server, drain_timeout: float = 0.0) -> None:
    """Stop accepting (HTTP first), let deliveries under way finish, commit cursors."""
    await server.runner.cleanup()
    await server.runtime.close(grace=drain_timeout)


async def run(options: UpOptions, on_ready: Callable[[Server], None]) -> None:
    """Run until SIGINT/SIGTERM."""
    server = await start(options)
    # What lives as long as the process (modules, resources, components) leaves
    # the collector's view: full collections under load then scan only what
    # the traffic allocates (benchmarks/broker_e2e.py: 529 -> 59 ms per run).
    gc.collect()
    gc.freeze()
    # Every event on the durable path allocates a dozen short-lived objects; the
    # default first-generation threshold (700) collects every ~60 events. A larger
    # one collects young garbage in fewer, larger passes (-5% CPU per event in
    # the ingest micro benchmark) for a few MB of extra garbage between passes.
    gc.set_threshold(*GC_THRESHOLDS)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    watcher: asyncio.Task[None] | None = None
    try:
        on_ready(server)
        if options.watch and options.files:
            watcher = asyncio.create_task(
                watch(list(options.files), lambda: _reload(server, options)), name="watch"
            )
        await stopping.wait()
        log.info("stopping")
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await stop(server, options.drain_timeout)


async def _reload(server: Server, options: UpOptions) -> None:
    try:
        loaded = load(options)
        result = await server.runtime.reconciler.replace(loaded)
    except ConfigError as exc:
        log.error("not reloading, the files have problems:\n%s", exc)
        return
    log.info(
        "reloaded: %d created, %d updated, %d deleted",
        len(result.created),
        len(result.updated),
        len(result.deleted),
    )
