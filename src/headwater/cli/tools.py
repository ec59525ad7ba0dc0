"""``headwater cesql`` and ``headwater simulate``: commands that need no running Headwater.

How this works: ``cesql`` compiles and evaluates an expression against an
event (from a file or a sample) with the same engine Triggers use;
``simulate`` runs simulated MQTT devices against a broker
(:mod:`headwater.sources.simulator`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from headwater.cli._common import (
    fail,
    main,
)


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
) -> None:
    """Run a fleet of simulated greenhouse sensors that publish telemetry and answer commands."""
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
        )
    except (ValueError, OSError) as exc:
        fail(str(exc))
    click.echo(
        f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}, "
        f"commands {stats.commands}, answered {stats.answered}"
    )
