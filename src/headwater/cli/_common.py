"""What every ``headwater`` command shares: the group, failing, the API client, job progress.

How this works: :func:`main` is the click group each command module adds
its commands to; :func:`fail` prints one readable line to stderr and exits;
:func:`call` makes an admin API request and turns its error (with the
problems of a refused apply, one per line) into such a line; :func:`follow`
shows a job's progress until it ends, and cancels it on the server at Ctrl-C;
:func:`trace_link` adds the trace viewer's address (``up --trace-url``) to a trace id.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

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


# -- commands that talk to a running Headwater ---------------------------------


def api_client(server: str | None, token: str | None) -> Any:
    from headwater.api.client import ApiClient

    return ApiClient(server, token)


def call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    from headwater.api.client import ApiError

    try:
        return client.request(method, path, **kwargs)
    except ApiError as exc:
        problems = (exc.body or {}).get("problems") if isinstance(exc.body, dict) else None
        if problems:
            lines = [p["text"] if isinstance(p, dict) else str(p) for p in problems]
            fail(f"{exc}:\n" + "\n".join(lines))
        fail(str(exc))


PROGRESS_EVERY = 5.0
"""Seconds between progress lines when the output is not a terminal."""

POLL_EVERY = 0.2
"""Seconds between looks at a job's progress."""


def trace_url(trace_id: str, server: str | None, token: str | None) -> str | None:
    """The trace's address in the trace viewer, when the server knows one (--trace-url)."""
    tracing = call(api_client(server, token), "GET", "/api/v1/status").get("tracing") or {}
    template = tracing.get("traceUrl")
    return template.replace("{trace_id}", trace_id) if template else None


def trace_link(trace_id: str, server: str | None, token: str | None) -> str:
    """A trace id, and its address in the trace viewer when there is one."""
    url = trace_url(trace_id, server, token)
    return f"{trace_id} {url}" if url else trace_id


def job_counts(job: dict[str, Any]) -> str:
    remaining = "?" if job.get("remaining") is None else job["remaining"]
    text = f"delivered {job['delivered']}, failed {job['failed']}, remaining {remaining}"
    return text + (f", skipped {job['skipped']}" if job.get("skipped") else "")


def follow(client: Any, prefix: str, job: dict[str, Any], label: str, command: str) -> NoReturn:
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
                        description=f"{label}: {job_counts(job)}",
                    )
                    _time.sleep(POLL_EVERY)
                    job = call(client, "GET", path)
        else:
            said = _time.monotonic()
            while not job["done"]:
                if _time.monotonic() - said >= PROGRESS_EVERY:
                    click.echo(f"{label}: {job_counts(job)}")
                    said = _time.monotonic()
                _time.sleep(POLL_EVERY)
                job = call(client, "GET", path)
    except KeyboardInterrupt:
        job = call(client, "POST", f"{path}/cancel")
        click.echo(f"{label}: cancelled; {job_counts(job)}", err=True)
        sys.exit(130)
    click.echo(f"{label}: {job['state']}; {job_counts(job)}")
    if job["error"]:
        fail(job["error"])
    sys.exit(1 if job["failed"] or job["state"] != "done" else 0)


def echo_yaml(value: Any, indent: str = "") -> None:
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


def emitted(items: list[dict[str, Any]], output: str) -> bool:
    """Print ``items`` as JSON or YAML when ``output`` asks; False: a table (the caller's)."""
    if output == "json":
        import orjson

        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return True
    if output == "yaml":
        echo_yaml(items)
        return True
    return False


def print_table(table: Any) -> None:
    """A rich table, as wide as the terminal (at least 100 columns)."""
    import os

    from rich.console import Console

    width = max(100, os.get_terminal_size(0).columns if sys.stdin.isatty() else 100)
    Console(width=width).print(table)
