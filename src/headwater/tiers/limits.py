"""The tiers' defaults and bounds, which the resource schema reads too.

How this works: constants only, the standard library only, so that
:mod:`headwater.resources.tiers` validates an Uplink or an Edge without
loading the HTTP client (the ``tiers`` package imports nothing in its
``__init__``; ``tests/unit/test_light_imports.py``).
"""

from typing import Final

DEFAULT_MAX_BATCH_EVENTS: Final = 1000
"""Events per request at most. A thousand readings with their attributes are
about 380 KB of JSON, 30 KB gzipped: large enough that per-request overhead
vanishes, small enough that a request over a 1 Mbit/s link ends within a
second."""

DEFAULT_MAX_BATCH_BYTES: Final = 1024 * 1024
"""Request body bytes (before compression) at most: 1 MiB, the default body
limit of common proxies (nginx's ``client_max_body_size``). A receiver
answering 413 lowers it for the rest of the run."""

DEFAULT_WAIT: Final = 20.0
"""Seconds a pull waits for a command when none is queued. Under the 30-60 s
after which proxies and load balancers commonly close an idle request, and
short enough that a dead connection is replaced within half a minute; each
idle pull costs about 1.2 KB on the wire (``benchmarks/uplink.py --downlink``)."""

MAX_WAIT: Final = 60.0
"""The longest wait an edge may ask for."""

DEFAULT_PULL_EVENTS: Final = 100
"""Commands per answer unless the edge asks for fewer or more."""

MAX_PULL_EVENTS: Final = 1000
"""Commands per answer at most, whatever the edge asks for."""
