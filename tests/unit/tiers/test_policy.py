"""The tiers' policy: what an answer means, how long to wait, which events keep order."""

from __future__ import annotations

import pytest

from headwater.cloudevents import CloudEvent
from headwater.tiers._policy import (
    Capabilities,
    Verdict,
    capabilities,
    new_backoff,
    next_wait,
    partition_key,
    verdict,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(200, Verdict.ACCEPTED, id="200"),
        pytest.param(202, Verdict.ACCEPTED, id="202"),
        pytest.param(204, Verdict.ACCEPTED, id="204"),
        pytest.param(400, Verdict.REFUSED, id="400 unparsable"),
        pytest.param(413, Verdict.REFUSED, id="413 too large"),
        pytest.param(None, Verdict.RETRY, id="no answer"),
        pytest.param(500, Verdict.RETRY, id="500"),
        pytest.param(503, Verdict.RETRY, id="503"),
        pytest.param(429, Verdict.RETRY, id="429"),
        pytest.param(408, Verdict.RETRY, id="408"),
        pytest.param(404, Verdict.RETRY, id="404 not there yet"),
        pytest.param(401, Verdict.RETRY, id="401 credentials get fixed"),
        pytest.param(403, Verdict.RETRY, id="403"),
        pytest.param(415, Verdict.RETRY, id="415 is the sender's form, not the event"),
        pytest.param(302, Verdict.RETRY, id="302 not followed"),
    ],
)
def test_only_400_and_413_refuse_content(status: int | None, expected: Verdict) -> None:
    assert verdict(status) is expected


def test_waits_are_jittered_below_a_doubling_cap() -> None:
    backoff = new_backoff((0.5, 10.0))
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    for cap in caps:
        assert 0 <= next_wait(backoff) <= cap
    assert new_backoff().maximum == 10.0


def test_retry_after_lengthens_the_wait_up_to_the_cap() -> None:
    assert next_wait(new_backoff((0.5, 30.0)), retry_after=10.0) == 10.0
    assert next_wait(new_backoff((0.5, 30.0)), retry_after=3600.0) == 30.0
    assert next_wait(new_backoff((0.5, 30.0)), retry_after=0.0) <= 0.5


def test_backoff_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        new_backoff((0.0, 1.0))
    with pytest.raises(ValueError):
        new_backoff((2.0, 1.0))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [("Accept-Post", "application/cloudevents-batch+json"), ("Accept-Encoding", "gzip")],
            Capabilities(batch=True, gzip=True),
            id="both",
        ),
        pytest.param(
            [
                (
                    "accept-post",
                    "application/cloudevents+json, Application/CloudEvents-Batch+JSON; q=1",
                )
            ],
            Capabilities(batch=True),
            id="case and parameters",
        ),
        pytest.param([("Allow", "POST, OPTIONS")], Capabilities(), id="Knative: Allow only"),
        pytest.param([("Accept-Encoding", "gzip;q=0, identity")], Capabilities(), id="q=0 is no"),
        pytest.param([("Accept-Encoding", "*")], Capabilities(gzip=True), id="any coding"),
        pytest.param([("Accept-Encoding", "br, gzip;q=0.5")], Capabilities(gzip=True), id="q"),
        pytest.param([("Accept-Encoding", "gzip;q=x")], Capabilities(), id="bad q"),
    ],
)
def test_capabilities_from_an_options_answer(
    headers: list[tuple[str, str]], expected: Capabilities
) -> None:
    assert capabilities(200, headers) == expected


@pytest.mark.parametrize("status", [404, 405, 500])
def test_an_error_answer_to_options_means_plain_posts(status: int) -> None:
    headers = [("Accept-Post", "application/cloudevents-batch+json"), ("Accept-Encoding", "gzip")]
    assert capabilities(status, headers) == Capabilities()


def _event(**attributes: str) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", **attributes})


def test_the_partition_key_is_partitionkey_else_source_and_subject() -> None:
    assert partition_key(_event(partitionkey="k", subject="a")) == "k"
    assert partition_key(_event(subject="a")) == ("/s", "a")
    assert partition_key(_event()) == ("/s", None)
