"""The ``headwater`` command line.

Exit codes: 0 ok, 1 failure, 2 usage. Errors go to stderr as one readable line
(a config error lists each problem on its own line, with file and line).
Commands other than ``up`` talk to a running Headwater through the admin API
(``--server``, default http://127.0.0.1:8080, or ``HEADWATER_SERVER``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from headwater import __version__


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


server_option = click.option(
    "--server", envvar="HEADWATER_SERVER", default=None, help="Admin API base URL."
)
token_option = click.option(
    "--token", envvar="HEADWATER_TOKEN", default=None, help="Bearer token for the admin API."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headwater")
def main() -> None:
    """Headwater: MQTT devices in, CloudEvents routed Knative-style, a durable log."""


@main.command()
def version() -> None:
    """Print the Headwater version."""
    click.echo(__version__)


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
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def up(
    files: tuple[Path, ...],
    data_dir: Path,
    host: str,
    http_port: int,
    watch: bool,
    token: str | None,
    durability: str,
    log_level: str,
) -> None:
    """Run Headwater with the given resources (port 0 picks a free port)."""
    from headwater.api.server import Server, StartupError, UpOptions, run
    from headwater.resources import ConfigError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = UpOptions(files, data_dir, host, http_port, watch, token, durability)  # type: ignore[arg-type]

    def ready(server: Server) -> None:
        for name, url in server.urls.items():
            click.echo(f"headwater {__version__}: {name} listening on {url}")
        click.echo("ready", err=False)
        sys.stdout.flush()

    try:
        asyncio.run(run(options, ready))
    except ConfigError as exc:
        fail(f"invalid resources:\n{exc}")
    except StartupError as exc:
        fail(str(exc))


# -- commands that talk to a running Headwater ---------------------------------


def _client(server: str | None, token: str | None) -> Any:
    from headwater.api.client import ApiClient

    return ApiClient(server, token)


def _call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    from headwater.api.client import ApiError

    try:
        return client.request(method, path, **kwargs)
    except ApiError as exc:
        problems = (exc.body or {}).get("problems") if isinstance(exc.body, dict) else None
        if problems:
            lines = [p["text"] if isinstance(p, dict) else str(p) for p in problems]
            fail(f"{exc}:\n" + "\n".join(lines))
        fail(str(exc))


@main.command()
@click.option(
    "-f", "--file", "files", multiple=True, required=True, type=click.Path(path_type=Path)
)
@server_option
@token_option
def apply(files: tuple[Path, ...], server: str | None, token: str | None) -> None:
    """Create or update resources from files or directories."""
    from headwater.resources import ConfigError, load_paths

    try:
        loaded = load_paths(files)
    except ConfigError as exc:
        fail(f"invalid resources:\n{exc}")
    client = _client(server, token)
    by_file: dict[str, None] = dict.fromkeys(item.file for item in loaded)
    for file in by_file:
        result = _call(
            client,
            "POST",
            "/api/v1/resources",
            body=Path(file).read_bytes(),
            content_type="application/yaml",
            headers={"X-Headwater-File": file},
        )
        for verb in ("created", "updated", "unchanged"):
            for key in result[verb]:
                click.echo(f"{key['kind'].lower()}/{key['name']} {verb}")


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@server_option
@token_option
def delete(kind: str, name: str, namespace: str, server: str | None, token: str | None) -> None:
    """Delete a resource."""
    _call(_client(server, token), "DELETE", f"/api/v1/resources/{kind}/{namespace}/{name}")
    click.echo(f"{kind.lower()}/{name} deleted")


@main.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@server_option
@token_option
def get(
    kind: str,
    name: str | None,
    namespace: str | None,
    output: str,
    server: str | None,
    token: str | None,
) -> None:
    """List resources of a kind (or show one)."""
    client = _client(server, token)
    if name:
        items = [_call(client, "GET", f"/api/v1/resources/{kind}/{namespace or 'default'}/{name}")]
    else:
        query = f"?namespace={namespace}" if namespace else ""
        items = _call(client, "GET", f"/api/v1/resources/{kind}{query}")["items"]
    if output == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return
    if output == "yaml":
        _echo_yaml(items)
        return
    _table(items)


def _ready(item: dict[str, Any]) -> tuple[str, str]:
    for condition in item.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return condition["status"], condition.get("reason", "")
    return "Unknown", ""


def _table(items: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAMESPACE", "KIND", "NAME", "READY", "REASON"):
        table.add_column(column)
    for item in items:
        ready, reason = _ready(item)
        meta = item["metadata"]
        table.add_row(meta.get("namespace", "default"), item["kind"], meta["name"], ready, reason)
    Console(width=max(100, os.get_terminal_size(0).columns if sys.stdin.isatty() else 100)).print(
        table
    )


def _echo_yaml(value: Any) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    if isinstance(value, list):
        yaml.dump_all(value, sys.stdout)
    else:
        yaml.dump(value, sys.stdout)


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@server_option
@token_option
def describe(kind: str, name: str, namespace: str, server: str | None, token: str | None) -> None:
    """Show a resource's spec, conditions, counters and last error."""
    item = _call(_client(server, token), "GET", f"/api/v1/resources/{kind}/{namespace}/{name}")
    status = item.pop("status", {})
    click.echo(f"Name:       {item['metadata']['name']}")
    click.echo(f"Namespace:  {item['metadata'].get('namespace', 'default')}")
    click.echo(f"Kind:       {item['kind']} ({item['apiVersion']})")
    click.echo("Spec:")
    _echo_yaml(item.get("spec", {}))
    click.echo("Conditions:")
    for condition in status.pop("conditions", []):
        line = f"  {condition['type']}={condition['status']}"
        if condition.get("reason"):
            line += f" ({condition['reason']}: {condition.get('message', '')})"
        click.echo(line)
    if status:
        click.echo("Status:")
        for key, value in status.items():
            click.echo(f"  {key}: {value}")


if __name__ == "__main__":  # pragma: no cover
    main()
