"""``headwater up``: run the mesh (the MQTT broker, the HTTP listener, the resources).

How this works: the options become an :class:`~headwater.api.server.UpOptions`;
:func:`headwater.api.server.run` starts everything on the chosen event loop
and runs until SIGINT or SIGTERM, then drains and stops.
"""

from __future__ import annotations

import asyncio
import logging
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
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
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
    log_level: str,
) -> None:
    """Run Headwater with the given resources (port 0 picks a free port)."""
    from headwater.api.server import Server, StartupError, UpOptions, run
    from headwater.http_guard import HttpLimits
    from headwater.resources import ConfigError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    )

    def ready(server: Server) -> None:
        for name, url in server.urls.items():
            click.echo(f"headwater {__version__}: {name} listening on {url}")
        click.echo(f"headwater {__version__}: dashboard on {server.urls['http']}/")
        running = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        click.echo(f"headwater {__version__}: event loop {running}")
        click.echo("ready", err=False)
        sys.stdout.flush()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
            runner.run(run(options, ready))
    except ConfigError as exc:
        fail(f"invalid resources:\n{exc}")
    except StartupError as exc:
        fail(str(exc))


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop ``up`` runs on. uvloop's transports cost less per read and write:
    an HTTP delivery through aiohttp takes about 70 us of CPU on it against 90 us
    on asyncio's default loop (measured here with aiohttp's client)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    import uvloop

    return uvloop.new_event_loop
