"""How a node reaches NATS: servers, credentials, TLS, and a clear word when it cannot.

How this works: :class:`NatsOptions` is what ``headwater up --nats URLS
--nats-creds FILE --nats-tls-ca/-cert/-key`` says, turned into nats-py's
``connect`` options (a credentials file, an SSL context). :func:`connect`
opens a connection for one purpose (the event log, the state store, MQTT
routing: each has its own, named ``headwater <node> <purpose>`` in the
server's monitoring), and turns nats-py's failures into one line that says
what to change: no server listening, a refused user or password, a TLS
problem. :func:`check_jetstream` asks the server for the account's
JetStream information, so that a server without JetStream is reported at
start instead of as timeouts later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors

from headwater import natsclient

__all__ = [
    "CONNECT_TIMEOUT",
    "ClusterError",
    "NatsOptions",
    "check_jetstream",
    "connect",
    "parse_servers",
]

CONNECT_TIMEOUT: Final = 5.0
"""Seconds a first connection attempt to each server may take."""

RECONNECT_WAIT: Final = 0.5
"""Seconds between reconnect attempts once connected (forever)."""

PING_INTERVAL: Final = 5.0
MAX_OUTSTANDING_PINGS: Final = 2
"""A connection that answers no ping for ``PING_INTERVAL * MAX_OUTSTANDING_PINGS``
seconds is treated as lost (nats-py's default is 4 minutes): a node cut off from
NATS by a silent network notices within 10 s and reports itself unavailable."""


class ClusterError(Exception):
    """A node cannot join the mesh; the message says why and what to change."""


def parse_servers(text: str) -> tuple[str, ...]:
    """``--nats`` URLs, comma-separated; ``nats://`` added where no scheme is given."""
    servers = tuple(
        url if "://" in url else f"nats://{url}"
        for url in (part.strip() for part in text.split(","))
        if url
    )
    if not servers:
        raise ClusterError("--nats needs at least one server URL (nats://host:4222)")
    return servers


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Where NATS is and how to authenticate (credentials file, TLS)."""

    servers: tuple[str, ...]
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """More nats-py ``connect`` options (tests tune timeouts with it)."""

    def __post_init__(self) -> None:
        for what, path in (
            ("--nats-creds", self.creds),
            ("--nats-tls-ca", self.tls_ca),
            ("--nats-tls-cert", self.tls_cert),
            ("--nats-tls-key", self.tls_key),
        ):
            if path is not None and not path.is_file():
                raise ClusterError(f"{what} {path}: no such file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ClusterError("--nats-tls-cert and --nats-tls-key go together")

    @property
    def uses_tls(self) -> bool:
        return (
            self.tls_ca is not None
            or self.tls_cert is not None
            or any(s.startswith("tls://") for s in self.servers)
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca) if self.tls_ca is not None else None
            )
            if self.tls_cert is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ClusterError(f"cannot read the NATS TLS files: {exc}") from exc
        return context

    def connect_options(self) -> dict[str, Any]:
        """nats-py ``connect`` keyword arguments for the credentials and TLS."""
        options: dict[str, Any] = {
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        }
        if self.creds is not None:
            options["user_credentials"] = str(self.creds)
        context = self.tls_context()
        if context is not None:
            options["tls"] = context
        options.update(self.extra)
        return options


def explain(errors: Sequence[BaseException], servers: Sequence[str]) -> str:
    """One line for why nats-py could not connect, from what its error callback saw."""
    where = ", ".join(servers)
    texts = [str(e) for e in errors]
    if any("authorization violation" in t.lower() for t in texts):
        return (
            f"NATS at {where} refused our credentials (Authorization Violation): check "
            "--nats-creds, or the user and password in the URL"
        )
    if any("authentication" in t.lower() or "expired" in t.lower() for t in texts):
        return f"NATS at {where} refused our credentials: {texts[-1]}"
    for error in errors:
        if isinstance(error, ssl.SSLError | ssl.CertificateError):
            return f"TLS with NATS at {where} failed: {error} (see --nats-tls-ca/-cert/-key)"
    if any("tls" in t.lower() for t in texts):
        return f"TLS with NATS at {where} failed: {texts[-1]} (see --nats-tls-ca/-cert/-key)"
    if any(isinstance(e, ConnectionRefusedError) for e in errors):
        return f"no NATS server answers at {where} (connection refused)"
    if errors:
        return f"cannot connect to NATS at {where}: {texts[-1]}"
    return f"cannot connect to NATS at {where}"


async def connect(options: NatsOptions, name: str, **extra: Any) -> Any:
    """A connected nats-py client that reconnects forever once connected.

    Raises :class:`ClusterError` with the reason when no server takes the
    connection (each server is tried once, so a wrong address fails at once).
    """
    seen: list[BaseException] = []
    user_error_cb = extra.pop("error_cb", None)
    # nats-py reports a failed TLS handshake to the error callback and then waits
    # forever: a TLS error ends the first connection attempt here instead.
    tls_failed = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        if len(seen) < 32:
            seen.append(exc)
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            tls_failed.set()
        if user_error_cb is not None:
            await user_error_cb(exc)

    kwargs = {**options.connect_options(), **extra}
    connecting = asyncio.ensure_future(
        natsclient.connect(
            list(options.servers),
            name=name,
            allow_reconnect=True,
            # nats-py applies this to the first connect too: -1 would retry an
            # unreachable server forever instead of reporting it.
            max_reconnect_attempts=1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=error_cb,
            **kwargs,
        )
    )
    failed = asyncio.ensure_future(tls_failed.wait())
    try:
        await asyncio.wait(
            (connecting, failed),
            timeout=CONNECT_TIMEOUT * (len(options.servers) + 1),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        failed.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        raise ClusterError(explain(seen, options.servers))
    try:
        nc = connecting.result()
    except (TimeoutError, nats.errors.Error, OSError, ssl.SSLError) as exc:
        raise ClusterError(explain([*seen, exc], options.servers)) from exc
    except ValueError as exc:
        raise ClusterError(f"--nats {','.join(options.servers)}: {exc}") from exc
    nc.options["max_reconnect_attempts"] = -1  # connected once: reconnect forever
    return nc


NO_JETSTREAM_PATIENCE: Final = 5.0
"""Seconds a server that answers "no JetStream" is asked again (it may still be
starting it) before that is the answer."""

FORMING_PATIENCE: Final = 60.0
"""Seconds a JetStream that does not answer, or answers "temporarily unavailable"
(a cluster electing its meta leader), is waited for."""


async def check_jetstream(nc: Any, options: NatsOptions) -> Any:
    """The account's JetStream information; ClusterError when JetStream is not there
    (after asking again for a while: a cluster that just started elects its leader)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    where = ",".join(options.servers)
    while True:
        try:
            return await nc.jetstream(timeout=CONNECT_TIMEOUT).account_info()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            if loop.time() - started >= NO_JETSTREAM_PATIENCE:
                raise ClusterError(
                    f"the NATS server at {where} does not offer JetStream to this account: "
                    "start nats-server with JetStream (`-js`, or a `jetstream {}` block in its "
                    "configuration; in a cluster, on every server) and enable it for the account"
                ) from exc
        except nats.js.errors.APIError as exc:
            if loop.time() - started >= FORMING_PATIENCE:
                raise ClusterError(f"JetStream at {where} refused: {exc}") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            if loop.time() - started >= FORMING_PATIENCE:
                raise ClusterError(
                    f"JetStream at {where} did not answer: {exc or type(exc).__name__}"
                ) from exc
        await asyncio.sleep(0.25)
