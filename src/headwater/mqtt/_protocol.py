"""The MQTT protocol versions the codec speaks (the CONNECT Protocol Level byte)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ProtocolVersion"]


class ProtocolVersion(IntEnum):
    """MQTT Protocol Level: 4 is MQTT 3.1.1 (§3.1.2.2), 5 is MQTT 5.0 (§3.1.2.2)."""

    MQTT311 = 4
    MQTT5 = 5
