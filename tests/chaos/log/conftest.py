"""Fixtures for the event-log crash tests: the same per-test nats-server as the
integration tests (these tests kill it too)."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.integration.log.conftest import nats_server  # noqa: E402

__all__ = ["nats_server"]
