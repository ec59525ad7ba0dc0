"""What the ``headwater`` commands share: failing in one line, talking to the admin API.

How this works: plain helpers and click options, imported by :mod:`headwater.cli`
and :mod:`headwater.cli_devices` (a module of its own does not import the
``cli`` module, which may be running as ``__main__``).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from headwater import DEFAULT_SERVER

__all__ = ["_call", "_client", "_echo_yaml", "fail", "server_option", "token_option"]


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
token_option = click.option(
    "--token", envvar="HEADWATER_TOKEN", default=None, help="Bearer token for the admin API."
)


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
