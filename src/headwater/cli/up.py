"""``headwater up``: run the mesh (the MQTT broker, the HTTP listener, the resources).

How this works: the options become an :class:`~headwater.api.server.UpOptions`;
:func:`headwater.api.server.run` starts everything on the chosen event loop
and runs until SIGINT or SIGTERM, then drains and stops. With ``--nats`` the
node joins a mesh on that NATS JetStream cluster (:mod:`headwater.cluster`):
the event log, the resources and MQTT sessions live there instead of the
data directory.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import click

from headwater import __version__
from headwater.cli._common import (
    fail,
    main,
)


@main.command()
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Resource file or directory (repeatable).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("headwater-data"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="The embedded default's MQTT port [default: 1883]; with -f, the port of the one "
    "MQTT listener your files define (refused if they define more or none).",
)
@click.option("--watch", is_flag=True, help="Reload when the resource files change.")
@click.option("--token", envvar="HEADWATER_TOKEN", default=None, help="Admin API bearer token.")
@click.option(
    "--durability",
    type=click.Choice(["fsync", "normal"]),
    default="fsync",
    show_default=True,
    help="fsync: every acknowledged event is on disk; normal: faster, may lose the last "
    "moments on power loss (never on a process crash).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds deliveries under way get to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--loop",
    type=click.Choice(["uvloop", "asyncio"]),
    default="uvloop",
    show_default=True,
    help="Event loop: uvloop (libuv; fastest) or the standard library's asyncio.",
)
@click.option(
    "--http-worker/--no-http-worker",
    default=True,
    show_default=True,
    help="Make HTTP deliveries from a worker process, which uses a second CPU core.",
)
# The HTTP listener's limits (headwater.http_guard's defaults; a test keeps
# them equal without importing aiohttp for every command).
@click.option(
    "--http-max-connections",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="HTTP connections open at once. At the cap, the connection waiting longest for "
    "a request is closed, or the new one answered 503; data-plane requests never take "
    "the last eighth, kept for the admin API.",
)
@click.option(
    "--http-header-timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a request's headers may take to arrive (then 408 and close).",
)
@click.option(
    "--http-body-timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a request body may pause between two reads (then the connection closes).",
)
@click.option(
    "--http-idle-timeout",
    type=click.FloatRange(0, min_open=True),
    default=75.0,
    show_default=True,
    help="Seconds a kept-alive HTTP connection may wait for its next request.",
)
@click.option(
    "--nats",
    "nats_urls",
    envvar="HEADWATER_NATS",
    default=None,
    metavar="URLS",
    help="Join a mesh on this NATS JetStream cluster (comma-separated URLs): the event log, "
    "the resources and MQTT sessions live there, shared with every node.",
)
@click.option(
    "--nats-creds", type=click.Path(path_type=Path), default=None, help="NATS credentials file."
)
@click.option(
    "--nats-tls-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="CA certificates to verify the NATS servers with (turns TLS on).",
)
@click.option(
    "--nats-tls-cert", type=click.Path(path_type=Path), default=None, help="Client certificate."
)
@click.option(
    "--nats-tls-key", type=click.Path(path_type=Path), default=None, help="Client certificate key."
)
@click.option(
    "--nats-replicas",
    type=click.IntRange(1, 5),
    default=None,
    help="Copies of the mesh's streams and buckets [default: 3 with 3+ servers, else 1].",
)
@click.option(
    "--node-name",
    default=None,
    help="This node's name in the mesh [default: the host name]; unique per node.",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with event and trace ids on lines about an event.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    metavar="URL",
    help="Trace every event and export the spans over OTLP/HTTP to URL (a collector's "
    "base URL, e.g. http://localhost:4318). OTEL_EXPORTER_OTLP_ENDPOINT does the same; "
    "without either, tracing is off.",
)
@click.option(
    "--trace-sampling",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="RATIO",
    help="Share of new traces recorded (head sampling; an incoming sampled flag decides "
    "for the events that bring one) [default: OTEL_TRACES_SAMPLER_ARG, else 1].",
)
@click.option(
    "--trace-dead-letters/--no-trace-dead-letters",
    default=True,
    show_default=True,
    help="Record the trace of every event given up on, even when not sampled.",
)
@click.option(
    "--trace-url",
    envvar="HEADWATER_TRACE_URL",
    default=None,
    metavar="TEMPLATE",
    help="A trace viewer's address with {trace_id} in it (e.g. "
    "http://localhost:16686/trace/{trace_id}): the dashboard and describe link to it.",
)
def up(
    files: tuple[Path, ...],
    data_dir: Path,
    host: str,
    http_port: int,
    mqtt_port: int | None,
    watch: bool,
    token: str | None,
    durability: str,
    drain_timeout: float,
    loop: str,
    http_worker: bool,
    http_max_connections: int,
    http_header_timeout: float,
    http_body_timeout: float,
    http_idle_timeout: float,
    nats_urls: str | None,
    nats_creds: Path | None,
    nats_tls_ca: Path | None,
    nats_tls_cert: Path | None,
    nats_tls_key: Path | None,
    nats_replicas: int | None,
    node_name: str | None,
    log_level: str,
    log_format: str,
    otlp_endpoint: str | None,
    trace_sampling: float | None,
    trace_dead_letters: bool,
    trace_url: str | None,
) -> None:
    """Run Headwater with the given resources (port 0 picks a free port)."""
    from headwater import tracing
    from headwater.api.server import Server, StartupError, UpOptions, run
    from headwater.http_guard import HttpLimits
    from headwater.logs import configure
    from headwater.resources import ConfigError

    configure(log_level, "json" if log_format == "json" else "text")
    try:
        config = tracing.resolve(
            endpoint=otlp_endpoint,
            sampling=trace_sampling,
            dead_letters=trace_dead_letters,
            trace_url=trace_url,
        )
        tracing.viewer = tracing.Viewer(trace_url) if trace_url else None
    except tracing.TracingConfigError as exc:
        fail(str(exc), 2)
    mesh_flags = (nats_creds, nats_tls_ca, nats_tls_cert, nats_tls_key, nats_replicas, node_name)
    if nats_urls is None and any(flag is not None for flag in mesh_flags):
        fail("--nats-creds, --nats-tls-*, --nats-replicas and --node-name need --nats URLS", 2)
    nats = None
    if nats_urls is not None:
        from headwater.cluster import ClusterError, NatsOptions, parse_servers

        try:
            nats = NatsOptions(
                parse_servers(nats_urls),
                creds=nats_creds,
                tls_ca=nats_tls_ca,
                tls_cert=nats_tls_cert,
                tls_key=nats_tls_key,
            )
        except ClusterError as exc:
            fail(str(exc), 2)
    options = UpOptions(
        files=files,
        data_dir=data_dir,
        host=host,
        http_port=http_port,
        mqtt_port=mqtt_port,
        watch=watch,
        token=token,
        durability="normal" if durability == "normal" else "fsync",
        drain_timeout=drain_timeout,
        http_worker=http_worker,
        http_limits=HttpLimits(
            http_max_connections, http_header_timeout, http_body_timeout, http_idle_timeout
        ),
        nats=nats,
        node_name=node_name,
        nats_replicas=nats_replicas,
    )

    def ready(server: Server) -> None:
        if server.mesh is not None:
            mesh = server.mesh
            click.echo(
                f"headwater {__version__}: node {mesh.node} of the mesh on "
                f"{','.join(mesh.options.servers)} ({mesh.replicas} replica(s))"
            )
        for name, url in server.urls.items():
            click.echo(f"headwater {__version__}: {name} listening on {url}")
        click.echo(f"headwater {__version__}: dashboard on {server.urls['http']}/")
        running = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        click.echo(f"headwater {__version__}: event loop {running}")
        click.echo("ready", err=False)
        sys.stdout.flush()

    tracer = tracing.Tracer(config) if config is not None else None
    previous = tracing.install(tracer)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
            runner.run(run(options, ready))
    except ConfigError as exc:
        fail(f"invalid resources:\n{exc}")
    except StartupError as exc:
        fail(str(exc))
    finally:
        tracing.install(previous)
        if tracer is not None:
            tracer.close()  # the spans still queued are exported


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop ``up`` runs on. uvloop's transports cost less per read and write:
    an HTTP delivery through aiohttp takes about 70 us of CPU on it against 90 us
    on asyncio's default loop (measured here with aiohttp's client)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    import uvloop

    return uvloop.new_event_loop
