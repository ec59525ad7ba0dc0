"""The ``headwater`` command line.

Exit codes: 0 ok, 1 failure, 2 usage. Errors go to stderr as one readable line.
"""

from __future__ import annotations

import click

from headwater import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headwater")
def main() -> None:
    """Headwater: MQTT devices in, CloudEvents routed Knative-style, a durable log."""


@main.command()
def version() -> None:
    """Print the Headwater version."""
    click.echo(__version__)
