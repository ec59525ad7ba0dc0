"""``headwater cesql`` and ``headwater simulate``: commands that need no running Headwater.

How this works: ``cesql`` compiles and evaluates an expression against an
event (from a file or a sample) with the same engine Triggers use;
``simulate`` runs simulated MQTT devices against a broker
(:mod:`headwater.sources.simulator`); with ``--register`` it registers them
in a running Headwater's device registry first (so it talks to the admin
API then, ``--server``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from headwater.cli._common import fail, main, server_option, token_option


@main.command("cesql", context_settings={"ignore_unknown_options": True})
@click.argument("expression")
@click.option(
    "--event",
    "event_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A JSON-format CloudEvent to evaluate against (default: no attributes).",
)
def cesql_command(expression: str, event_file: Path | None) -> None:
    """Compile a CESQL expression and print its value and errors (exit 1 if invalid)."""
    from headwater import cesql
    from headwater.cloudevents import InvalidEvent, from_json

    try:
        compiled = cesql.compile(expression)
    except cesql.ParseError as exc:
        fail(f"invalid CESQL: {exc}")
    for warning in compiled.warnings:
        click.echo(f"warning: {type(warning).__name__}: {warning.message}", err=True)
    event: Any = {}
    if event_file is not None:
        try:
            event = from_json(event_file.read_bytes())
        except (OSError, InvalidEvent) as exc:
            fail(f"cannot read the event: {exc}", 2)
    result = compiled.evaluate(event)
    click.echo(cesql.format_value(result.value))
    for error in result.errors:
        click.echo(f"{type(error).__name__}: {error.message}", err=True)
    if result.complete is not None and result.complete != result.value:
        shown = cesql.format_value(result.complete)
        click.echo(f"complete evaluation (CESQL 4.1) would give: {shown}", err=True)
    click.echo(f"matches: {'yes' if compiled.matches(event) else 'no'}", err=True)


@main.command()
@click.option("--devices", type=click.IntRange(1), default=10, show_default=True)
@click.option(
    "--rate", type=float, default=10.0, show_default=True, help="Messages/s, whole fleet."
)
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True)
@click.option("--qos", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N messages.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--tls", is_flag=True, help="TLS even for mqtt:// (mqtts:// implies it).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--username", envvar="MQTT_USERNAME", default=None)
@click.option("--password", envvar="MQTT_PASSWORD", default=None)
@click.option("--mqtt311", is_flag=True, help="Speak MQTT 3.1.1 instead of 5.0.")
@click.option(
    "--prefix",
    default=None,
    help="Client ids are PREFIX-0, PREFIX-1, ... [default: sim-XXXX, new each run, so that "
    "two simulators never take over each other's devices]",
)
@click.option(
    "--register",
    is_flag=True,
    help="Register the devices in the device registry first (through the admin API, "
    "--server) and connect with their secrets.",
)
@server_option
@token_option
def simulate(
    devices: int,
    rate: float,
    broker: str,
    qos: int,
    count: int | None,
    duration: float | None,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    username: str | None,
    password: str | None,
    mqtt311: bool,
    prefix: str | None,
    register: bool,
    server: str | None,
    token: str | None,
) -> None:
    """Run a fleet of simulated greenhouse sensors that publish telemetry and answer commands."""
    from headwater.api.client import ApiError
    from headwater.cli.devices import register_simulated
    from headwater.sources.simulator import run_cli

    try:
        stats = run_cli(
            devices,
            rate,
            broker,
            qos,
            count,
            duration,
            tls,
            ca_file,
            cert_file,
            key_file,
            username,
            password,
            mqtt311,
            prefix,
            functools.partial(register_simulated, server, token) if register else None,
        )
    except (ValueError, OSError, ApiError) as exc:
        fail(str(exc))
    click.echo(
        f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}, "
        f"commands {stats.commands}, answered {stats.answered}, reconnects {stats.reconnects}"
    )
    if stats.refused:
        click.echo(
            f"warning: {stats.refused} (the broker's ACL, or its `devices.publish` templates, "
            "may not allow the simulator's topic sensors/<device>/climate)",
            err=True,
        )
