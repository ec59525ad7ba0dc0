"""``headwater device ...``: the device registry from the command line, through the admin API.

How this works: the ``device`` group joins :func:`headwater.cli._common.main`
when this module is imported (as every command module). Each command is one
or a few calls of :mod:`headwater.api.devices` (``--server``/
``HEADWATER_SERVER`` as every command that talks to a running Headwater). A
generated secret is printed once, as the API answers it, with what the
device connects with. ``import`` checks the whole file here first
(:func:`headwater.devices.imports.parse_rows`: every problem with its row,
nothing sent) and sends it in parts of :data:`IMPORT_CHUNK` devices; the
secrets it generates go to ``--secrets-out`` (a CSV only the owner may read)
or to standard output. ``command --wait`` follows the command until it is
answered, fails or expires, or the wait is over, and prints the answer.
"""

from __future__ import annotations

import csv
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Final

import click
import orjson

from headwater.cli._common import (
    api_client,
    call,
    echo_yaml,
    fail,
    main,
    server_option,
    token_option,
)

__all__ = ["device", "register_simulated"]

IMPORT_CHUNK: Final = 5000
"""Devices per import request: well under the API's 4 MiB body limit with certificates."""

FINISHED: Final = ("answered", "failed", "expired")

namespace_option = click.option(
    "-n", "--namespace", default="default", show_default=True, help="The devices' namespace."
)


def _path(device_id: str, namespace: str, rest: str = "", **query: Any) -> str:
    params = {"namespace": namespace, **{k: v for k, v in query.items() if v is not None}}
    return (
        f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}{rest}"
        f"?{urllib.parse.urlencode(params)}"
    )


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _labels(values: tuple[str, ...], current: dict[str, str] | None = None) -> dict[str, str]:
    """``k=v`` sets a label, ``k-`` removes it (as kubectl label)."""
    labels = dict(current or {})
    for item in values:
        if item.endswith("-") and "=" not in item:
            labels.pop(item[:-1], None)
            continue
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE (or NAME- to remove)")
        labels[name] = value
    return labels


def _secret_lines(secrets: list[dict[str, str]]) -> None:
    for secret in secrets:
        click.echo(f"secret: {secret['secret']}")
        click.echo(
            f"  shown once: device {secret['device']} connects with username and client id "
            f"{secret['device']} and this password (credential {secret['credential']})"
        )


def _password_stdin() -> str:
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        fail("no password on standard input", 2)
    return line


def _credential_specs(
    password_stdin: bool,
    password_hash: str | None,
    cert: Path | None,
    fingerprint: str | None,
    subject: str | None,
) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    if password_stdin:
        specs.append({"type": "password", "password": _password_stdin()})
    if password_hash:
        specs.append({"type": "password", "hash": password_hash})
    if cert is not None:
        specs.append({"type": "x509", "certificate": cert.read_text()})
    if fingerprint or subject:
        spec: dict[str, Any] = {"type": "x509"}
        if fingerprint:
            spec["fingerprint"] = fingerprint
        if subject:
            spec["subject"] = subject
        specs.append(spec)
    return specs


def _ago(then: float | None) -> str:
    if not then:
        return "never"
    seconds = max(0, int(time.time() - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@main.group()
def device() -> None:
    """The device registry: add, list, show, update, disable, delete, import; twins, commands.

    A device connects to an MqttBrokerSource with `devices` turned on, with
    its id as MQTT username and client id and one of its credentials.
    """


@device.command("add")
@click.argument("device_id", metavar="ID")
@namespace_option
@click.option("-l", "--label", "labels", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("--disabled", is_flag=True, help="Register it disabled (it cannot connect yet).")
@click.option("--password-stdin", is_flag=True, help="A password you chose, read from stdin.")
@click.option("--password-hash", default=None, help="A $scrypt$ hash (from a password file).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The device's client certificate (PEM).")  # fmt: skip
@click.option("--fingerprint", default=None, help="Its certificate's SHA-256 fingerprint.")
@click.option("--subject", default=None, help="Its certificate's subject DN (CN=...,O=...).")
@server_option
@token_option
def device_add(
    device_id: str,
    namespace: str,
    labels: tuple[str, ...],
    disabled: bool,
    password_stdin: bool,
    password_hash: str | None,
    cert: Path | None,
    fingerprint: str | None,
    subject: str | None,
    server: str | None,
    token: str | None,
) -> None:
    """Register a device; without a credential option it gets a generated secret."""
    body: dict[str, Any] = {
        "id": device_id,
        "namespace": namespace,
        "labels": _labels(labels),
        "enabled": not disabled,
    }
    specs = _credential_specs(password_stdin, password_hash, cert, fingerprint, subject)
    if specs:
        body["credentials"] = specs
    answer = call(
        api_client(server, token),
        "POST",
        "/api/v1/devices",
        body=_json(body),
        content_type="application/json",
    )
    click.echo(f"device {device_id} added (namespace {namespace})")
    _secret_lines(answer["secrets"])


@device.command("list")
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("--online/--offline", "online", default=None, help="Only those online (offline).")
@click.option("-l", "--selector", default=None, help="Label selector: site=a,tier!=test,key,!key")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@server_option
@token_option
def device_list(
    namespace: str,
    all_namespaces: bool,
    online: bool | None,
    selector: str | None,
    output: str,
    server: str | None,
    token: str | None,
) -> None:
    """List devices with whether they are online and when they were last seen."""
    client = api_client(server, token)
    query: dict[str, Any] = {"limit": 10_000}
    if not all_namespaces:
        query["namespace"] = namespace
    if online is not None:
        query["online"] = "true" if online else "false"
    if selector:
        query["selector"] = selector
    items: list[dict[str, Any]] = []
    while True:
        page = call(client, "GET", f"/api/v1/devices?{urllib.parse.urlencode(query)}")
        items.extend(page["items"])
        if "continue" not in page:
            break
        query["continue"] = page["continue"]
    if output == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return
    if not items:
        click.echo(
            "no devices" + ("" if online is None else " " + ("online" if online else "offline"))
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    columns = ["NAMESPACE"] if all_namespaces else []
    for column in [*columns, "ID", "ENABLED", "ONLINE", "LAST SEEN", "LABELS", "CREDENTIALS"]:
        table.add_column(column)
    for item in items:
        presence = item["presence"]
        row = [item["namespace"]] if all_namespaces else []
        table.add_row(
            *row,
            item["id"],
            "yes" if item["enabled"] else "no",
            "yes" if presence["online"] else "no",
            "now" if presence["online"] else _ago(presence.get("lastSeen")),
            ",".join(f"{k}={v}" for k, v in sorted(item["labels"].items())) or "-",
            ",".join(c["type"] for c in item["credentials"]) or "-",
        )
    Console(width=160).print(table)


@device.command("show")
@click.argument("device_id", metavar="ID")
@namespace_option
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
@server_option
@token_option
def device_show(
    device_id: str, namespace: str, output: str, server: str | None, token: str | None
) -> None:
    """A device: its registry entry, presence, twin and last commands."""
    client = api_client(server, token)
    shown = call(client, "GET", _path(device_id, namespace))
    shown["twin"] = call(client, "GET", _path(device_id, namespace, "/twin"))
    commands = call(client, "GET", _path(device_id, namespace, "/commands", limit=5))
    shown["commands"] = commands["items"]
    if output == "json":
        click.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        echo_yaml(shown)


@device.command("update")
@click.argument("device_id", metavar="ID")
@namespace_option
@click.option("-l", "--label", "labels", multiple=True, help="NAME=VALUE sets, NAME- removes.")
@click.option("--enable/--disable", "enabled", default=None, help="Let it connect, or cut it off.")
@click.option("--add-secret", is_flag=True, help="Add a generated secret (printed once).")
@click.option("--rotate-secret", is_flag=True,
              help="Replace its generated secrets with a new one (printed once).")  # fmt: skip
@click.option("--password-stdin", is_flag=True, help="Add a password read from stdin.")
@click.option("--password-hash", default=None, help="Add a $scrypt$ password hash.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Add a client certificate (PEM).")  # fmt: skip
@click.option("--fingerprint", default=None, help="Add a certificate by its SHA-256 fingerprint.")
@click.option("--subject", default=None, help="Add a certificate by its subject DN.")
@click.option("--remove-credential", multiple=True, metavar="ID",
              help="Remove a credential (its id from `device show`); repeatable.")  # fmt: skip
@server_option
@token_option
def device_update(
    device_id: str,
    namespace: str,
    labels: tuple[str, ...],
    enabled: bool | None,
    add_secret: bool,
    rotate_secret: bool,
    password_stdin: bool,
    password_hash: str | None,
    cert: Path | None,
    fingerprint: str | None,
    subject: str | None,
    remove_credential: tuple[str, ...],
    server: str | None,
    token: str | None,
) -> None:
    """Change labels, enable or disable it, add or remove credentials.

    A device connected with a credential that is removed, or that is
    disabled, is cut off at once.
    """
    client = api_client(server, token)
    body: dict[str, Any] = {}
    if labels:
        current = call(client, "GET", _path(device_id, namespace))
        body["labels"] = _labels(labels, current["labels"])
        body["revision"] = current["revision"]  # nobody else's change is undone
    if enabled is not None:
        body["enabled"] = enabled
    add = _credential_specs(password_stdin, password_hash, cert, fingerprint, subject)
    if add_secret or rotate_secret:
        add.append({"type": "secret"})
    if add:
        body["addCredentials"] = add
    if rotate_secret:
        body["replaceSecrets"] = True
    if remove_credential:
        body["removeCredentials"] = list(remove_credential)
    if not body:
        raise click.UsageError("nothing to change: give --label, --enable/--disable or credentials")
    answer = call(
        client,
        "PATCH",
        _path(device_id, namespace),
        body=_json(body),
        content_type="application/json",
    )
    click.echo(f"device {device_id} updated")
    _secret_lines(answer["secrets"])


def _set_enabled(
    device_id: str, namespace: str, enabled: bool, server: str | None, token: str | None
) -> None:
    call(
        api_client(server, token),
        "PATCH",
        _path(device_id, namespace),
        body=_json({"enabled": enabled}),
        content_type="application/json",
    )
    click.echo(f"device {device_id} {'enabled' if enabled else 'disabled'}")


def _switch(name: str, enabled: bool, doc: str) -> None:
    @device.command(name, help=doc)
    @click.argument("device_id", metavar="ID")
    @namespace_option
    @server_option
    @token_option
    def switch(device_id: str, namespace: str, server: str | None, token: str | None) -> None:
        _set_enabled(device_id, namespace, enabled, server, token)


_switch("disable", False, "Refuse its connections from now on, and cut it off if it is connected.")
_switch("enable", True, "Let a disabled device connect again.")


@device.command("delete")
@click.argument("device_id", metavar="ID")
@namespace_option
@server_option
@token_option
def device_delete(device_id: str, namespace: str, server: str | None, token: str | None) -> None:
    """Remove a device (cut off if connected; its unfinished commands fail)."""
    call(api_client(server, token), "DELETE", _path(device_id, namespace))
    click.echo(f"device {device_id} deleted")


@device.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@namespace_option
@click.option("--secrets-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the generated secrets (CSV: device,secret) here, readable by you "
                   "only; default: standard output.")  # fmt: skip
@server_option
@token_option
def device_import(
    file: Path, namespace: str, secrets_out: Path | None, server: str | None, token: str | None
) -> None:
    """Register devices from a CSV (header: id,labels,enabled,password_hash,...) or JSON file.

    The whole file is checked first: with any problem, nothing is imported.
    Devices that exist are left as they are. Those without a credential get
    a generated secret.
    """
    from headwater.devices import InvalidDevice
    from headwater.devices.imports import parse_rows

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    try:
        rows = parse_rows(text, "json" if file.suffix.lower() == ".json" else "csv")
    except InvalidDevice as exc:
        fail(f"{file}: {exc}")
    client = api_client(server, token)
    created = 0
    existing: list[str] = []
    failed: list[dict[str, str]] = []
    secrets: list[dict[str, str]] = []
    query = urllib.parse.urlencode({"namespace": namespace})
    started = time.monotonic()
    for start in range(0, len(rows), IMPORT_CHUNK):
        answer = call(
            client,
            "POST",
            f"/api/v1/devices/import?{query}",
            body=_json({"devices": rows[start : start + IMPORT_CHUNK]}),
            content_type="application/json",
            timeout=300.0,
        )
        created += answer["created"]
        existing.extend(answer["existing"])
        failed.extend(answer["failed"])
        secrets.extend(answer["secrets"])
    took = time.monotonic() - started
    if secrets:
        if secrets_out is not None:
            fd = os.open(secrets_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", newline="") as out:
                _write_secrets(out, secrets)
        else:
            _write_secrets(sys.stdout, secrets)
    click.echo(
        f"imported {created} devices into namespace {namespace} in {took:.1f}s; "
        f"{len(existing)} existed already, {len(failed)} refused"
        + (f"; their secrets are in {secrets_out}" if secrets and secrets_out else ""),
        err=True,
    )
    for item in failed:
        click.echo(f"error: {item['device']}: {item['error']}", err=True)
    if failed:
        sys.exit(1)


def _write_secrets(out: Any, secrets: list[dict[str, str]]) -> None:
    writer = csv.writer(out)
    writer.writerow(["device", "secret"])
    for secret in secrets:
        writer.writerow([secret["device"], secret["secret"]])


def _data(text: str) -> tuple[Any, str | None]:
    """``--data``: JSON when it parses, else text; ``@FILE`` reads a file."""
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return raw, "text/plain"


def _duration(text: str) -> float:
    from headwater.devices import InvalidDevice
    from headwater.devices.command_model import parse_seconds

    try:
        return parse_seconds(text)
    except InvalidDevice as exc:
        raise click.BadParameter(str(exc)) from exc


def _show_response(command: dict[str, Any]) -> None:
    response = command.get("response") or {}
    if "data" in response:
        data = response["data"]
        click.echo(data if isinstance(data, str) else orjson.dumps(data).decode())
    elif "dataBase64" in response:
        click.echo(response["dataBase64"])


@device.command("command")
@click.argument("device_id", metavar="ID")
@namespace_option
@click.option("--data", required=True, help="The payload: JSON, or text; @FILE reads a file.")
@click.option("--content-type", default=None, help="Default: application/json for JSON data.")
@click.option("--expiry", default="60s", show_default=True,
              help="How long it may wait for the device and its answer (30s, 5m, 1h).")  # fmt: skip
@click.option("--wait", default=None, metavar="DURATION",
              help="Wait this long for the answer and print it (exit 1 if none).")  # fmt: skip
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@server_option
@token_option
def device_command(
    device_id: str,
    namespace: str,
    data: str,
    content_type: str | None,
    expiry: str,
    wait: str | None,
    output: str,
    server: str | None,
    token: str | None,
) -> None:
    """Send a command; it is queued until the device is online, sent once per connection,
    and tracked until it is answered, fails or expires."""
    from headwater.api.devices import MAX_WAIT

    try:
        value, guessed = _data(data)
    except OSError as exc:
        fail(str(exc))
    seconds = _duration(wait) if wait is not None else None
    body: dict[str, Any] = {"data": value, "expiry": _duration(expiry)}
    if content_type or guessed:
        body["contentType"] = content_type or guessed
    client = api_client(server, token)
    command = call(
        client,
        "POST",
        _path(device_id, namespace, "/commands"),
        body=_json(body),
        content_type="application/json",
    )
    if seconds is not None:
        deadline = time.monotonic() + seconds
        while command["status"] not in FINISHED:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            step = min(left, MAX_WAIT)
            command = call(
                client,
                "GET",
                _path(device_id, namespace, f"/commands/{command['id']}", wait=f"{step:.3f}"),
                timeout=step + 30,
            )
    if output == "json":
        click.echo(orjson.dumps(command, option=orjson.OPT_INDENT_2).decode())
    elif seconds is None:
        click.echo(f"command {command['id']} {command['status']} (expires in {expiry})")
    elif command["status"] == "answered":
        _show_response(command)
    elif command["status"] in FINISHED:
        _show_response(command)
        click.echo(
            f"command {command['id']} {command['status']}: {command.get('reason', '')}", err=True
        )
    else:
        click.echo(
            f"command {command['id']}: no answer within {wait} (status {command['status']}; "
            f"it stays queued until it expires)",
            err=True,
        )
    if seconds is not None and command["status"] != "answered":
        sys.exit(1)


@device.command("twin")
@click.argument("device_id", metavar="ID")
@namespace_option
@click.option("--set", "patch", default=None, metavar="JSON",
              help="Merge into the desired state (RFC 7386: null removes a member).")  # fmt: skip
@click.option("--replace", default=None, metavar="JSON", help="Replace the desired state.")
@click.option("--version", type=click.IntRange(0), default=None,
              help="Only if the desired state is still at this version.")  # fmt: skip
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
@server_option
@token_option
def device_twin(
    device_id: str,
    namespace: str,
    patch: str | None,
    replace: str | None,
    version: int | None,
    output: str,
    server: str | None,
    token: str | None,
) -> None:
    """Show a device's twin (desired, reported, delta), or change its desired state."""
    if patch is not None and replace is not None:
        raise click.UsageError("give --set or --replace, not both")
    client = api_client(server, token)
    text = patch if patch is not None else replace
    if text is None:
        twin = call(client, "GET", _path(device_id, namespace, "/twin"))
    else:
        try:
            state = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            fail(f"the state is not JSON: {exc}", 2)
        body: dict[str, Any] = {"state": state}
        if version is not None:
            body["version"] = version
        twin = call(
            client,
            "PATCH" if patch is not None else "PUT",
            _path(device_id, namespace, "/twin/desired"),
            body=_json(body),
            content_type="application/json",
        )
    if output == "json":
        click.echo(orjson.dumps(twin, option=orjson.OPT_INDENT_2).decode())
    else:
        echo_yaml(twin)


def register_simulated(
    server: str | None, token: str | None, devices: list[str], namespace: str = "default"
) -> dict[str, str]:
    """Register simulated devices (``headwater simulate --register``; a new secret for
    those that exist, labelled ``simulated=true``): each one's secret by id."""
    from headwater.api.client import ApiClient

    client = ApiClient(server, token)
    query = f"?namespace={urllib.parse.quote(namespace)}"
    body = orjson.dumps({"devices": [{"id": d, "labels": {"simulated": "true"}} for d in devices]})
    answer = client.request(
        "POST", f"/api/v1/devices/import{query}", body, "application/json", timeout=300.0
    )
    found = {s["device"]: s["secret"] for s in answer["secrets"]}
    rotate = orjson.dumps({"addCredentials": [{"type": "secret"}], "replaceSecrets": True})
    for device_id in answer["existing"]:
        changed = client.request("PATCH", _path(device_id, namespace), rotate, "application/json")
        [secret] = changed["secrets"]
        found[device_id] = secret["secret"]
    for failed in answer["failed"]:
        raise ValueError(f"cannot register {failed['device']}: {failed['error']}")
    return found
