"""The uplink's receiver: what a request holds in each content mode."""

from __future__ import annotations

from headwater.cloudevents import CloudEvent
from headwater.eventing._http1 import Http1Client
from headwater.tiers._remote import Remote


def event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(i), "source": "/s", "type": "t"}, {"n": i})


async def test_a_batch_for_a_receiver_found_to_take_none_is_not_sent_but_handed_back() -> None:
    """Lanes share one Remote: one that built a batch just before another found out that
    the receiver takes no batches gets it back to send one by one (it used to raise)."""
    client = Http1Client()
    remote = Remote("http://127.0.0.1:9/", client, format="batch", compression="none")
    events = [event(1), event(2)]
    remote.mode = "binary"  # what a fallback of another lane does
    answer = await remote.send(events, [remote.encode(e) for e in events])
    assert answer.abandoned and answer.status is None
    assert client.open_connections == 0  # nothing was sent
    await client.close()


def test_fallbacks_go_from_gzip_to_identity_then_from_batches_to_binary() -> None:
    remote = Remote("http://127.0.0.1:9/", Http1Client(), format="batch", compression="gzip")
    assert remote.fallback(compressed=True) == "sending uncompressed"
    assert remote.form == ("batch", False)
    assert remote.fallback(compressed=False) == "sending events one by one in binary mode"
    assert remote.form == ("binary", False)
    assert remote.fallback(compressed=False) is None
