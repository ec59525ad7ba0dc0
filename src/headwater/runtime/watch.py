"""Hot reload: notice when resource files change and hand the new set to a callback.

Polls modification times (cheap for a handful of YAML files, and works on every
filesystem, bind mounts and ConfigMap symlink swaps included) and debounces:
a change is reported once the files have been quiet for one interval, so an
editor's write-rename dance causes one reload, not three.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# How often to look; a reload lands within about two intervals of the last write.
DEFAULT_POLL_INTERVAL = 0.5

Snapshot = dict[str, tuple[int, int]]


def snapshot(paths: Sequence[Path]) -> Snapshot:
    """(mtime_ns, size) of every YAML file under ``paths``."""
    out: Snapshot = {}
    for path in paths:
        files = (
            [p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")]
            if path.is_dir()
            else [path]
        )
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            out[str(file)] = (stat.st_mtime_ns, stat.st_size)
    return out


async def watch(
    paths: Sequence[Path],
    on_change: Callable[[], Awaitable[None]],
    *,
    interval: float = DEFAULT_POLL_INTERVAL,
) -> None:
    """Call ``on_change`` after each settled change; runs until cancelled."""
    current = snapshot(paths)
    pending = False
    while True:
        await asyncio.sleep(interval)
        latest = snapshot(paths)
        if latest != current:
            current = latest
            pending = True
            continue
        if pending:
            pending = False
            try:
                await on_change()
            except Exception:
                log.exception("reload failed; the running resources are unchanged")
