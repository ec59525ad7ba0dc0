"""``headwater deadletters list|show|redrive``: what Triggers and Subscriptions gave up on.

How this works: the admin API's dead-letter routes
(:mod:`headwater.api.deadletters`); ``redrive`` of more than one record is a
job followed as ``replay`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import orjson

from headwater.cli._common import (
    api_client,
    call,
    cancel_option,
    echo_yaml,
    follow,
    job_counts,
    main,
    max_failures_option,
    server_option,
    token_option,
)

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
    items = call(api_client(server, token), "GET", path)["items"]
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
    echo_yaml(call(api_client(server, token), "GET", f"/api/v1/deadletters/{id}"))


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
    client = api_client(server, token)
    if cancel_id is not None:
        job = call(client, "POST", f"/api/v1/redrives/{cancel_id}/cancel")
        click.echo(f"re-drive {job['id']}: {job['state']}; {job_counts(job)}")
        return
    origin = _origin(namespace, trigger, subscription)
    if sum(map(bool, (ids, every, origin))) != 1:
        raise click.UsageError("give IDs, --all, --trigger or --subscription (one of them)")
    body: dict[str, Any] = (
        {"ids": list(ids)} if ids else {"all": True} if every else {"origin": origin}
    )
    if max_failures is not None:
        body["maxFailures"] = max_failures
    job = call(
        client, "POST", "/api/v1/redrives", body=orjson.dumps(body), content_type="application/json"
    )
    what = "every dead letter" if every else origin or f"{len(ids)} dead letter(s)"
    follow(
        client, "/api/v1/redrives", job, f"re-drive {job['id']} of {what}", "deadletters redrive"
    )


# An expression may start with `-` (`-1 + 2`, `-temperature < 0`): what click
# does not know as an option is the expression, so no `--` is needed.
