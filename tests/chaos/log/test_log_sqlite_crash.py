"""SIGKILL an appending process at random points, again and again: every acknowledged
event survives exactly as appended, and no append is ever half visible."""

from __future__ import annotations

import asyncio
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headwater.log import SqliteLog, StreamNotFound

pytestmark = pytest.mark.slow

RUNS = 15
"""Kill/restart cycles (each well under a second of appending)."""

STREAM = "s"

# The child: four concurrent appenders on one fsync log (so that group commits
# of several appends are what gets killed); each line it prints is an
# acknowledged append: "offset:id offset:id ...".
_APPENDER = """
import asyncio, random, sys
from headwater.cloudevents import CloudEvent
from headwater.log import SqliteLog, StreamNotFound

async def main(path: str, run: int) -> None:
    log = SqliteLog(path, durability="fsync")
    await log.create_stream("s")
    rnd = random.Random(run)

    async def appender(k: int) -> None:
        n = 0
        while True:
            size = rnd.randint(1, 4)
            batch = f"{run}-{k}-{n}"
            n += 1
            events = [
                CloudEvent(
                    {"specversion": "1.0", "id": f"{batch}/{j}", "source": "/crash", "type": "t"},
                    {"batch": batch, "size": size, "pad": "x" * rnd.randint(0, 3000)},
                )
                for j in range(size)
            ]
            offsets = await log.append("s", events)
            line = " ".join(f"{o}:{e.id}" for o, e in zip(offsets, events))
            sys.stdout.write(line + "\\n")
            sys.stdout.flush()

    async with asyncio.TaskGroup() as tg:
        for k in range(4):
            tg.create_task(appender(k))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run_and_kill(path: Path, run: int, rnd: random.Random) -> bytes:
    """Start an appender, SIGKILL it at a random moment, return what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path), str(run)], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    first = b""
    if rnd.random() < 0.2:
        time.sleep(rnd.uniform(0.0, 0.4))  # maybe while it is still opening the file
    else:
        with selectors.DefaultSelector() as sel:  # it is appending: kill it mid-flight
            sel.register(child.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "the appender printed nothing"
            first = child.stdout.readline()
        time.sleep(rnd.uniform(0.0, 0.25))
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return first + rest


def acked_offsets(output: bytes) -> dict[int, str]:
    """offset -> event id of every complete line (a line cut by the kill was never acked)."""
    acked: dict[int, str] = {}
    for line in output.split(b"\n")[:-1]:
        for pair in line.decode().split():
            offset, event_id = pair.split(":")
            acked[int(offset)] = event_id
    return acked


async def check_log(path: Path, acked: dict[int, str], run: int) -> int:
    async with SqliteLog(path) as log:
        try:
            info = await log.info(STREAM)
        except StreamNotFound:  # killed before its stream was created
            assert not acked
            return 0
        reader = log.reader(STREAM, f"check-{run}")
        entries = []
        while batch := await reader.next_batch(1000, timeout=0):
            entries += batch
        await log.delete_consumer(STREAM, f"check-{run}")
    offsets = [offset for offset, _ in entries]
    assert offsets == list(range(1, info.last_offset + 1)), "offsets are not contiguous"
    by_offset = {offset: event for offset, event in entries}
    for offset, event_id in acked.items():
        event = by_offset.get(offset)
        assert event is not None, f"acked offset {offset} ({event_id}) is lost"
        assert event.id == event_id, f"offset {offset} holds {event.id}, acked {event_id}"
        assert event.data["batch"] == event_id.split("/")[0]
    batches: dict[str, list[int]] = {}
    for offset, event in entries:
        batches.setdefault(event.data["batch"], []).append(offset)
        assert event.source == "/crash"
    for name, members in batches.items():
        size = by_offset[members[0]].data["size"]
        assert len(members) == size, f"append {name} is half visible: {len(members)}/{size}"
        assert members == list(range(members[0], members[0] + size))
    return len(entries)


def test_sigkill_during_fsync_appends_loses_nothing_acked(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rnd = random.Random(os.environ.get("HEADWATER_CRASH_SEED", "4"))
    acked: dict[int, str] = {}
    kills_mid_append = 0
    for run in range(RUNS):
        output = run_and_kill(path, run, rnd)
        new = acked_offsets(output)
        assert not acked.keys() & new.keys(), "an offset was handed out twice"
        acked.update(new)
        kills_mid_append += bool(new)
        stored = asyncio.run(check_log(path, acked, run))
        assert stored >= len(acked)
    assert kills_mid_append >= RUNS // 2  # most kills hit a process busy appending
    assert len(acked) > 100
