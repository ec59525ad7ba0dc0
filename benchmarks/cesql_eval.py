"""CESQL evaluation speed: compiled Headwater CESQL vs a hand-written Python lambda.

The lambda is the floor in Python: the same check written by hand, with the
same casts. Both run over the same events in the same process, alternating
rounds, best round kept. Prints evaluations/s for each filter and the ratio.
Targets: the realistic mix within 3x of the lambda; a single
equality filter at >= 1M evaluations/s. ``matches`` is what a Trigger calls;
``evaluate`` (value and errors, a Result per call) is shown alongside.

Note: the issue's example writes `CAST(temperature AS INTEGER)`, which is not
CESQL v1 syntax (spec.md 2.4 has functions, not CAST); the v1 form is
`INT(temperature)`.

    .venv/bin/python benchmarks/cesql_eval.py [--events 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from headwater import cesql
from headwater.cloudevents import CloudEvent


def make_events(count: int) -> list[CloudEvent]:
    rng = random.Random(7)
    types = ["dev.headwater.telemetry", "dev.headwater.command", "dev.headwater.status"]
    zones = ["greenhouse", "barn", "field"]
    events = []
    for i in range(1000):
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(i),
            "source": f"/sensors/{i % 50}",
            "type": rng.choice(types),
            "subject": f"{rng.choice(zones)}/s{i % 50}",
            "time": "2026-11-28T12:00:00Z",
        }
        if rng.random() < 0.8:
            attributes["temperature"] = str(rng.randint(10, 40))
        events.append(CloudEvent(attributes))
    return [events[i % len(events)] for i in range(count)]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# The lambdas use only .get, `in` and [], so they take a dict or a CloudEvent.
FILTERS: list[tuple[str, str, Callable[[Any], bool]]] = [
    (
        "single equality",
        "type = 'dev.headwater.telemetry'",
        lambda a: a.get("type") == "dev.headwater.telemetry",
    ),
    (
        "realistic mix",
        "type = 'dev.headwater.telemetry' AND subject LIKE 'greenhouse/%' "
        "AND EXISTS temperature AND INT(temperature) > 30",
        lambda a: (
            a.get("type") == "dev.headwater.telemetry"
            and a.get("subject", "").startswith("greenhouse/")
            and "temperature" in a
            and _int(a["temperature"]) > 30
        ),
    ),
    (
        "IN list",
        "source IN ('/sensors/1', '/sensors/2', '/sensors/3', '/sensors/4')",
        lambda a: a.get("source") in {"/sensors/1", "/sensors/2", "/sensors/3", "/sensors/4"},
    ),
    (
        "string function",
        "LOWER(LEFT(subject, 4)) = 'barn'",
        lambda a: a.get("subject", "")[:4].lower() == "barn",
    ),
]


def rate(check: Callable[[Any], object], events: list[Any]) -> float:
    started = time.perf_counter()
    for event in events:
        check(event)
    return len(events) / (time.perf_counter() - started)


def compare(title: str, events: list[Any], rounds: int) -> None:
    print(f"\n{title}")
    print(f"{'filter':<18} {'lambda/s':>12} {'matches/s':>12} {'ratio':>7} {'evaluate/s':>12}")
    for name, text, floor_check in FILTERS:
        expression = cesql.compile(text)
        matches = expression.matches
        # Same answers first: the benchmark compares equal work.
        assert all(matches(e) == bool(floor_check(e)) for e in events[:1000]), name
        floor = ours = complete = 0.0
        for _ in range(rounds):
            floor = max(floor, rate(floor_check, events))
            ours = max(ours, rate(matches, events))
            # evaluate(): complete evaluation, a Result per event (not a Trigger's path).
            complete = max(complete, rate(expression.evaluate, events))
        print(f"{name:<18} {floor:>12,.0f} {ours:>12,.0f} {ours / floor:>6.2f}x {complete:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = make_events(args.events)
    print(f"{args.events:,} evaluations per round and filter, best of {args.rounds} rounds")
    # Plain dicts: the strictest comparison, as the lambda pays no API cost.
    mappings = [event._attributes for event in events]
    compare("attribute dicts", mappings, args.rounds)
    # CloudEvents, as a Trigger passes them; the lambda reads them through
    # the public mapping API (event.get, `in`).
    compare("CloudEvent objects", events, args.rounds)
    print("\ntargets: realistic mix >= 0.33x of the lambda; single equality >= 1,000,000/s")


if __name__ == "__main__":
    main()
