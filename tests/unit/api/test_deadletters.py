"""Dead letters: every given-up event is recorded, listed with its knativeerror* details,
and re-driven to its origin's current subscriber."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import Deliverer, DeliveryError, DeliverySpec
from headwater.log import LogUnavailable, MemoryLog
from headwater.runtime import Runtime
from headwater.runtime.deadletters import DEAD_LETTER_STREAM
from tests.helpers import wait_until
from tests.unit.api.mesh import Mesh

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""


def trigger(url: str, *, dead_letter: str | None = None, name: str = "flaky") -> str:
    dls = f"\n    deadLetterSink: {{uri: '{dead_letter}'}}" if dead_letter else ""
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {name}}}
spec:
  broker: default
  subscriber: {{uri: '{url}'}}
  delivery:
    retry: 1
    backoffDelay: PT0.01S{dls}
"""


async def _letters(mesh: Mesh, count: int) -> list[dict]:  # type: ignore[type-arg]
    items: list[dict] = []  # type: ignore[type-arg]

    async def enough() -> bool:
        nonlocal items
        status, body = await mesh.json("GET", "/api/v1/deadletters")
        assert status == 200
        items = body["items"]
        return len(items) >= count

    await wait_until(enough)
    return items


async def test_a_given_up_event_is_recorded_and_redriven_once_the_subscriber_works(
    mesh: Mesh,
) -> None:
    await mesh.apply(BROKER + "---\n" + trigger(mesh.subscriber.url))
    await mesh.send("e-1", {"temperature": 21.5})

    (letter,) = await _letters(mesh, 1)
    assert letter["origin"] == {"kind": "Trigger", "namespace": "default", "name": "flaky"}
    assert letter["destination"] == mesh.subscriber.url
    assert letter["code"] == 503
    assert letter["errorText"] == "subscriber says no"
    assert base64.b64decode(letter["errorData"]) == b"subscriber says no"
    assert letter["error"].startswith("HTTP 503")
    assert letter["redriven"] is None
    assert letter["event"]["id"] == "e-1"
    assert letter["event"]["data"] == {"temperature": 21.5}
    assert not any(k.startswith(("knativeerror", "headwater")) for k in letter["event"])
    _, trigger_status = await mesh.json("GET", "/api/v1/resources/trigger/default/flaky")
    # One word for it everywhere: the dashboard's dead letter is describe's deadLettered.
    counters = trigger_status["status"]
    assert (counters["deadLettered"], counters["sentToDeadLetterSink"], counters["dropped"]) == (
        1,
        0,
        0,
    )

    status, one = await mesh.json("GET", f"/api/v1/deadletters/{letter['id']}")
    assert (status, one) == (200, letter)

    mesh.subscriber.status = 202
    status, result = await mesh.json("POST", f"/api/v1/deadletters/{letter['id']}/redrive")
    assert status == 200, result
    assert result["outcome"] == "delivered"
    assert result["lastError"] is None
    assert mesh.subscriber.accepted_ids == ["e-1"]
    _, trigger_status = await mesh.json("GET", "/api/v1/resources/trigger/default/flaky")
    assert trigger_status["status"]["delivered"] == 1

    (listed,) = (await mesh.json("GET", "/api/v1/deadletters"))[1]["items"]
    assert listed["redriven"] == "delivered"
    status, again = await mesh.json("POST", f"/api/v1/deadletters/{letter['id']}/redrive")
    assert status == 409
    assert "delivered already" in again["error"]
    assert mesh.subscriber.accepted_ids == ["e-1"]


async def test_a_redrive_that_fails_again_is_recorded_again(mesh: Mesh) -> None:
    await mesh.apply(BROKER + "---\n" + trigger(mesh.subscriber.url))
    await mesh.send("e-2", "x")
    (letter,) = await _letters(mesh, 1)
    status, result = await mesh.json("POST", f"/api/v1/deadletters/{letter['id']}/redrive")
    assert status == 200
    assert result["outcome"] == "dead-lettered"
    assert "503" in result["lastError"]
    newest, oldest = await _letters(mesh, 2)
    assert newest["event"]["id"] == oldest["event"]["id"] == "e-2"
    assert newest["id"] > oldest["id"]
    assert (newest["redriven"], oldest["redriven"]) == (None, "dead-lettered")


async def test_recorded_also_when_the_dead_letter_sink_takes_it(mesh: Mesh) -> None:
    dls = mesh.subscriber.url.rstrip("/") + "/"
    # The DLS is the same server: it answers 503 too, then the event is dropped...
    await mesh.apply(BROKER + "---\n" + trigger(mesh.subscriber.url, dead_letter=dls))
    await mesh.send("e-3", 1)
    (letter,) = await _letters(mesh, 1)
    assert letter["event"]["id"] == "e-3"
    # ... and with a Trigger whose subscriber refuses for good but whose DLS accepts.
    mesh.subscriber.status = 202
    await mesh.apply(trigger("http://127.0.0.1:9/closed", dead_letter=dls, name="closed"))
    await mesh.send("e-4", 2)
    newest, _ = await _letters(mesh, 2)
    assert newest["event"]["id"] == "e-4"
    assert newest["origin"]["name"] == "closed"
    assert newest["code"] is None

    async def dead_lettered() -> bool:
        _, status = await mesh.json("GET", "/api/v1/resources/trigger/default/closed")
        return bool(status["status"]["deadLettered"] == 1)

    await wait_until(dead_lettered)
    # The dead letter sink got it (and so did the first Trigger, now that it works).
    assert mesh.subscriber.accepted_ids.count("e-4") == 2


async def test_newest_first_with_limit_and_before(mesh: Mesh) -> None:
    await mesh.apply(BROKER + "---\n" + trigger(mesh.subscriber.url))
    for n in range(5):
        await mesh.send(f"n-{n}", n)
    items = await _letters(mesh, 5)
    ids = [item["id"] for item in items]
    assert ids == sorted(ids, reverse=True)
    status, page = await mesh.json("GET", f"/api/v1/deadletters?limit=2&before={ids[1]}")
    assert status == 200
    assert [item["id"] for item in page["items"]] == ids[2:4]


async def test_redrive_refused_when_the_origin_is_gone(mesh: Mesh) -> None:
    await mesh.apply(BROKER + "---\n" + trigger(mesh.subscriber.url))
    await mesh.send("e-5", 5)
    (letter,) = await _letters(mesh, 1)
    deleted = await mesh.client.delete("/api/v1/resources/trigger/default/flaky")
    assert deleted.status == 200
    status, body = await mesh.json("POST", f"/api/v1/deadletters/{letter['id']}/redrive")
    assert status == 409
    assert body["error"] == "Trigger default/flaky is not running"


async def test_an_uplinks_dead_letter_is_refused_for_redrive_with_the_reason(mesh: Mesh) -> None:
    await mesh.apply(BROKER)
    error = DeliveryError(400, False, reason="the remote refused it")
    event = CloudEvent({"specversion": "1.0", "id": "u-1", "source": "/s", "type": "t"})
    await mesh.runtime.dead_letters.record(
        ("Uplink", "default", "up"), "https://cloud.example/default/default", event, error
    )
    (letter,) = await _letters(mesh, 1)
    assert letter["origin"] == {"kind": "Uplink", "namespace": "default", "name": "up"}
    status, body = await mesh.json("POST", f"/api/v1/deadletters/{letter['id']}/redrive")
    assert status == 409
    assert body["error"] == (
        f"dead letter {letter['id']} came from Uplink default/up: "
        "only a Trigger's or a Subscription's dead letters can be re-driven"
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/api/v1/deadletters?limit=0", 400, id="limit-zero"),
        pytest.param("GET", "/api/v1/deadletters?limit=1001", 400, id="limit-too-big"),
        pytest.param("GET", "/api/v1/deadletters?limit=ten", 400, id="limit-not-a-number"),
        pytest.param("GET", "/api/v1/deadletters?before=-3", 400, id="before-negative"),
        pytest.param("GET", "/api/v1/deadletters?before=%C2%B2", 400, id="before-superscript"),
        pytest.param("GET", "/api/v1/deadletters/abc", 400, id="id-not-a-number"),
        pytest.param("GET", "/api/v1/deadletters/0", 400, id="id-zero"),
        pytest.param("GET", "/api/v1/deadletters/99999999999999999999", 400, id="id-too-big"),
        pytest.param("GET", "/api/v1/deadletters/7", 404, id="id-unknown"),
        pytest.param("POST", "/api/v1/deadletters/7/redrive", 404, id="redrive-unknown"),
        pytest.param("POST", "/api/v1/deadletters/x/redrive", 400, id="redrive-not-a-number"),
    ],
)
async def test_bad_requests_get_a_reason(mesh: Mesh, method: str, path: str, status: int) -> None:
    got, body = await mesh.json(method, path)
    assert got == status
    assert body["error"]


class DeadLetterAppendFailsOnce(MemoryLog):
    """A log whose first append to the dead-letter stream fails (say, a full disk)."""

    failed = False

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        if stream == DEAD_LETTER_STREAM and not self.failed:
            self.failed = True
            raise LogUnavailable("disk full")
        return await super().append(stream, events)


async def test_an_event_is_not_lost_when_recording_it_fails() -> None:
    log = DeadLetterAppendFailsOnce()
    runtime = Runtime(log)
    try:
        await runtime.apply_text(BROKER + "---\n" + trigger("http://127.0.0.1:9/"), "mesh.yaml")
        broker = runtime.broker("default", "default")
        await broker.accept(
            [CloudEvent({"specversion": "1.0", "id": "keep", "source": "/t", "type": "t"})]
        )

        async def recorded() -> bool:
            return len(await runtime.dead_letters.list(10)) == 1

        # The failed record fails the delivery: the event stays unacknowledged and
        # comes back once the dispatcher restarts; then the record is kept.
        await wait_until(recorded, within=10)
        assert log.failed
        (letter,) = await runtime.dead_letters.list(10)
        assert letter.event.id == "keep"
    finally:
        await runtime.close()


async def test_an_event_too_large_to_keep_is_recorded_without_its_data() -> None:
    """Only a sender with a larger event limit than the dead-letter stream's can hit
    this; what failed and why is kept all the same."""
    runtime = Runtime()
    try:
        huge = CloudEvent(
            {"specversion": "1.0", "id": "huge", "source": "/t", "type": "t"}, b"x" * 2_000_000
        )
        deliverer = Deliverer(Refusing(), DeliverySpec(), destination="http://nowhere/")
        await runtime.dead_letters(deliverer, huge, DeliveryError(413, False, b"too big"))
        (letter,) = await runtime.dead_letters.list(10)
        assert letter.event.id == "huge"
        assert letter.event.get("headwaterdataomitted") == "true"
        assert not letter.event.has_data
        assert letter.event.get("knativeerrorcode") == "413"
        assert letter.origin is None  # not a running Trigger's or Subscription's
    finally:
        await runtime.close()


class Refusing:
    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        raise DeliveryError(503, True)
