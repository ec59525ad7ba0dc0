"""``headwater get nodes`` and the per-node part of ``describe``: the mesh's nodes.

How this works: ``get nodes`` reads ``GET /api/v1/nodes`` (the live nodes
of the mesh from their heartbeats; a single node lists itself) and prints
them as a table, JSON or YAML. In a mesh, ``describe`` shows each node's
counters under the summed ones (:func:`echo_per_node`), and names the nodes
that did not answer in time.
"""

from __future__ import annotations

from typing import Any

import click

from headwater.cli._common import call, emitted, fail, print_table

__all__ = ["echo_per_node", "show_nodes"]


def show_nodes(client: Any, name: str | None, output: str) -> None:
    """``get nodes``: the mesh's live nodes (or this node alone, without a mesh)."""
    answer = call(client, "GET", "/api/v1/nodes")
    items = [n for n in answer["items"] if name is None or n["name"] == name]
    if name is not None and not items:
        fail(f"no live node {name!r} in the mesh")
    if emitted(items, output):
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
            duration(node["uptimeSeconds"]),
            str(node.get("devices", 0)),
            f"{cpu * 100:.0f}%" if isinstance(cpu, int | float) else "-",
            f"{rss / 2**20:.0f} MiB" if isinstance(rss, int) and rss else "-",
        )
    print_table(table)
    if not answer.get("mesh"):
        click.echo("(a single node: start nodes with `headwater up --nats URLS` to form a mesh)")


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``5h02m``, ``2d04h``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def echo_per_node(per_node: dict[str, dict[str, Any]], unanswered: list[str] | None) -> None:
    """In a mesh: each node's counters (the status ``describe`` shows is their sum)."""
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
