"""Where an InfluxDBSink writes, and its defaults: a value checked once, no I/O.

How this works: :class:`InfluxTarget` holds the URL, the 1.x database or the
2.x org and bucket, and credentials (kept out of its repr); it refuses an
incomplete target when built, and gives the write URL and the authorization
header. A pure module (no aiohttp): the resource schema checks an
InfluxDBSink's spec through it at apply time, and the sink
(:mod:`headwater.sinks.influxdb`) writes to it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MAX_CONCURRENT_WRITES",
    "DEFAULT_WRITE_TIMEOUT",
    "InfluxTarget",
]

DEFAULT_BATCH_SIZE: Final = 5000
"""Points per write: InfluxDB's documented optimum ("batches of 5,000 points")."""

DEFAULT_FLUSH_INTERVAL: Final = 0.01
"""Seconds a batch stays open after its first point while other writes are in
flight (with none in flight it goes at once). Deliveries are acknowledged only
once written, so a Trigger's in-flight limit (100 by default) caps how many
points can gather anyway: waiting longer would only add latency. Raise the
Trigger's ``headwater.dev/max-inflight`` for bigger batches."""

DEFAULT_MAX_BUFFERED: Final = 50_000
"""Points waiting or being written (about 10 batches, a few MiB); beyond it
``deliver()`` waits for a write to finish."""

DEFAULT_MAX_CONCURRENT_WRITES: Final = 4
"""Writes in flight at once: enough to overlap encoding and InfluxDB's fsync,
few enough not to make InfluxDB compete with itself (it serialises WAL writes)."""

DEFAULT_WRITE_TIMEOUT: Final = 10.0
"""Seconds one write may take before it counts as failed (retryable)."""


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """Where points go: InfluxDB 1.x (``database``) or 2.x (``bucket``, ``org``)."""

    url: str
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    org: str | None = None
    bucket: str | None = None
    token: str | None = field(default=None, repr=False)
    create_database: bool = True
    """1.x: create the database when it is missing (InfluxDB's own CREATE DATABASE)."""

    def __post_init__(self) -> None:
        if (self.database is None) == (self.bucket is None):
            raise ValueError("an InfluxDB target needs `database` (1.x) or `bucket` (2.x)")
        if self.bucket is not None and not self.org:
            raise ValueError("an InfluxDB 2.x target needs `org` with `bucket`")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"InfluxDB url {self.redacted_url!r} must be http(s)://host[:port]")

    def __repr__(self) -> str:
        where = self.database if self.version == 1 else f"{self.org}/{self.bucket}"
        return f"InfluxTarget({self.redacted_url!r}, {where!r})"

    @property
    def version(self) -> int:
        return 1 if self.database is not None else 2

    @property
    def redacted_url(self) -> str:
        """The base URL without any user:password part, for logs and status."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    def write_url(self, precision: str) -> str:
        base = self.url.rstrip("/")
        if self.version == 1:
            # 1.x precision values: n, u, ms, s (/write HTTP API reference).
            query = {"db": self.database, "precision": _V1_PRECISION[precision]}
            if self.retention_policy:
                query["rp"] = self.retention_policy
            return f"{base}/write?{urlencode(query)}"
        query = {"org": self.org, "bucket": self.bucket, "precision": precision}
        return f"{base}/api/v2/write?{urlencode(query)}"

    @property
    def where(self) -> str:
        """The database (1.x) or org/bucket (2.x), for messages."""
        return (
            f"database {self.database!r}"
            if self.version == 1
            else (f"bucket {self.bucket!r} of org {self.org!r}")
        )

    def auth_headers(self) -> dict[str, str]:
        if self.version == 2:
            return {"Authorization": f"Token {self.token}"} if self.token else {}
        if self.username is not None:
            # RFC 7617: base64 of "user:password".
            credentials = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        return {}


_V1_PRECISION: Final = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
