"""JetStream backend against a real nats-server: outages, recovery, several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import Entry, JetStreamLog, LogUnavailable, StreamConfig, StreamNotFound
from headwater.log.jetstream import nats_token
from tests.helpers import WAIT, wait_until
from tests.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

STREAM = "broker.default"


def event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": f"e-{i}", "source": "/s", "type": "t"}, {"n": i})


async def available(log: JetStreamLog) -> bool:
    try:
        await log.info(STREAM)
    except LogUnavailable:
        return False
    return True


async def until_available(log: JetStreamLog) -> None:
    """Ask until the log answers again."""
    await wait_until(lambda: available(log), what="the log recovered")


def test_names_are_made_safe_for_nats_and_stay_unique() -> None:
    assert nats_token("plain-name_1") == "plain-name_1"
    dotted = nats_token("broker.default")
    assert dotted.startswith("broker_default_") and len(dotted) == len("broker_default_") + 8
    assert nats_token("broker.default") != nats_token("broker default")
    assert nats_token("a.b") != nats_token("a_b")
    assert all(c.isalnum() or c in "_-" for c in nats_token("x > y.* \u00e9"))


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.hw_s.c1.1.123456.99.1733600000000000000.5",
        "$JS.ACK.hub.ACCHASH.hw_s.c1.2.77.70.1733600000000000000.0.rnd",
        "$JS.ACK.hub.ACCHASH.hw_s.c1.2.78.71.1733600000000000000.0",
    ],
)
def test_a_delivered_message_s_stream_sequence_is_read_as_nats_py_reads_it(reply: str) -> None:
    from nats.aio.msg import Msg

    from headwater.log._jetstream_nats import stream_sequence

    expected = Msg(_client=None, subject="x", reply=reply).metadata.sequence.stream
    assert stream_sequence(reply) == expected


@pytest.mark.parametrize("reply", ["", "_INBOX.abc.1", "$JS.ACK.s.c.1.x.2.3.4", "$JS.API.a.b"])
def test_a_subject_that_is_no_ack_subject_is_refused(reply: str) -> None:
    from headwater.log._jetstream_nats import stream_sequence

    with pytest.raises(ValueError):
        stream_sequence(reply)


async def test_an_outage_raises_promptly_and_the_log_recovers(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url) as log:
        await log.create_stream(STREAM)
        assert await log.append(STREAM, [event(1)]) == [1]
        reader = log.reader(STREAM, "c")
        assert [o for o, _ in await reader.next_batch(10, timeout=2)] == [1]

        nats_server.kill()
        # The client notices: appends fail (rather than hang) once it has.
        with pytest.raises(LogUnavailable):
            async with asyncio.timeout(WAIT):
                while True:
                    await log.append(STREAM, [event(2)])
                    await asyncio.sleep(0.02)
        # No wait while down: an hour's timeout, and the read fails at once.
        async with asyncio.timeout(WAIT):
            with pytest.raises(LogUnavailable):
                await reader.next_batch(10, timeout=3600)
        with pytest.raises(LogUnavailable):
            await log.info(STREAM)

        nats_server.start()
        await until_available(log)
        offsets = await log.append(STREAM, [event(3)])
        assert offsets[0] >= 2
        await reader.ack(1)
        got: list[Entry] = []
        while not any(o == offsets[0] for o, _ in got):
            batch = await reader.next_batch(10, timeout=5)
            assert batch, "the reader did not recover"
            got += batch
        assert got[-1].event == event(3)


async def test_a_waiting_reader_learns_of_an_outage_promptly(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url) as log:
        await log.create_stream(STREAM)
        reader = log.reader(STREAM, "c")
        await reader.next_batch(1, timeout=0)

        async def kill_soon() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(nats_server.kill)

        # An hour's timeout: the read ends only because it learnt of the outage.
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
            tg.create_task(kill_soon())
            with pytest.raises(LogUnavailable):
                await reader.next_batch(10, timeout=3600)


async def test_no_server_is_unavailable_not_a_hang() -> None:
    log = JetStreamLog(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)  # nobody there
    async with asyncio.timeout(WAIT):  # refused, not a hang
        with pytest.raises(LogUnavailable):
            await log.create_stream(STREAM)
    await log.close()


async def test_streams_carry_their_limits_to_jetstream(nats_server: NatsServer) -> None:
    import nats

    async with JetStreamLog(nats_server.url, namespace="hw") as log:
        await log.create_stream(STREAM, StreamConfig(max_events=10, max_age=60, max_bytes=10**6))
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(log.stream_name(STREAM))
        finally:
            await nc.close()
        assert info.config.name == "hw_" + nats_token(STREAM)
        assert info.config.description == STREAM
        assert info.config.subjects == ["hw.log." + nats_token(STREAM)]
        assert (info.config.max_msgs, info.config.max_bytes) == (10, 10**6)
        assert info.config.max_age == 60
        assert info.config.max_msg_size == 1024 * 1024


_SHARED_READER = """
import asyncio, sys
from headwater.log import JetStreamLog

async def main(url: str, total: int) -> None:
    async with JetStreamLog(url) as log:
        reader = log.reader("broker.default", "shared")
        idle = 0
        while idle < 20:
            batch = await reader.next_batch(5, timeout=0.1)
            idle = 0 if batch else idle + 1
            for offset, event in batch:
                print(offset, event.id, flush=True)
                await reader.ack(offset)
            await asyncio.sleep(0.01)  # leave some work to the other process
        await reader.flush()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_two_processes_with_one_consumer_name_share_the_work(
    nats_server: NatsServer,
) -> None:
    total = 200
    async with JetStreamLog(nats_server.url) as log:
        await log.create_stream(STREAM)
        await log.reader(STREAM, "shared").close()  # the consumer exists before the appends
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        children = [
            subprocess.Popen(  # noqa: ASYNC220 (started once; waited for in a thread)
                [sys.executable, "-c", _SHARED_READER, nats_server.url, str(total)],
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        try:
            for i in range(0, total, 10):
                await log.append(STREAM, [event(n) for n in range(i, i + 10)])
            outputs = [
                (await asyncio.to_thread(child.communicate, timeout=60))[0] for child in children
            ]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert [child.returncode for child in children] == [0, 0]
        seen = [[line.split() for line in out.decode().splitlines()] for out in outputs]
        offsets = [[int(o) for o, _ in lines] for lines in seen]
        assert all(offsets), f"one process got nothing: {[len(o) for o in offsets]}"
        assert sorted(offsets[0] + offsets[1]) == list(range(1, total + 1))  # each once
        assert {i for lines in seen for _, i in lines} == {f"e-{n}" for n in range(total)}
        assert (await log.info(STREAM)).consumer("shared").position == total


async def test_held_entries_stay_with_their_reader_beyond_ack_wait(
    nats_server: NatsServer,
) -> None:
    async with (
        JetStreamLog(nats_server.url, ack_wait=1.0) as mine,
        JetStreamLog(nats_server.url, ack_wait=1.0) as theirs,
    ):
        await mine.create_stream(STREAM)
        await mine.append(STREAM, [event(1)])
        holder = mine.reader(STREAM, "shared")
        [(offset, _)] = await holder.next_batch(1, timeout=2)
        other = theirs.reader(STREAM, "shared")
        assert await other.next_batch(1, timeout=2.5) == []  # kept alive past ack_wait
        await holder.ack(offset)
        await holder.flush()
        assert (await mine.info(STREAM)).consumer("shared").position == offset

        await mine.append(STREAM, [event(2)])
        [(offset, _)] = await holder.next_batch(1, timeout=2)
        assert holder._keeper is not None
        holder._keeper.cancel()  # as if its process had died: no more progress
        [(again, _)] = await other.next_batch(1, timeout=5)
        assert again == offset  # redelivered to the other reader after ack_wait


async def _ack_pending(url: str, log: JetStreamLog, consumer: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(log.stream_name(STREAM), nats_token(consumer))
    finally:
        await nc.close()
    return int(info.num_ack_pending)


async def test_the_next_batch_is_on_its_way_while_one_is_handled(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(i) for i in range(30)])
        reader = log.reader(STREAM, "c")
        first = await reader.next_batch(10)
        assert [o for o, _ in first] == list(range(1, 11))

        async def delivered_ahead() -> bool:  # 10 handed out, 10 more sent unasked
            return await _ack_pending(nats_server.url, log, "c") == 20

        await wait_until(delivered_ahead, what="the next batch delivered before it is asked")
        second = await reader.next_batch(10, timeout=0)
        assert [o for o, _ in second] == list(range(11, 21))
        await reader.close()


async def test_a_pull_answer_lost_in_transit_costs_one_call(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url) as log:
        await log.create_stream(STREAM)
        reader = log.reader(STREAM, "c")
        arrive = reader._arrive
        losing: list[object] = []  # non-empty: the next status is lost

        def lose_one_status(message: Any) -> None:
            if message.headers and losing == [True]:
                losing.append(message)  # the "no messages" answer of the next request
                return
            arrive(message)

        reader._arrive = lose_one_status  # type: ignore[method-assign]
        assert await reader.next_batch(1) == []  # opens the consumer and the inbox
        losing.append(True)
        assert await reader.next_batch(1) == []  # waited for the answer, in vain
        assert len(losing) == 2
        await log.append(STREAM, [event(1)])
        # The request that was never answered is forgotten: a new one finds the entry.
        assert [o for o, _ in await reader.next_batch(1)] == [1]
        await reader.close()


async def test_what_a_closed_reader_asked_for_goes_to_the_next_at_once(
    nats_server: NatsServer,
) -> None:
    # ack_wait far beyond the wait below: an entry sent to the closed reader's
    # inbox and left there would come back only after it.
    async with JetStreamLog(nats_server.url, ack_wait=600.0) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(i) for i in range(30)])
        first = log.reader(STREAM, "c")
        assert len(await first.next_batch(10)) == 10
        await first.close()  # its top-up request answered meanwhile, or soon after
        second = log.reader(STREAM, "c")
        offsets: list[int] = []
        while len(set(offsets)) < 30:
            batch = await second.next_batch(30, timeout=WAIT)
            assert batch, f"entries missing after the first reader closed: {sorted(offsets)}"
            offsets += [o for o, _ in batch]
        assert sorted(set(offsets)) == list(range(1, 31))
        await second.close()


async def test_info_lists_every_consumer_past_one_page(nats_server: NatsServer) -> None:
    import nats

    async with JetStreamLog(nats_server.url, namespace="many") as log:
        await log.create_stream(STREAM)
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            for i in range(300):  # more than the 256 of one CONSUMER.LIST page
                await js.add_consumer(
                    log.stream_name(STREAM), durable_name=f"c{i}", ack_policy="explicit"
                )
        finally:
            await nc.close()
        info = await log.info(STREAM)
        assert len(info.consumers) == 300
        assert {c.name for c in info.consumers} == {f"c{i}" for i in range(300)}


async def test_a_stream_deleted_elsewhere_is_not_found(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url) as mine, JetStreamLog(nats_server.url) as theirs:
        await mine.create_stream(STREAM)
        assert await mine.append(STREAM, [event(1)]) == [1]
        await theirs.delete_stream(STREAM)
        with pytest.raises(StreamNotFound):  # JetStream: no responders on the subject
            await mine.append(STREAM, [event(2), event(3)])


async def test_a_missing_puback_fails_the_append_in_time(nats_server: NatsServer) -> None:
    async with JetStreamLog(nats_server.url, request_timeout=0.5) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(1)])
        log._ack_prefix = "nobody.listens."  # PubAcks now go where no one hears them
        async with asyncio.timeout(WAIT):  # its request timeout ends it, not a hang
            with pytest.raises(LogUnavailable, match="PubAck"):
                await log.append(STREAM, [event(2)])
        assert log._acks == {}  # nothing left waiting
