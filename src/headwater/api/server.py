"""``headwater up``: load resources, start the runtime and the HTTP listener, run until told.

How this works: the resource files are loaded and checked before anything
listens; the data directory is checked and the event log and the state store
opened in it; the runtime runs the files and what the API applied before
(every problem of the files, their references included, is one config error,
and nothing starts then); a resource from the files that cannot start (a
listener whose port is taken) stops the start with one line; the HTTP listener
(admin API, and the data-plane ingress) binds behind a connection guard
(headwater.http_guard: header, body and idle timeouts, a cap on connections
that keeps room for the admin API; the open-files limit is raised to the hard
limit first); a ready line says what listens where. SIGTERM/SIGINT stop
ContainerSource processes (they post to the HTTP listener), then the HTTP
listener, let deliveries under way finish for the drain timeout, say how many
did not (they are delivered again after the next start), commit cursors, and
return normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import ipaddress
import json
import logging
import os
import signal
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from headwater.api.app import add_ingress, create_app
from headwater.cluster.connection import ClusterError, NatsOptions
from headwater.eventing.http_worker import HttpWorker
from headwater.eventing.ingress import is_ingress_request
from headwater.http_guard import (
    GuardedSite,
    HttpLimits,
    PeerLogger,
    fit_to_open_files,
    guard_app,
    raise_open_files_limit,
)
from headwater.log import EventLog, LogError, SqliteLog
from headwater.log.sqlite import Durability
from headwater.resources import ConfigError, Loaded, LoadResult, collect_paths, collect_text
from headwater.resources.models import INGRESS_TOKEN_ANNOTATION
from headwater.resources.mqtt import MqttBrokerSource
from headwater.runtime import Runtime
from headwater.runtime.applied import EMBEDDED_DEFAULTS as EMBEDDED_FILE
from headwater.runtime.context import CHANNEL_PREFIX
from headwater.runtime.watch import watch
from headwater.state import SqliteStore, StateError, StateStore

if TYPE_CHECKING:
    from headwater.cluster.mesh import Mesh

log = logging.getLogger(__name__)


SHUTDOWN_GRACE = 5.0
"""Seconds in-flight HTTP requests get to finish when Headwater stops."""

GC_THRESHOLDS = (20_000, 20, 50)
"""The collector's generation thresholds while serving (see ``run``)."""

DEFAULT_DRAIN_TIMEOUT = 10.0
"""Seconds deliveries under way get to finish at shutdown (after ingress stopped)."""

DEFAULT_MQTT_PORT = 1883
"""The embedded default MQTT broker's port when ``--mqtt-port`` is not given."""

EVENT_LOG_FILE = "events.db"
STATE_FILE = "state.db"


@dataclass
class UpOptions:
    files: Sequence[Path] = ()
    data_dir: Path = Path("headwater-data")
    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int | None = None
    """The embedded default's MQTT port (1883 if None); with files, the port of
    their one MQTT listener (refused when there is not exactly one)."""
    watch: bool = False
    token: str | None = None
    durability: Durability = "fsync"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    http_worker: bool = True
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    nats: NatsOptions | None = None
    """With NATS: this node joins a mesh (JetStream log and KV state; see headwater.cluster)."""
    node_name: str | None = None
    """The node's name in the mesh (default: the host name)."""
    nats_replicas: int | None = None
    """Replicas of the mesh's streams and buckets (default: 3 with 3+ servers, else 1)."""


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
    if options.nats is not None:
        # What the first node of a mesh seeds for every node: sessions live in
        # JetStream (no dataDir), and each node's --mqtt-port moves its own
        # listener (see _local_overrides), so the shared copy keeps the default.
        text = EMBEDDED_DEFAULTS.replace("  dataDir: %(data_dir)s\n", "")
        return text % {"host": json.dumps(options.host), "port": DEFAULT_MQTT_PORT}
    return EMBEDDED_DEFAULTS % {
        "host": json.dumps(options.host),
        "port": DEFAULT_MQTT_PORT if options.mqtt_port is None else options.mqtt_port,
        "data_dir": json.dumps(str(options.data_dir / "mqtt")),
    }


class StartupError(RuntimeError):
    """Headwater cannot start; the message says why and what to change."""


@dataclass
class Server:
    runtime: Runtime
    runner: web.AppRunner
    urls: dict[str, str] = field(default_factory=dict)
    mesh: Mesh | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(options: UpOptions) -> LoadResult:
    """The files (or the embedded defaults), with every problem collected, not raised."""
    if not options.files:
        return collect_text(embedded_defaults(options), EMBEDDED_FILE)
    found = collect_paths(options.files)
    if options.mqtt_port is not None and not found.problems and options.nats is None:
        _set_mqtt_port(found, options.mqtt_port)
    return found


def _local_overrides(options: UpOptions) -> Callable[[Loaded], Loaded]:
    """What this node changes in what the mesh runs: ``--mqtt-port`` moves the one
    listener of an MqttBrokerSource (on this node only; the stored copy keeps its port)."""
    port = options.mqtt_port

    def local(item: Loaded) -> Loaded:
        resource = item.resource
        if port is None or not isinstance(resource, MqttBrokerSource):
            return item
        if len(resource.spec.listeners) != 1:
            log.warning(
                "--mqtt-port moves the one listener of an MqttBrokerSource; %s/%s has %d: "
                "its ports are kept",
                resource.namespace,
                resource.name,
                len(resource.spec.listeners),
            )
            return item
        [listener] = resource.spec.listeners
        changed = listener.model_copy(update={"port": port})
        spec = resource.spec.model_copy(update={"listeners": [changed]})
        return dataclasses.replace(item, resource=resource.model_copy(update={"spec": spec}))

    return local


def _set_mqtt_port(found: LoadResult, port: int) -> None:
    """``--mqtt-port`` with files: the port of their one MQTT listener, or a clear no."""
    sources = [
        (index, item, item.resource)
        for index, item in enumerate(found.loaded)
        if isinstance(item.resource, MqttBrokerSource)
    ]
    listeners = sum(len(resource.spec.listeners) for _, _, resource in sources)
    if len(sources) != 1 or listeners != 1:
        where = ", ".join(f"{item.file}:{item.line}" for _, item, _ in sources)
        raise StartupError(
            f"--mqtt-port sets the port of the one MQTT listener of your files, but they have "
            f"{listeners} listener(s) in {len(sources)} MqttBrokerSource(s)"
            + (f" ({where}): set each listener's port in its file" if sources else "")
        )
    [(index, item, resource)] = sources
    [listener] = resource.spec.listeners
    changed = listener.model_copy(update={"port": port})
    spec = resource.spec.model_copy(update={"listeners": [changed]})
    found.loaded[index] = dataclasses.replace(
        item, resource=resource.model_copy(update={"spec": spec})
    )


def data_dir_problem(path: Path) -> str | None:
    """Why Headwater cannot keep its files in ``path`` (None when it can), in one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the data directory {path}: {exc.strerror or exc}"
    if not path.is_dir():
        return f"the data directory {path} is not a directory"
    user = _user()
    for target in (path, *(path / name for name in (EVENT_LOG_FILE, STATE_FILE))):
        needs = os.W_OK | (os.X_OK if target == path else 0)
        if target.exists() and not os.access(target, needs):
            info = target.stat()
            what = "the data directory" if target == path else "the data file"
            return (
                f"{what} {target} is not writable by {user}: permission denied "
                f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); fix its "
                "permissions or choose another directory with --data-dir"
            )
    return None


def _user() -> str:
    uid = os.geteuid()
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def open_log(options: UpOptions) -> SqliteLog:
    problem = data_dir_problem(options.data_dir)
    if problem is not None:
        raise StartupError(problem)
    try:
        return SqliteLog(options.data_dir / EVENT_LOG_FILE, durability=options.durability)
    except (OSError, LogError) as exc:
        raise StartupError(f"cannot open the event log in {options.data_dir}: {exc}") from exc


def open_state(options: UpOptions) -> SqliteStore:
    try:
        return SqliteStore(options.data_dir / STATE_FILE)
    except StateError as exc:
        raise StartupError(f"cannot open the state store in {options.data_dir}: {exc}") from exc


async def open_mesh(options: UpOptions) -> Mesh:
    """Join the mesh on NATS (``--nats``): a clear StartupError when that cannot be."""
    from headwater.cluster.mesh import Mesh, default_node_name

    assert options.nats is not None
    problem = data_dir_problem(options.data_dir)
    if problem is not None:
        raise StartupError(problem)
    mesh = Mesh(
        options.nats,
        node=options.node_name or default_node_name(),
        data_dir=options.data_dir,
        replicas=options.nats_replicas,
    )
    try:
        await mesh.open()
    except ClusterError as exc:
        raise StartupError(str(exc)) from exc
    return mesh


async def start(options: UpOptions) -> Server:
    if not is_loopback(options.host) and not options.token:
        raise StartupError(
            f"refusing to serve the admin API on {options.host} without a token: "
            "set --token or HEADWATER_TOKEN, or bind to 127.0.0.1"
        )
    found = load(options)
    mesh: Mesh | None = None
    events: EventLog
    state: StateStore
    if options.nats is not None:
        mesh = await open_mesh(options)
        assert mesh.log is not None and mesh.state is not None
        events, state = mesh.log, mesh.state
    else:
        events = open_log(options)
        try:
            state = open_state(options)
        except BaseException:
            await events.close()
            raise
    # Before the runtime: the listeners size their shares of the descriptors from it.
    open_files = raise_open_files_limit()
    # HttpSinks' POSTs: a worker process by default (see eventing.transport).
    worker = HttpWorker() if options.http_worker else None
    runtime = Runtime(events, state=state, data_dir=options.data_dir, delivery=worker, mesh=mesh)
    if mesh is not None:
        from headwater.cluster.resources import MeshResources

        mesh.bind(runtime)
        runtime.desired = MeshResources(
            runtime.reconciler,
            runtime.state,
            mesh.node,
            files_given=bool(options.files),
            local=_local_overrides(options),
        )
    try:
        if worker is not None:
            await worker.start()
        try:
            await runtime.start(found)  # ConfigError: every problem, before anything runs
        except StateError as exc:
            raise StartupError(f"cannot read the resources to run: {exc}") from exc
        await runtime.desired.settled()  # in a mesh: what the start followed, started
        if not options.files and (mesh is None or runtime.get(EMBEDDED_MQTT) is not None):
            _check_embedded_mqtt(runtime, options)
        _check_started(runtime)
        app = create_app(runtime, token=options.token, mesh=mesh)
        add_ingress(app, runtime)
        limits = fit_to_open_files(options.http_limits, open_files)
        guard = guard_app(app, limits, data_plane=_data_plane)
        # Tails (server-sent events) never end by themselves: after this grace
        # period at shutdown their handlers are cancelled.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE,
            logger=PeerLogger(),
        )
        await runner.setup()
        site = GuardedSite(runner, options.host, options.http_port, guard)
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
        if mesh is not None and mesh.registry is not None:
            await mesh.registry.leave()
        if mesh is not None:
            await mesh.close()
        raise
    server = Server(runtime, runner, mesh=mesh)
    for sock_host, port in _bound(runner):
        server.urls["http"] = f"http://{_url_host(sock_host)}:{port}"
    if not is_loopback(options.host):
        _warn_open_brokers(runtime, options.host)
    runtime.listeners.update(server.urls)
    for key, url in runtime.listeners.items():
        if key.startswith("mqtt/"):
            # The embedded default's one broker is "mqtt"; with files, each source by name.
            server.urls[key if options.files else "mqtt"] = url
    if mesh is not None and mesh.registry is not None:
        with contextlib.suppress(StateError):
            await mesh.registry.beat()  # the addresses, now that they are known
    return server


def _check_embedded_mqtt(runtime: Runtime, options: UpOptions) -> None:
    """The embedded MQTT broker is part of the defaults: not listening is a startup error."""
    [ready] = runtime.status(EMBEDDED_MQTT)["conditions"]
    if ready["status"] == "True":
        return
    port = DEFAULT_MQTT_PORT if options.mqtt_port is None else options.mqtt_port
    message = ready.get("message") or ready.get("reason") or f"its status is {ready['status']}"
    if "in use" in message.lower():
        raise StartupError(
            f"MQTT port {port} on {options.host} is in use; "
            "choose another with --mqtt-port (0 picks a free one)"
        )
    raise StartupError(
        f"cannot start the embedded MQTT broker on {options.host}:{port}: "
        f"{message} (see --mqtt-port)"
    )


def _check_started(runtime: Runtime) -> None:
    """What the files define must run: a component that failed to start (a listener
    whose port is taken, a password file that is not there) stops the start."""
    failed: list[str] = []
    for resource in runtime.resources():
        origin = runtime.origin(resource.key)
        if origin is None or origin.source != "file":
            continue  # what the API applied is reported (Ready=False), and can be fixed there
        [ready, *_] = runtime.status(resource.key)["conditions"]
        if ready["status"] == "False":
            failed.append(
                f"{resource.kind} {resource.namespace}/{resource.name} ({origin.where}) "
                f"cannot start: {ready.get('message') or ready.get('reason')}"
            )
    if failed:
        raise StartupError("; ".join(failed))


def _data_plane(request: web.BaseRequest) -> bool:
    """Whether ``request`` is for a Broker's or a Channel's ingress (the guard's data plane)."""
    return is_ingress_request(request) or (
        request.method == "POST" and request.path.startswith(CHANNEL_PREFIX + "/")
    )


def _warn_open_brokers(runtime: Runtime, host: str) -> None:
    """One line naming the Brokers whose ingress anyone who can reach ``host`` may post to.

    Knative's ingress has no authentication either; a gateway on a LAN deserves
    to be told, and the annotation is the remedy.
    """
    open_brokers = [
        f"{broker.namespace}/{broker.name}"
        for broker in runtime.resources("Broker")
        if not broker.metadata.annotations.get(INGRESS_TOKEN_ANNOTATION)
    ]
    if open_brokers:
        log.warning(
            "the Broker ingress on %s accepts events from anyone who can reach it for %s: "
            "annotate a Broker with %s (a bearer token) to require one",
            host,
            ", ".join(sorted(open_brokers)),
            INGRESS_TOKEN_ANNOTATION,
        )


def _bound(runner: web.AppRunner) -> list[tuple[str, int]]:
    return [(str(a[0]), int(a[1])) for a in runner.addresses if isinstance(a, tuple)]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def stop(server: Server, drain_timeout: float = 0.0) -> None:
    """Stop accepting (HTTP first), let deliveries under way finish, commit cursors.

    ContainerSource processes stop before the HTTP listener closes: they post
    their events to it, and would otherwise see it go away under them.
    """
    await server.runtime.stop_processes()
    await server.runner.cleanup()
    mesh = server.mesh
    await server.runtime.close(grace=drain_timeout)
    if mesh is not None and mesh.registry is not None:
        # Only now: a node that left is gone for the others, whose janitor would
        # close the sessions of its MQTT clients (wills published, DISCONNECT 0x8E)
        # while its brokers still hand them over as a shutdown does.
        await mesh.registry.leave()  # the others see this node go at once
    if mesh is not None:
        await mesh.close()


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
        result = await server.runtime.reload(load(options))
    except (ConfigError, StartupError) as exc:
        log.error("not reloading, the files have problems:\n%s", exc)
        return
    log.info(
        "reloaded: %d created, %d updated, %d deleted",
        len(result.created),
        len(result.updated),
        len(result.deleted),
    )
