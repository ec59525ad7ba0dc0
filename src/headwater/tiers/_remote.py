"""The remote receiver of an uplink: what is sent, how it is encoded, and what came back.

How this works: a :class:`Remote` turns events into one HTTP request in the
content mode it was told (``batch``, ``binary`` or ``structured``) or found
out (``auto``: an ``OPTIONS`` probe, see :func:`~headwater.tiers._policy.capabilities`),
gzips the body when the receiver takes that, POSTs it with the lean
:class:`~headwater.eventing._http1.Http1Client` and reports the answer as an
:class:`Answer`. It never retries: that is the uplink's business.

Two fallbacks keep a wrong guess (or a wrong explicit setting) from
dead-lettering good events: when a receiver refuses a batch of one event, or
a compressed body, the uplink asks :meth:`Remote.fallback` for the next
plainer way to send the same event (gzip -> identity, batch -> binary) and
tries that before calling the event refused. A receiver that took the plainer
form keeps getting it for the rest of the run (logged); one that refused it
too gets the richer form back, and the event is refused.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from headwater.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    to_http,
    to_json,
)
from headwater.eventing._http1 import Http1Client, HttpError
from headwater.eventing.delivery import parse_retry_after
from headwater.tiers._policy import Capabilities, Verdict, capabilities, verdict

__all__ = ["Answer", "Compression", "Format", "Mode", "Remote"]

log = logging.getLogger(__name__)

Format = Literal["auto", "batch", "binary", "structured"]
Mode = Literal["batch", "binary", "structured"]
Compression = Literal["auto", "gzip", "none"]

GZIP_MIN_BYTES: Final = 1024
"""Smaller bodies go uncompressed: gzip's 18-byte frame and a cold dictionary
save nothing on a single small event."""

GZIP_LEVEL: Final = 6
"""zlib's default level. On a batch of a thousand readings (378 KB of JSON)
level 1 made a body 29% larger than level 6 (38 against 30 bytes a reading)
for a third of the CPU (1.8 against 5.0 ms); on a link slow enough to need an
uplink the bytes matter more, and large bodies are compressed on a thread
(zlib releases the GIL), beside the event loop. Level 9 saved 8% more for
three times the CPU of level 6."""

GZIP_INLINE_BYTES: Final = 64 * 1024
"""Bodies up to this size are compressed on the event loop (well under a
millisecond); larger ones on a worker thread, so that a 1 MiB catch-up batch
never stalls the MQTT ingest sharing the loop."""

MAX_ANSWER_BYTES: Final = 64 * 1024
"""The most of a receiver's answer body read: an uplink only needs the status
and, for a refusal, the start of the reason (kept in the dead letter)."""


class _Missing(Exception):
    """The event cannot be encoded in this mode (e.g. JSON data that is not JSON)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request came to."""

    status: int | None
    """The HTTP status; None when no answer came (refused, reset, DNS, timeout)."""
    reason: str = ""
    body: bytes = b""
    retry_after: float | None = None
    wire_bytes: int = 0
    """Request body bytes as sent (after compression)."""
    raw_bytes: int = 0
    """Request body bytes before compression."""
    local: bool = False
    """Refused here, before sending (the event cannot be encoded in this mode)."""
    form: tuple[str, bool] = ("", False)
    """The content mode and the gzip setting the request was made with."""
    started: float = 0.0
    """When the request went out (the event loop's clock)."""
    abandoned: bool = False
    """Given up on by the sender, not failed: sent again at once."""

    @property
    def verdict(self) -> Verdict:
        return verdict(self.status)

    def __str__(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{what}: {self.reason}" if self.reason else what


class Remote:
    """One receiver URL, its content mode, compression, headers and per-request timeout."""

    def __init__(
        self,
        url: str,
        client: Http1Client,
        *,
        format: Format = "auto",
        compression: Compression = "auto",
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.format: Format = format
        self.compression: Compression = compression
        self._client = client
        self._headers = dict(headers or {})
        self.timeout = timeout
        # Until probed, `auto` sends nothing; explicit settings are known at once.
        self.mode: Mode = "binary" if format == "auto" else format
        self.gzip = compression == "gzip"
        self.known = format != "auto" and compression != "auto"

    @property
    def batches(self) -> bool:
        return self.mode == "batch"

    @property
    def form(self) -> tuple[str, bool]:
        """The content mode and gzip setting requests are made with now."""
        return (self.mode, self.gzip)

    # -- finding out -----------------------------------------------------------------

    async def probe(self) -> Answer:
        """Ask the receiver what it accepts (``OPTIONS``) and settle ``auto`` settings.

        Returns the answer; a connectivity failure (status None) settles
        nothing, and the caller tries again later.
        """
        answer, found = await self._options()
        if answer.status is None:
            return answer
        if self.format == "auto":
            self.mode = "batch" if found.batch else "binary"
        if self.compression == "auto":
            self.gzip = found.gzip
        self.known = True
        log.info(
            "%s accepts %s mode%s",
            self.url,
            self.mode,
            ", gzip" if self.gzip else "",
        )
        return answer

    async def _options(self) -> tuple[Answer, Capabilities]:
        try:
            async with asyncio.timeout(self.timeout or None):
                response = await self._client.request(
                    "OPTIONS", self.url, self._headers, b"", MAX_ANSWER_BYTES
                )
        except (HttpError, TimeoutError) as exc:
            return Answer(None, _reason(exc)), Capabilities()
        status, reason, headers, body = response
        return Answer(status, reason, body[:1024]), capabilities(status, headers)

    def fallback(self, *, compressed: bool) -> str | None:
        """Switch to the next plainer way of sending, after a refusal of a single event.

        Returns what changed (for the log), or None when nothing plainer is left.
        """
        if compressed and self.gzip:
            self.gzip = False
            return "sending uncompressed"
        if self.mode == "batch":
            self.mode = "binary"
            return "sending events one by one in binary mode"
        return None

    # -- sending -----------------------------------------------------------------------

    def encode(self, event: CloudEvent) -> bytes | None:
        """The JSON form of an event, for batches and structured mode (None when it
        has none; a batch holding such an event is refused here, and split)."""
        try:
            return to_json(event)
        except InvalidEvent:
            return None

    async def send(self, events: Sequence[CloudEvent], encoded: Sequence[bytes | None]) -> Answer:
        """One request with ``events`` (a batch, or exactly one event in the other modes).

        ``encoded`` holds each event's JSON form from :meth:`encode`, if it has one.
        """
        form = self.form
        started = asyncio.get_running_loop().time()
        if len(events) > 1 and self.mode != "batch":
            # Another sender of the uplink found meanwhile that the receiver takes
            # no batches: nothing is sent, and the caller sends them one by one.
            return Answer(None, "the receiver takes no batches", form=form, abandoned=True)
        try:
            headers, body = self._body(events, encoded)
        except (_Missing, InvalidEvent) as exc:
            # The event cannot be written in this mode at all: a refusal of its content.
            return Answer(400, f"cannot encode the event: {exc}", local=True, form=form)
        raw = len(body)
        if self.gzip and raw >= GZIP_MIN_BYTES:
            if raw > GZIP_INLINE_BYTES:
                body = await asyncio.to_thread(zlib.compress, body, GZIP_LEVEL, 31)
            else:
                body = zlib.compress(body, GZIP_LEVEL, 31)  # wbits 31: the gzip format
            headers["content-encoding"] = "gzip"
        headers.update(self._headers)
        try:
            async with asyncio.timeout(self.timeout or None):
                status, reason, answer_headers, answer = await self._client.post(
                    self.url, headers, body, MAX_ANSWER_BYTES
                )
        except (HttpError, TimeoutError) as exc:
            return Answer(
                None, _reason(exc), wire_bytes=len(body), raw_bytes=raw, form=form, started=started
            )
        retry_after = None
        for name, value in answer_headers:
            if name.lower() == "retry-after":
                retry_after = parse_retry_after(value)
        return Answer(
            status,
            reason or _first_line(answer),
            answer[:1024],
            retry_after,
            wire_bytes=len(body),
            raw_bytes=raw,
            form=form,
            started=started,
        )

    def _body(
        self, events: Sequence[CloudEvent], encoded: Sequence[bytes | None]
    ) -> tuple[dict[str, str], bytes]:
        if self.mode == "batch":
            parts = list(encoded)
            if None in parts:
                raise _Missing("an event of the batch has no JSON form")
            return {"content-type": BATCH_CONTENT_TYPE}, b"[" + b",".join(parts) + b"]"  # type: ignore[arg-type]
        if len(events) != 1:
            raise ValueError(f"{self.mode} mode sends one event per request, not {len(events)}")
        if self.mode == "structured":
            data = encoded[0]
            if data is None:
                raise _Missing("the event has no JSON form")
            return {"content-type": CONTENT_TYPE}, data
        return to_http(events[0], "binary")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _first_line(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip().split("\n", 1)[0]
