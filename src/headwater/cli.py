"""The ``headwater`` command line.

Exit codes: 0 ok, 1 failure, 2 usage. Errors go to stderr as one readable line
(a config error lists each problem on its own line, with file and line).
Commands other than ``up`` talk to a running Headwater through the admin API
(``--server``, default http://127.0.0.1:8080, or ``HEADWATER_SERVER``).
Long jobs (replay, re-drive) show progress with delivered, failed and
remaining events, on a terminal as a bar and otherwise as a line every few
seconds; Ctrl-C cancels the job it started on the server too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from headwater import DEFAULT_SERVER, __version__


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


server_option = click.option(
    "--server",
    envvar="HEADWATER_SERVER",
    default=None,
    show_envvar=True,
    show_default=DEFAULT_SERVER,
    help="The admin API of the Headwater to talk to.",
)
max_failures_option = click.option(
    "--max-failures",
    type=click.IntRange(1),
    default=None,
    help="Stop once this many events could not be delivered (fail fast).",
)


def cancel_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--cancel", "cancel_id", default=None, metavar="ID", help=f"Cancel a running {what}."
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
) -> None:
    """Run Headwater with the given resources (port 0 picks a free port)."""
    from headwater.api.server import Server, StartupError, UpOptions, run
    from headwater.cluster import ClusterError, NatsOptions, parse_servers
    from headwater.http_guard import HttpLimits
    from headwater.resources import ConfigError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    nats = None
    mesh_flags = (nats_creds, nats_tls_ca, nats_tls_cert, nats_tls_key, nats_replicas, node_name)
    if nats_urls is None and any(flag is not None for flag in mesh_flags):
        fail("--nats-creds, --nats-tls-*, --nats-replicas and --node-name need --nats URLS", 2)
    if nats_urls is not None:
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

    client = _client(server, token)
    if not files:
        if not kind or not name:
            raise click.UsageError("give KIND NAME, or -f FILE")
        _call(client, "DELETE", f"/api/v1/resources/{kind}/{namespace}/{name}")
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
    client = _client(server, token)
    if kind.lower() in ("node", "nodes"):
        _nodes(client, name, output)
        return
    every = kind.lower() == "all"
    if name and every:
        fail("`get all` lists every resource; give a kind to show one by name", 2)
    if name:
        items = [_call(client, "GET", f"/api/v1/resources/{kind}/{namespace or 'default'}/{name}")]
    else:
        query = f"?namespace={namespace}" if namespace else ""
        path = "/api/v1/resources" if every else f"/api/v1/resources/{kind}"
        items = _call(client, "GET", path + query)["items"]
    if not _emitted(items, output):
        _table(items)


def _emitted(items: list[dict[str, Any]], output: str) -> bool:
    """Print ``items`` as JSON or YAML when asked; False for a table (the caller's)."""
    if output == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return True
    if output == "yaml":
        _echo_yaml(items)
        return True
    return False


def _print_table(table: Any) -> None:
    from rich.console import Console

    Console(width=max(100, os.get_terminal_size(0).columns if sys.stdin.isatty() else 100)).print(
        table
    )


def _nodes(client: Any, name: str | None, output: str) -> None:
    """``get nodes``: the mesh's live nodes (or this node alone, without a mesh)."""
    answer = _call(client, "GET", "/api/v1/nodes")
    items = [n for n in answer["items"] if name is None or n["name"] == name]
    if name is not None and not items:
        fail(f"no live node {name!r} in the mesh")
    if _emitted(items, output):
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ADDRESS", "VERSION", "UPTIME", "DEVICES", "CPU", "MEMORY"):
        table.add_column(column)
    for node in items:
        marker = " (this)" if node["name"] == answer.get("self") else ""
        addresses = node.get("addresses") or {}
        cpu = node.get("cpu")
        rss = node.get("rss")
        table.add_row(
            node["name"] + marker,
            addresses.get("http", "-"),
            node["version"],
            _duration(node["uptimeSeconds"]),
            str(node.get("devices", 0)),
            f"{cpu * 100:.0f}%" if isinstance(cpu, int | float) else "-",
            f"{rss / 2**20:.0f} MiB" if isinstance(rss, int) and rss else "-",
        )
    _print_table(table)
    if not answer.get("mesh"):
        click.echo("(a single node: start nodes with `headwater up --nats URLS` to form a mesh)")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


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
    _print_table(table)


def _echo_yaml(value: Any, indent: str = "") -> None:
    import io

    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    if isinstance(value, list):
        yaml.dump_all(value, out)
    else:
        yaml.dump(value, out)
    text = out.getvalue()
    click.echo("".join(indent + line for line in text.splitlines(keepends=True)), nl=False)


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@server_option
@token_option
def describe(kind: str, name: str, namespace: str, server: str | None, token: str | None) -> None:
    """Show a resource's spec, conditions, counters and last error."""
    item = _call(_client(server, token), "GET", f"/api/v1/resources/{kind}/{namespace}/{name}")
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
    _echo_yaml(item.get("spec", {}), indent="  ")
    click.echo("Conditions:")
    for condition in status.pop("conditions", []):
        line = f"  {condition['type']}={condition['status']}"
        if condition.get("reason"):
            line += f"  {condition['reason']}: {condition.get('message', '')}"
        click.echo(line)
    latency = status.pop("latencySeconds", None)
    status.pop("dispatchers", None)
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
    if latency and latency.get("count"):
        p50, p99 = (_bucket_quantile(latency, q) for q in (0.5, 0.99))
        click.echo(f"Latency:      p50 <= {p50}s, p99 <= {p99}s over {latency['count']} deliveries")
    if per_node:
        _describe_nodes(per_node, unanswered)
    if item["kind"] in ("Trigger", "Subscription"):
        click.echo(f"Dead letters: {_kept(item, server, token)}")


def _describe_nodes(per_node: dict[str, dict[str, Any]], unanswered: list[str] | None) -> None:
    """In a mesh: each node's counters (the status above is their sum)."""
    click.echo("Nodes (the counters above are their sum):")
    for node, status in per_node.items():
        counters = [
            f"{key}={value}"
            for key, value in status.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        active = status.get("activeNode")
        if "activeNode" in status and active != node:
            counters.insert(0, f"standby (runs on {active or 'no node yet'})")
        click.echo(f"  {node}: {', '.join(counters) or '-'}")
    if unanswered:
        click.echo(f"  not answering in time: {', '.join(unanswered)}")


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
    letters = _call(_client(server, token), "GET", f"/api/v1/deadletters?{query}")["items"]
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
    client = _client(server, token)
    _call(client, "POST", f"/{namespace}/{broker}", body=body, headers=headers)
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
    from headwater.sinks import format_pretty

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
        for data in _client(server, token).stream_events(path, on_open=opened, on_warning=warn):
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

    client = _client(server, token)
    if cancel_id is not None:
        job = _call(client, "POST", f"/api/v1/replays/{cancel_id}/cancel")
        click.echo(f"replay {job['id']}: {job['state']}; {_job_counts(job)}")
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
    job = _call(
        client, "POST", "/api/v1/replays", body=orjson.dumps(body), content_type="application/json"
    )
    _follow(client, "/api/v1/replays", job, f"replay {job['id']} to {job['destination']}", "replay")


PROGRESS_EVERY = 5.0
"""Seconds between progress lines when the output is not a terminal."""

POLL_EVERY = 0.2
"""Seconds between looks at a job's progress."""


def _job_counts(job: dict[str, Any]) -> str:
    remaining = "?" if job.get("remaining") is None else job["remaining"]
    text = f"delivered {job['delivered']}, failed {job['failed']}, remaining {remaining}"
    return text + (f", skipped {job['skipped']}" if job.get("skipped") else "")


def _follow(client: Any, prefix: str, job: dict[str, Any], label: str, command: str) -> NoReturn:
    """Show a job's progress until it ends; Ctrl-C cancels it. Exits 0 only if it all went."""
    import time as _time

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    path = f"{prefix}/{job['id']}"
    click.echo(f"{label}: started; `headwater {command} --cancel {job['id']}` cancels it")
    try:
        if sys.stdout.isatty():
            columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(label, total=None)
                while not job["done"]:
                    progress.update(
                        task,
                        total=job["total"],
                        completed=job["delivered"] + job["failed"] + job["skipped"],
                        description=f"{label}: {_job_counts(job)}",
                    )
                    _time.sleep(POLL_EVERY)
                    job = _call(client, "GET", path)
        else:
            said = _time.monotonic()
            while not job["done"]:
                if _time.monotonic() - said >= PROGRESS_EVERY:
                    click.echo(f"{label}: {_job_counts(job)}")
                    said = _time.monotonic()
                _time.sleep(POLL_EVERY)
                job = _call(client, "GET", path)
    except KeyboardInterrupt:
        job = _call(client, "POST", f"{path}/cancel")
        click.echo(f"{label}: cancelled; {_job_counts(job)}", err=True)
        sys.exit(130)
    click.echo(f"{label}: {job['state']}; {_job_counts(job)}")
    if job["error"]:
        fail(job["error"])
    sys.exit(1 if job["failed"] or job["state"] != "done" else 0)


# -- dead letters -----------------------------------------------------------------


def _origin_option(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        f"--{kind.lower()}", default=None, metavar="NAME", help=f"Only this {kind}'s."
    )


def _origin(namespace: str, trigger: str | None, subscription: str | None) -> str | None:
    if trigger and subscription:
        raise click.UsageError("give --trigger or --subscription, not both")
    if trigger:
        return f"Trigger/{namespace}/{trigger}"
    if subscription:
        return f"Subscription/{namespace}/{subscription}"
    return None


@main.group()
def deadletters() -> None:
    """Events Triggers and Subscriptions gave up on: list, show, re-drive.

    Every event given up on is kept here (a week, or 256 MiB), whether or not
    a dead letter sink also got it; describe counts them as deadLettered.
    """


@deadletters.command("list")
@_origin_option("Trigger")
@_origin_option("Subscription")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@server_option
@token_option
def deadletters_list(
    trigger: str | None,
    subscription: str | None,
    namespace: str,
    limit: int,
    output: str,
    server: str | None,
    token: str | None,
) -> None:
    """The newest dead letters first."""
    import urllib.parse

    from rich.console import Console
    from rich.table import Table

    query: dict[str, str | int] = {"limit": limit}
    origin = _origin(namespace, trigger, subscription)
    if origin:
        query["origin"] = origin
    path = f"/api/v1/deadletters?{urllib.parse.urlencode(query)}"
    items = _call(_client(server, token), "GET", path)["items"]
    if output == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return
    if not items:
        click.echo("no dead letters" + (f" of {origin}" if origin else ""))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "FAILED", "ORIGIN", "EVENT", "CODE", "ERROR", "RE-DRIVEN"):
        table.add_column(column)
    for item in items:
        source = item["origin"]
        table.add_row(
            str(item["id"]),
            item.get("failedAt") or "-",
            f"{source['kind']} {source['namespace']}/{source['name']}" if source else "-",
            f"{item['event'].get('id')} ({item['event'].get('type')})",
            "-" if item["code"] is None else str(item["code"]),
            (item.get("errorText") or item.get("error") or "")[:80],
            item["redriven"] or "-",
        )
    Console(width=160).print(table)


@deadletters.command("show")
@click.argument("id", type=click.IntRange(1))
@server_option
@token_option
def deadletters_show(id: int, server: str | None, token: str | None) -> None:
    """One dead letter: where it failed, why, and the event."""
    _echo_yaml(_call(_client(server, token), "GET", f"/api/v1/deadletters/{id}"))


@deadletters.command("redrive")
@click.argument("ids", nargs=-1, type=click.IntRange(1))
@click.option("--all", "every", is_flag=True, help="Every dead letter not delivered yet.")
@_origin_option("Trigger")
@_origin_option("Subscription")
@click.option("-n", "--namespace", default="default", show_default=True)
@max_failures_option
@cancel_option("re-drive")
@server_option
@token_option
def deadletters_redrive(
    ids: tuple[int, ...],
    every: bool,
    trigger: str | None,
    subscription: str | None,
    namespace: str,
    max_failures: int | None,
    cancel_id: str | None,
    server: str | None,
    token: str | None,
) -> None:
    """Deliver dead letters again to their origin's current subscriber, oldest first.

    IDs, --all, or those of one --trigger or --subscription; one failing again
    is kept as a new dead letter. Ctrl-C cancels the re-drive.
    """
    client = _client(server, token)
    if cancel_id is not None:
        job = _call(client, "POST", f"/api/v1/redrives/{cancel_id}/cancel")
        click.echo(f"re-drive {job['id']}: {job['state']}; {_job_counts(job)}")
        return
    origin = _origin(namespace, trigger, subscription)
    if sum(map(bool, (ids, every, origin))) != 1:
        raise click.UsageError("give IDs, --all, --trigger or --subscription (one of them)")
    body: dict[str, Any] = (
        {"ids": list(ids)} if ids else {"all": True} if every else {"origin": origin}
    )
    if max_failures is not None:
        body["maxFailures"] = max_failures
    job = _call(
        client, "POST", "/api/v1/redrives", body=orjson.dumps(body), content_type="application/json"
    )
    what = "every dead letter" if every else origin or f"{len(ids)} dead letter(s)"
    _follow(
        client, "/api/v1/redrives", job, f"re-drive {job['id']} of {what}", "deadletters redrive"
    )


# An expression may start with `-` (`-1 + 2`, `-temperature < 0`): what click
# does not know as an option is the expression, so no `--` is needed.
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


if __name__ == "__main__":  # pragma: no cover
    main()
