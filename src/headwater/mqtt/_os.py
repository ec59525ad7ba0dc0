"""What the MQTT broker asks of the operating system: a socket budget, freed memory back.

How this works: :func:`fd_budget` is the share of the process's descriptor
limit the broker's sockets may hold (:data:`~headwater.mqtt.config.FD_SHARE`);
:func:`malloc_trim` hands memory freed by a large partial packet back to the
system (glibc), which the broker calls once per burst of closes
(:data:`TRIM_AFTER_BYTES`, :data:`TRIM_DELAY`).
"""

from __future__ import annotations

import ctypes
import resource
from typing import Any

from headwater.mqtt.config import DEFAULT_MAX_CONNECTIONS, FD_SHARE

__all__ = ["TRIM_AFTER_BYTES", "TRIM_DELAY", "fd_budget", "malloc_trim"]

#: Bytes a closed connection must have held for the broker to hand freed memory
#: back to the system (a large partial packet), and how long it waits first, so
#: that a burst of closes costs one trim.
TRIM_AFTER_BYTES = 256 * 1024
TRIM_DELAY = 1.0


def malloc_trim() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Python frees a large packet's buffer at once, but glibc keeps
    the pages for reuse: after the partial-packet probe of benchmarks/hostile.py
    the process stayed ~80 MiB above its start without this."""
    global _libc_trim
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc_trim = False
    if _libc_trim:
        _libc_trim(0)


_libc_trim: Any = None


def fd_budget() -> int:
    """The sockets MQTT may hold: :data:`FD_SHARE` of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, int(soft * FD_SHARE))
