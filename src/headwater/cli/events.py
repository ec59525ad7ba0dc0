"""``headwater send``, ``tail`` and ``replay``: events into and out of a Broker.

How this works: ``send`` posts one CloudEvent to a Broker's ingress (binary
mode); ``tail`` reads the admin API's server-sent events (a CESQL filter and a
start position optional); ``replay`` starts a replay job and follows it until
it ends (Ctrl-C cancels it on the server too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from headwater.cli._common import (
    api_client,
    call,
    cancel_option,
    fail,
    follow,
    job_counts,
    main,
    max_failures_option,
    server_option,
    token_option,
)


def _parse_extensions(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--ext")
        out[name] = value
    return out


@main.command()
@click.option("-b", "--broker", default="default", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--type", "type_", help="The event's type (required unless --file).")
@click.option("--source", default="/headwater/cli", show_default=True)
@click.option("--id", "id_", default=None, help="Defaults to a random UUID.")
@click.option("--subject", default=None)
@click.option("--data", default=None, help="The payload; @FILE reads a file.")
@click.option("--content-type", default=None, help="Defaults to application/json for JSON data.")
@click.option("--ext", multiple=True, help="An extension attribute NAME=VALUE (repeatable).")
@click.option(
    "-f", "--file", "event_file", type=click.Path(path_type=Path), help="A JSON-format event."
)
@server_option
@token_option
def send(
    broker: str,
    namespace: str,
    type_: str | None,
    source: str,
    id_: str | None,
    subject: str | None,
    data: str | None,
    content_type: str | None,
    ext: tuple[str, ...],
    event_file: Path | None,
    server: str | None,
    token: str | None,
) -> None:
    """Build a CloudEvent from flags (or a JSON file) and POST it to a Broker."""
    import uuid

    from headwater.cloudevents import CloudEvent, InvalidEvent, from_json, to_http

    try:
        if event_file is not None:
            event = from_json(event_file.read_bytes())
        else:
            if not type_:
                raise click.UsageError("--type is required (or give an event with --file)")
            payload: bytes | None = None
            if data is not None:
                payload = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
                if content_type is None:
                    try:
                        orjson.loads(payload)
                        content_type = "application/json"
                    except orjson.JSONDecodeError:
                        content_type = "text/plain"
            attributes: dict[str, object] = {
                "specversion": "1.0",
                "id": id_ or str(uuid.uuid4()),
                "source": source,
                "type": type_,
                "subject": subject,
                "datacontenttype": content_type if payload is not None else None,
                **_parse_extensions(ext),
            }
            event = CloudEvent(attributes, payload if payload is not None else b"")
    except InvalidEvent as exc:
        fail(f"invalid event: {exc}", 2)
    except OSError as exc:
        fail(str(exc))
    headers, body = to_http(event, "binary")
    client = api_client(server, token)
    call(client, "POST", f"/{namespace}/{broker}", body=body, headers=headers)
    click.echo(f"sent {event.id} to broker {namespace}/{broker}")


@main.command()
@click.argument("broker", default="default")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--filter", "filter_", default=None, help="A CESQL expression events must match.")
@click.option(
    "--from",
    "start",
    default="latest",
    show_default=True,
    help="earliest, latest, offset:N or time:RFC3339.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--max", "max_events", type=int, default=None, help="Stop after this many events.")
@server_option
@token_option
def tail(
    broker: str,
    namespace: str,
    filter_: str | None,
    start: str,
    as_json: bool,
    max_events: int | None,
    server: str | None,
    token: str | None,
) -> None:
    """Show live events of a Broker, like Knative's event_display."""
    import urllib.parse

    from headwater.api.client import ApiError
    from headwater.cloudevents import from_json
    from headwater.sinks.display import format_pretty

    query = {"start": start, **({"filter": filter_} if filter_ else {})}
    path = f"/api/v1/brokers/{namespace}/{broker}/events?{urllib.parse.urlencode(query)}"
    seen = 0
    waiting = f"waiting for events on Broker {namespace}/{broker}"
    waiting += f" (from {start}" + (f", matching {filter_}" if filter_ else "") + ")"
    waiting += "; Ctrl-C stops" if max_events is None else f"; stops after {max_events}"

    def opened() -> None:
        # On stderr: stdout stays the events alone (--json is one event per line).
        click.echo(waiting, err=True)

    def warn(text: str) -> None:
        click.echo(f"warning: {text}", err=True)

    try:
        for data in api_client(server, token).stream_events(path, on_open=opened, on_warning=warn):
            click.echo(data.decode() if as_json else format_pretty(from_json(data)) + "\n")
            seen += 1
            if max_events is not None and seen >= max_events:
                return
    except ApiError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("broker", default="default")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    help="earliest, offset:N or time:RFC3339.",
)
@click.option("--to", "to", default=None, help="Destination URI, or KIND/NAME of a resource.")
@max_failures_option
@cancel_option("replay")
@server_option
@token_option
def replay(
    broker: str,
    namespace: str,
    start: str,
    to: str | None,
    max_failures: int | None,
    cancel_id: str | None,
    server: str | None,
    token: str | None,
) -> None:
    """Deliver a Broker's past events again, from an offset or a time, to a destination.

    Shows delivered, failed and remaining events until it is done; Ctrl-C
    cancels the replay on the server too.
    """
    from headwater.resources import KINDS

    client = api_client(server, token)
    if cancel_id is not None:
        job = call(client, "POST", f"/api/v1/replays/{cancel_id}/cancel")
        click.echo(f"replay {job['id']}: {job['state']}; {job_counts(job)}")
        return
    if to is None:
        raise click.UsageError("--to is required (or --cancel ID)")
    if "://" in to:
        destination: dict[str, Any] = {"uri": to}
    else:
        kind_name, _, name = to.partition("/")
        kinds = {k.lower(): k for k in KINDS}
        if kind_name.lower() not in kinds or not name:
            fail(f"--to must be a URI or KIND/NAME, not {to!r}", 2)
        cls = KINDS[kinds[kind_name.lower()]]
        destination = {"ref": {"apiVersion": cls.API_VERSIONS[0], "kind": cls.KIND, "name": name}}
    body: dict[str, Any] = {
        "namespace": namespace,
        "broker": broker,
        "start": start,
        "destination": destination,
    }
    if max_failures is not None:
        body["maxFailures"] = max_failures
    job = call(
        client, "POST", "/api/v1/replays", body=orjson.dumps(body), content_type="application/json"
    )
    follow(client, "/api/v1/replays", job, f"replay {job['id']} to {job['destination']}", "replay")
