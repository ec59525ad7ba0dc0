"""The SQLite state store beyond the contract: foreign files, other processes, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from headwater.log import SqliteLog
from headwater.state import NotAStateStore, SqliteStore, StateUnavailable

WAIT = 10.0


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


async def test_an_event_log_file_is_not_taken_for_a_state_store(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "events.db")
    await log.close()
    with pytest.raises(NotAStateStore, match=r"events\.db is an SQLite database but not"):
        SqliteStore(tmp_path / "events.db")


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all, just some text" * 100)
    before = path.read_bytes()
    with pytest.raises(NotAStateStore, match=r"state\.db is not a Headwater state store"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_a_path_that_cannot_be_a_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateUnavailable, match=r"cannot open state store .*: unable to open"):
        SqliteStore(tmp_path)  # a directory


async def test_a_write_by_another_process_reaches_a_watcher(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path, poll_interval=0.05)
    try:
        bucket = await store.bucket("resources")
        async with contextlib.aclosing(bucket.watch()) as changes:
            done = await asyncio.to_thread(
                run_python,
                "import asyncio\n"
                "from headwater.state import SqliteStore\n"
                "async def main():\n"
                f"    store = await SqliteStore.open({str(path)!r})\n"
                "    bucket = await store.bucket('resources')\n"
                "    print(await bucket.put('Broker/default/x', b'from afar'))\n"
                "    await store.close()\n"
                "asyncio.run(main())\n",
            )
            assert done.returncode == 0, done.stderr
            async with asyncio.timeout(WAIT):
                change = await anext(changes)
        assert (change.key, change.value, change.revision) == ("Broker/default/x", b"from afar", 1)
    finally:
        await store.close()


async def test_a_put_is_durable_when_it_returns(tmp_path: Path) -> None:
    """The writer is killed (SIGKILL) right after put() returned: the value is there."""
    path = tmp_path / "state.db"
    killed = await asyncio.to_thread(
        run_python,
        "import asyncio, os, signal\n"
        "from headwater.state import SqliteStore\n"
        "async def main():\n"
        f"    store = await SqliteStore.open({str(path)!r})\n"
        "    bucket = await store.bucket('resources')\n"
        "    await bucket.put('k', b'kept')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n",
    )
    assert killed.returncode == -9
    store = await SqliteStore.open(path)
    try:
        entry = await (await store.bucket("resources")).get("k")
        assert entry is not None and entry.value == b"kept"
    finally:
        await store.close()
