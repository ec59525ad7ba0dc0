"""``headwater apply``, ``delete``, ``get`` and ``describe``: resources over the admin API.

How this works: each command is one or two admin API requests
(:mod:`headwater.api.resources`); ``get`` prints a table, JSON or YAML;
``describe`` adds the status a resource's component reports, its origin and,
for Triggers and Subscriptions, their delivery counters and latency; in a
mesh, the status is the sum over the nodes, each node's shown below it.
``get nodes`` lists the mesh's nodes (:mod:`headwater.cli.nodes`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from headwater.cli._common import (
    api_client,
    call,
    echo_yaml,
    emitted,
    fail,
    main,
    print_table,
    server_option,
    token_option,
    trace_link,
)
from headwater.cli.nodes import echo_per_node, show_nodes


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
    client = api_client(server, token)
    by_file: dict[str, None] = dict.fromkeys(item.file for item in loaded)
    for file in by_file:
        result = call(
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
        for warning in result.get("warnings", []):
            click.echo(f"warning: {warning['text']}", err=True)


@main.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Delete what these files or directories define (repeatable).",
)
@server_option
@token_option
def delete(
    kind: str | None,
    name: str | None,
    namespace: str,
    files: tuple[Path, ...],
    server: str | None,
    token: str | None,
) -> None:
    """Delete a resource (KIND NAME), or what files define (-f), like kubectl delete."""
    from headwater.api.client import ApiError
    from headwater.resources import ConfigError, load_paths

    client = api_client(server, token)
    if not files:
        if not kind or not name:
            raise click.UsageError("give KIND NAME, or -f FILE")
        call(client, "DELETE", f"/api/v1/resources/{kind}/{namespace}/{name}")
        click.echo(f"{kind.lower()}/{name} deleted")
        return
    if kind or name:
        raise click.UsageError("give KIND NAME or -f FILE, not both")
    try:
        keys = [item.resource.key for item in load_paths(files)]
    except ConfigError as exc:
        fail(f"invalid resources:\n{exc}")
    # What others refer to is refused (409) until they are gone: try again after them.
    failed = False
    while keys:
        refused: list[tuple[str, str, str]] = []
        for key in keys:
            try:
                client.request("DELETE", "/api/v1/resources/{}/{}/{}".format(*key))
            except ApiError as exc:
                if exc.status == 409 and "refer to it" in str(exc):
                    refused.append(key)
                    continue
                failed = True
                click.echo(f"error: {key[0].lower()}/{key[2]}: {exc}", err=True)
                continue
            click.echo(f"{key[0].lower()}/{key[2]} deleted")
        if len(refused) == len(keys):
            for key in refused:
                what = f"{key[0].lower()}/{key[2]}"
                click.echo(f"error: {what}: other resources refer to it", err=True)
            failed = True
            break
        keys = refused
    if failed:
        sys.exit(1)


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
    """List resources of a kind, or `all` of them (or show one); `nodes`: the mesh's nodes."""
    client = api_client(server, token)
    if kind.lower() in ("node", "nodes"):
        show_nodes(client, name, output)
        return
    every = kind.lower() == "all"
    if name and every:
        fail("`get all` lists every resource; give a kind to show one by name", 2)
    if name:
        items = [call(client, "GET", f"/api/v1/resources/{kind}/{namespace or 'default'}/{name}")]
    else:
        query = f"?namespace={namespace}" if namespace else ""
        path = "/api/v1/resources" if every else f"/api/v1/resources/{kind}"
        items = call(client, "GET", path + query)["items"]
    if not emitted(items, output):
        _table(items)


def _ready(item: dict[str, Any]) -> tuple[str, str]:
    for condition in item.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return condition["status"], condition.get("reason", "")
    return "Unknown", ""


def _source(item: dict[str, Any], *, long: bool = False) -> str:
    """Where a resource came from: ``file mesh.yaml:3`` or ``api`` (``long``: with detail)."""
    origin = item.get("status", {}).get("origin") or {}
    where = f"{origin.get('file')}:{origin['line']}" if origin.get("line") else origin.get("file")
    node = origin.get("node")
    if origin.get("source") == "api":
        if not long:
            return "api"
        on = f" on node {node}" if node else ""
        return (
            f"applied through the API{on} (from {where}) at {origin.get('applied')}, "
            f"resourceVersion {origin.get('resourceVersion')}"
        )
    if origin.get("source") == "file":
        return f"file {where}" + (f" of node {node}" if long and node else "")
    return "-"


def _table(items: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAMESPACE", "KIND", "NAME", "READY", "REASON", "SOURCE"):
        table.add_column(column)
    for item in items:
        ready, reason = _ready(item)
        meta = item["metadata"]
        table.add_row(
            meta.get("namespace", "default"),
            item["kind"],
            meta["name"],
            ready,
            reason,
            _source(item),
        )
    print_table(table)


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@server_option
@token_option
def describe(kind: str, name: str, namespace: str, server: str | None, token: str | None) -> None:
    """Show a resource's spec, conditions, counters and last error."""
    item = call(api_client(server, token), "GET", f"/api/v1/resources/{kind}/{namespace}/{name}")
    source = _source(item, long=True)
    status = item.pop("status", {})
    status.pop("origin", None)
    meta = item["metadata"]
    click.echo(f"Name:         {meta['name']}")
    click.echo(f"Namespace:    {meta.get('namespace', 'default')}")
    click.echo(f"Kind:         {item['kind']} ({item['apiVersion']})")
    click.echo(f"Source:       {source}")
    for key, value in sorted(meta.get("annotations", {}).items()):
        click.echo(f"Annotation:   {key}={value}")
    click.echo("Spec:")
    echo_yaml(item.get("spec", {}), indent="  ")
    click.echo("Conditions:")
    for condition in status.pop("conditions", []):
        line = f"  {condition['type']}={condition['status']}"
        if condition.get("reason"):
            line += f"  {condition['reason']}: {condition.get('message', '')}"
        click.echo(line)
    latency = status.pop("latencySeconds", None)
    status.pop("dispatchers", None)
    trace_id = status.pop("lastErrorTraceId", None)
    per_node = status.pop("nodes", None)
    unanswered = status.pop("unansweredNodes", None)
    last_error = _last_error(status)
    if status:
        click.echo("Status (counters since start):")
        width = max(len(k) for k in status)
        for key, value in status.items():
            click.echo(f"  {key + ':':<{width + 1}} {'-' if value is None else value}")
    if last_error is not None:
        click.echo(f"Last error:   {last_error}")
    if trace_id:
        click.echo(f"  its trace:  {trace_link(trace_id, server, token)}")
    if latency and latency.get("count"):
        p50, p99 = (_bucket_quantile(latency, q) for q in (0.5, 0.99))
        click.echo(f"Latency:      p50 <= {p50}s, p99 <= {p99}s over {latency['count']} deliveries")
    if per_node:
        echo_per_node(per_node, unanswered)
    if item["kind"] in ("Trigger", "Subscription"):
        click.echo(f"Dead letters: {_kept(item, server, token)}")


def _last_error(status: dict[str, Any]) -> str | None:
    """``lastError`` with its time and attempt number, as one line (None: no such field)."""
    if "lastError" not in status:
        return None
    error = status.pop("lastError")
    when = status.pop("lastErrorTime", None)
    attempt = status.pop("lastErrorAttempt", None)
    if error is None:
        return "-"
    where = ", ".join(
        part
        for part in (f"attempt {attempt}" if attempt else "", f"at {when}" if when else "")
        if part
    )
    return f"{error}" + (f" ({where})" if where else "")


def _kept(item: dict[str, Any], server: str | None, token: str | None) -> str:
    """How many dead letters of this Trigger/Subscription the store keeps, and where to look."""
    import urllib.parse

    meta = item["metadata"]
    namespace = meta.get("namespace", "default")
    origin = f"{item['kind']}/{namespace}/{meta['name']}"
    query = urllib.parse.urlencode({"origin": origin, "limit": 1000})
    letters = call(api_client(server, token), "GET", f"/api/v1/deadletters?{query}")["items"]
    waiting = sum(1 for letter in letters if letter["redriven"] != "delivered")
    count = f"{len(letters)}+" if len(letters) >= 1000 else str(len(letters))
    flag = f"--{item['kind'].lower()} {meta['name']}" + (
        f" -n {namespace}" if namespace != "default" else ""
    )
    return (
        f"{count} kept, {waiting} not re-driven yet (`headwater deadletters list {flag}`; "
        f"`headwater deadletters redrive {flag}` sends them again)"
    )


def _bucket_quantile(histogram: dict[str, Any], q: float) -> str:
    """The bucket bound under which the q-quantile of a latency histogram falls."""
    rank, seen = q * histogram["count"], 0
    for bound, count in histogram["buckets"].items():
        seen += count
        if seen >= rank:
            return str(bound)
    return "+Inf"
