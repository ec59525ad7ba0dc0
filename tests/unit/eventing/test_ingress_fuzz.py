"""Fuzz: arbitrary requests to the Broker ingress only ever get 2xx or 4xx with a reason.

The ingress is served as `headwater up` serves it (the admin API's app, the
connection guard, aiohttp's server log through PeerLogger) in a thread of its
own, and hit over a real socket with raw requests: any header names and
values (bytes that are not UTF-8 included), any content type, bodies in
binary, structured and batched mode, near-valid and not, framed with a
Content-Length or chunked. No answer may be a 5xx, every 4xx says why, no
ERROR is logged, and the server answers a valid event afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.api import add_ingress, create_app
from headwater.cloudevents import to_http, to_http_batch
from headwater.eventing.ingress import is_ingress_request
from headwater.http_guard import GuardedSite, HttpLimits, PeerLogger, guard_app
from headwater.runtime import Runtime
from tests.unit.cloudevents.ce_strategies import events
from tests.unit.cloudevents.test_ce_fuzz import (
    BODIES,
    CONTENT_TYPES,
    HEADER_NAMES,
    HEADER_TEXT,
    near_valid_documents,
    near_valid_headers,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BROKER = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n"
WAIT = 30.0


@dataclass
class Server:
    port: int = 0
    errors: list[logging.LogRecord] = field(default_factory=list)


class _Errors(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    served = Server()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def serve() -> None:
        nonlocal stop, loop
        from aiohttp import web

        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        runtime = Runtime()
        try:
            await runtime.apply_text(BROKER, "fuzz.yaml")
            app = create_app(runtime)
            add_ingress(app, runtime)
            guard = guard_app(app, HttpLimits(), data_plane=is_ingress_request)
            runner = web.AppRunner(app, access_log=None, logger=PeerLogger())
            await runner.setup()
            await GuardedSite(runner, "127.0.0.1", 0, guard).start()
            served.port = runner.addresses[0][1]
            ready.set()
            await stop.wait()
            await runner.cleanup()
        finally:
            await runtime.close()

    handler = _Errors(served.errors)
    logging.getLogger().addHandler(handler)
    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(WAIT), "the server did not start"
    try:
        yield served
    finally:
        assert loop is not None and stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT)
        logging.getLogger().removeHandler(handler)


def _clean(text: str) -> bytes:
    """Header text as bytes on the wire (not UTF-8 when it held lone surrogates)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")


def post(
    port: int, path: str, headers: list[tuple[bytes, bytes]], body: bytes, chunked: bool
) -> tuple[int, bytes]:
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: fuzz", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body_out = rest.partition(b"\r\n\r\n")
    return int(status_line.split(b" ")[1]), body_out


TOKEN = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    """A path, headers and a body in one of the ingress's modes, or none of them."""
    mode = draw(st.sampled_from(["binary", "structured", "batch", "anything"]))
    headers: dict[str, str]
    if mode == "binary":
        headers = draw(near_valid_headers())
        body = draw(BODIES)
    elif mode == "structured":
        headers = {"Content-Type": "application/cloudevents+json"}
        body = draw(near_valid_documents() | BODIES)
    elif mode == "batch":
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        documents = draw(st.lists(near_valid_documents(), max_size=3))
        body = draw(st.just(b"[" + b",".join(documents) + b"]") | BODIES)
    else:
        headers = draw(st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=8))
        headers["Content-Type"] = draw(CONTENT_TYPES)
        body = draw(BODIES)
    raw = [
        (_clean(name) or b"x", _clean(value))
        for name, value in headers.items()
        if name.lower() not in ("content-length", "transfer-encoding", "host", "connection")
    ]
    # Names that are not HTTP tokens make the parser answer 400 itself.
    raw += draw(st.lists(st.tuples(TOKEN.map(str.encode), st.binary(max_size=12)), max_size=2))
    path = draw(st.sampled_from(["/default/default"] * 8 + ["/default/nobroker", "/x/y"]))
    return path, [(n, v.replace(b"\r", b"").replace(b"\n", b"")) for n, v in raw], body


@FUZZ
@given(requests(), st.booleans())
def test_the_ingress_answers_2xx_or_4xx_with_a_reason(
    server: Server, request: tuple[str, list[tuple[bytes, bytes]], bytes], chunked: bool
) -> None:
    path, headers, body = request
    status, reason = post(server.port, path, headers, body, chunked)
    assert status // 100 in (2, 4), (status, reason)
    if status >= 400:
        assert reason.strip(), f"a {status} says why"
    assert not server.errors, [record.getMessage() for record in server.errors]


@FUZZ
@given(events(), st.sampled_from(["binary", "structured", "batch"]), st.booleans())
def test_valid_events_are_accepted_in_every_mode(
    server: Server, event: object, mode: str, chunked: bool
) -> None:
    from headwater.cloudevents import CloudEvent, InvalidEvent

    assert isinstance(event, CloudEvent)
    try:
        head, body = to_http_batch([event]) if mode == "batch" else to_http(event, mode)  # type: ignore[arg-type]
    except InvalidEvent:
        return  # an event-format content type has no binary mode
    headers = [(_clean(name), _clean(value)) for name, value in head.items()]
    status, reason = post(server.port, "/default/default", headers, body, chunked)
    assert status == 202, reason
    assert not server.errors
