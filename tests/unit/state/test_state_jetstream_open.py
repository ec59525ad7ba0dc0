"""Opening a JetStream KV bucket while the cluster answers late (state.jetstream).

Three nodes starting at once each create the same replicated buckets; a
busy JetStream cluster then answers an API request after the client's
timeout, or 503 while it elects a leader. Opening the bucket tries again
(``OPEN_ATTEMPTS``) instead of failing the node's start, and still fails,
with StateUnavailable, when JetStream never answers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from headwater.state import StateUnavailable
from headwater.state.jetstream import OPEN_ATTEMPTS, JetStreamStore


class LateJetStream:
    """Fails the first ``late`` stream_info calls as ``error`` does, then answers."""

    def __init__(self, late: int, error: type[Exception]) -> None:
        self.late = late
        self.error = error
        self.calls = 0

    async def stream_info(self, stream: str) -> Any:
        self.calls += 1
        if self.calls <= self.late:
            raise self.error()
        return SimpleNamespace(cluster=None)

    async def add_stream(self, config: Any) -> Any:
        raise AssertionError("the stream exists")


class Connection:
    is_connected = True

    def __init__(self, js: LateJetStream) -> None:
        self.js = js

    def jetstream(self, timeout: float) -> LateJetStream:
        return self.js


@pytest.mark.parametrize(
    "error", [nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError]
)
async def test_a_late_answer_is_asked_again(error: type[Exception]) -> None:
    js = LateJetStream(OPEN_ATTEMPTS - 1, error)
    store = JetStreamStore(connection=Connection(js))
    bucket = await store.bucket("resources")
    assert bucket.name == "resources" and js.calls == OPEN_ATTEMPTS


async def test_no_answer_at_all_is_state_unavailable() -> None:
    js = LateJetStream(OPEN_ATTEMPTS, nats.errors.TimeoutError)
    store = JetStreamStore(connection=Connection(js))
    with pytest.raises(StateUnavailable, match="open bucket 'resources'"):
        await store.bucket("resources")
    assert js.calls == OPEN_ATTEMPTS


async def test_a_refusal_is_not_asked_again() -> None:
    js = LateJetStream(1, nats.errors.NoRespondersError)
    store = JetStreamStore(connection=Connection(js))
    with pytest.raises(StateUnavailable):
        await store.bucket("resources")
    assert js.calls == 1
