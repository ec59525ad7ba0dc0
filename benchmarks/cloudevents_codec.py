"""CloudEvents codec: the official Python SDK vs Headwater, HTTP binary and structured mode.

What is measured: the same 6-attribute JSON telemetry event (specversion, id,
source, type, time, datacontenttype, plus a small JSON object as data), N
times, through a full HTTP round trip on each side:

* SDK (``cloudevents.core``, the SDK's current API): construct
  ``cloudevents.core.v1.event.CloudEvent`` -> ``http.to_binary_event`` (or
  ``http.to_structured_event``) -> ``http.from_http_event``.
* Headwater: construct ``CloudEvent`` -> ``to_http(event, mode)`` -> ``from_http``.

Each side validates what it builds and decodes as it always does (the SDK
checks less: no URI, media type or control-character rules; see
tests/unit/cloudevents/test_ce_interop.py). Every event gets its own ``id``
and ``time`` so that no side profits from seeing one event N times. The
SDK takes ``time`` only as a ``datetime`` (and renders/parses it on every hop),
Headwater takes the RFC 3339 string a device sends; each is fed its native
form of the same instant. In binary mode the SDK parses the JSON body into a
dict while Headwater keeps the bytes until the application parses them: pass
``--parse-data`` to have Headwater's side parse them too (structured mode
already yields the parsed value on both sides).

Run: ``.venv/bin/python benchmarks/cloudevents_codec.py [-n N] [--rounds R]``.
Each side runs R rounds (the SDK N events a round, Headwater as many as take
the same time), the two sides taking turns so that a burst of load on a
shared machine hits both alike; the garbage collector runs as it would in
production. The best round per side counts (the one least disturbed by other
work), then the ratio Headwater/SDK.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from headwater.cloudevents import CloudEvent, from_http, to_http

DEFAULT_N = 10_000
"""SDK events per round: R=5 rounds take each side about 2 s on the reference machine."""
DEFAULT_ROUNDS = 5

SOURCE = "mqtt://gateway-1/sensors/greenhouse/temperature"
TYPE = "dev.headwater.mqtt.message"
DATA = {"device": "greenhouse-7", "metric": "temperature", "value": 21.5, "unit": "C"}
START = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def inputs(n: int) -> tuple[list[str], list[str], list[datetime]]:
    """Per-event ids, RFC 3339 times, and the same instants as datetimes."""
    ids = [f"gw1-{i}" for i in range(n)]
    instants = [START + timedelta(milliseconds=i) for i in range(n)]
    texts = [t.isoformat().replace("+00:00", "Z") for t in instants]  # as the SDK writes them
    return ids, texts, instants


def sdk_round_trips(n: int, mode: str) -> Callable[[], None]:
    ids, _, instants = inputs(n)
    encode = sdk_http.to_binary_event if mode == "binary" else sdk_http.to_structured_event
    decode = sdk_http.from_http_event

    def run() -> None:
        for i in range(n):
            event = SdkEvent(
                {
                    "specversion": "1.0",
                    "id": ids[i],
                    "source": SOURCE,
                    "type": TYPE,
                    "time": instants[i],
                    "datacontenttype": "application/json",
                },
                dict(DATA),
            )
            decode(encode(event))

    return run


def headwater_round_trips(n: int, mode: str, parse_data: bool) -> Callable[[], None]:
    ids, times, _ = inputs(n)
    encode = to_http
    decode = from_http

    def run() -> None:
        for i in range(n):
            event = CloudEvent(
                {
                    "specversion": "1.0",
                    "id": ids[i],
                    "source": SOURCE,
                    "type": TYPE,
                    "time": times[i],
                    "datacontenttype": "application/json",
                },
                dict(DATA),
            )
            headers, body = encode(event, mode)  # type: ignore[arg-type]
            decoded = decode(headers, body)
            if parse_data and type(decoded.data) is bytes:  # type: ignore[union-attr]
                orjson.loads(decoded.data)  # type: ignore[union-attr]

    return run


def check_equivalent() -> None:
    """Both sides must agree on the event before their speed means anything."""
    ids, times, instants = inputs(1)
    attributes = {"specversion": "1.0", "id": ids[0], "source": SOURCE, "type": TYPE}
    for mode in ("binary", "structured"):
        ours = CloudEvent(
            {**attributes, "time": times[0], "datacontenttype": "application/json"}, DATA
        )
        headers, body = to_http(ours, mode)  # type: ignore[arg-type]
        theirs = sdk_http.from_http_event(sdk_http.HTTPMessage(headers, body))
        assert theirs.get_data() == DATA, (mode, theirs.get_data())
        assert theirs.get_time() == instants[0], (mode, theirs.get_time())
        sdk_event = SdkEvent(
            {**attributes, "time": instants[0], "datacontenttype": "application/json"}, DATA
        )
        message = (
            sdk_http.to_binary_event(sdk_event)
            if mode == "binary"
            else sdk_http.to_structured_event(sdk_event)
        )
        assert from_http(message.headers, message.body) == ours, mode


def round_seconds(run: Callable[[], None]) -> float:
    gc.collect()  # each round starts from the same heap
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_rates(
    sides: list[Callable[[int], Callable[[], None]]], n: int, rounds: int
) -> list[float]:
    """Events/s of each side's best round, the sides taking turns round by round.

    The SDK side runs ``n`` events a round; every other side as many as fill
    the same time (measured in a first, uncounted round), so that no side's
    rounds are shorter and thereby likelier to fall between bursts of load.
    """
    sizes = [n]
    reference = round_seconds(sides[0](n))
    for make in sides[1:]:
        probe = round_seconds(make(n))
        sizes.append(max(n, round(n * reference / probe)))
    runs = [make(size) for make, size in zip(sides, sizes, strict=True)]
    best = [float("inf")] * len(sides)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], round_seconds(run))
    return [size / seconds for size, seconds in zip(sizes, best, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=DEFAULT_N, help="events per round")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per side; the best counts"
    )
    parser.add_argument(
        "--parse-data", action="store_true", help="Headwater also parses the JSON body"
    )
    args = parser.parse_args()
    check_equivalent()
    print(
        "CloudEvents HTTP round trip (construct + encode + decode), "
        f"best of {args.rounds} rounds of N={args.n}"
    )
    for mode in ("binary", "structured"):
        sdk, ours = best_rates(
            [
                lambda n: sdk_round_trips(n, mode),  # noqa: B023 (used at once)
                lambda n: headwater_round_trips(n, mode, args.parse_data),  # noqa: B023
            ],
            args.n,
            args.rounds,
        )
        print(
            f"  {mode:<10}  sdk {sdk:>10,.0f} events/s   headwater {ours:>10,.0f} events/s"
            f"   ratio {ours / sdk:.2f}x"
        )


if __name__ == "__main__":
    main()
