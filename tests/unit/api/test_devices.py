"""Devices from the Brokers' streams: latest values, bucketed series, bounded memory."""

from __future__ import annotations

import asyncio

import pytest

from headwater.api import devices
from headwater.api.devices import BUCKET_SECONDS, MAX_DEVICES, MAX_FIELDS, DeviceTracker, Series
from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from tests.helpers import wait_until
from tests.unit.api.mesh import Mesh

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""


def event(data: object, **attributes: str) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", **attributes}, data
    )


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        pytest.param(
            event({"device": "gh-1", "temperature": 21.5, "seq": 4, "ok": True}),
            ("gh-1", {"temperature": 21.5}),
            id="device-in-data",
        ),
        pytest.param(
            event({"t": 1, "env": {"rh": 40}}, device="ext", subject="s"),
            ("ext", {"t": 1.0, "env.rh": 40.0}),
            id="device-extension-and-nested",
        ),
        pytest.param(event(7.5, subject="pump", metric="flow"), ("pump", {"flow": 7.5}), id="bare"),
        pytest.param(
            event(b'{"v": 3}', subject="raw", datacontenttype="application/json"),
            ("raw", {"v": 3.0}),
            id="json-bytes",
        ),
        pytest.param(event({"v": "high"}, subject="words"), None, id="no-numbers"),
        pytest.param(event({"v": 1}), None, id="no-device"),
    ],
)
def test_what_counts_as_a_device_reading(
    ev: CloudEvent, expected: tuple[str, dict[str, float]] | None
) -> None:
    tracker = DeviceTracker(Runtime())
    tracker.ingest(ev, 1000.0)
    if expected is None:
        assert tracker.devices == {}
        return
    name, values = expected
    assert tracker.devices[name].values == values


def test_series_keeps_one_point_per_bucket_and_a_bounded_window() -> None:
    series = Series()
    assert series.add(100.0, 1.0)
    assert series.add(100.0 + BUCKET_SECONDS / 2, 2.0)  # same bucket: the latest wins
    assert not series.add(90.0, 9.0)  # older than the newest bucket
    assert series.points(0) == ([100.0], [2.0])
    for n in range(5000):
        series.add(200.0 + n * BUCKET_SECONDS, float(n))
    limit = int(devices.WINDOW_SECONDS / BUCKET_SECONDS)
    assert len(series.times) <= 2 * limit
    _, values = series.points(200.0 + 4990 * BUCKET_SECONDS)
    assert values == [float(n) for n in range(4990, 5000)]


def test_devices_and_fields_are_capped() -> None:
    tracker = DeviceTracker(Runtime())
    for n in range(MAX_DEVICES + 3):
        tracker.ingest(event({f"f{i}": i for i in range(MAX_FIELDS + 2)}, subject=f"d{n}"), 1e9)
    assert len(tracker.devices) == MAX_DEVICES
    assert tracker.untracked == 3
    assert len(tracker.devices["d0"].fields) == MAX_FIELDS


def test_readings_older_than_the_window_are_ignored() -> None:
    tracker = DeviceTracker(Runtime())
    tracker.ingest(event({"v": 1}, subject="old", time="2020-01-01T00:00:00Z"), 1.7e9)
    assert tracker.devices == {}


async def test_devices_endpoints_follow_the_broker(mesh: Mesh) -> None:
    await mesh.apply(BROKER)
    await mesh.send("a", {"device": "gh-1", "temperature": 20.0})
    status, _ = await mesh.json("GET", "/api/v1/devices")  # starts the tracker
    assert status == 200

    async def seen() -> bool:
        _, body = await mesh.json("GET", "/api/v1/devices")
        return [d["device"] for d in body["devices"]] == ["gh-1"]

    await wait_until(seen)
    await mesh.send("b", {"device": "gh-1", "temperature": 22.0, "humidity": 50})

    async def updated() -> bool:
        _, body = await mesh.json("GET", "/api/v1/devices")
        return bool(body["devices"][0]["values"] == {"temperature": 22.0, "humidity": 50.0})

    await wait_until(updated)
    status, series = await mesh.json("GET", "/api/v1/devices/series?device=gh-1")
    assert status == 200
    assert series["series"]["temperature"]["v"][-1] == 22.0
    assert len(series["series"]["temperature"]["t"]) in (1, 2)


async def test_device_events_push_changes(mesh: Mesh) -> None:
    await mesh.apply(BROKER)
    _, listing = await mesh.json("GET", "/api/v1/devices")
    # Sent before the stream opens, after the listing: pushed all the same.
    await mesh.send("c", {"device": "gh-2", "temperature": 18.0})
    await asyncio.sleep(0.3)
    response = await mesh.client.get(f"/api/v1/devices/events?since={listing['version']}")
    assert response.headers["Content-Type"] == "text/event-stream"
    async with asyncio.timeout(10):
        while True:
            line = await response.content.readline()
            if line.startswith(b"data: "):
                break
    assert b'"gh-2"' in line
    assert b'"temperature":[' in line
    response.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/api/v1/devices/series", 400, id="no-device"),
        pytest.param("/api/v1/devices/series?device=", 400, id="empty-device"),
        pytest.param("/api/v1/devices/series?device=nope", 404, id="unknown"),
        pytest.param("/api/v1/devices/events?since=-1", 400, id="events-since-negative"),
        pytest.param("/api/v1/devices/events?since=x", 400, id="events-since-not-a-number"),
    ],
)
async def test_bad_series_requests(mesh: Mesh, path: str, status: int) -> None:
    got, body = await mesh.json("GET", path)
    assert got == status
    assert body["error"]


async def test_bad_since(mesh: Mesh) -> None:
    mesh.client.app[devices.TRACKER_KEY].ingest(event({"v": 1}, subject="d"), 1.9e9)
    for since, status in (("abc", 400), ("nan", 400), ("inf", 400), ("0", 200)):
        got, _ = await mesh.json("GET", f"/api/v1/devices/series?device=d&since={since}")
        assert got == status, since


async def test_tracking_stops_when_idle_and_starts_again(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    await mesh.apply(BROKER)
    monkeypatch.setattr(devices, "SYNC_INTERVAL", 0.01)
    tracker = mesh.client.app[devices.TRACKER_KEY]
    await mesh.json("GET", "/api/v1/devices")
    await wait_until(lambda: _running(tracker, 1))
    monkeypatch.setattr(devices, "IDLE_STOP", 0.0)
    await wait_until(lambda: _running(tracker, 0))
    monkeypatch.setattr(devices, "IDLE_STOP", 600.0)
    await mesh.send("late", {"device": "gh-3", "temperature": 1.0})
    await mesh.json("GET", "/api/v1/devices")  # starts again; the log has what it missed

    async def seen() -> bool:
        return "gh-3" in tracker.devices

    await wait_until(seen)


async def _running(tracker: DeviceTracker, readers: int) -> bool:
    return len(tracker._readers) == readers and (tracker._sync is None) == (readers == 0)


async def test_live_clients_are_let_go_when_the_application_stops(mesh: Mesh) -> None:
    response = await mesh.client.get("/api/v1/devices/events")
    assert await response.content.readline() == b": devices\n"
    await mesh.client.app[devices.TRACKER_KEY].stop()  # what the app's shutdown calls
    async with asyncio.timeout(2):
        rest = await response.content.read()
    assert b"data:" not in rest
