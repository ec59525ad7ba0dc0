"""The MQTT protocol versions the codec speaks (the CONNECT Protocol Level byte)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ProtocolVersion"]


class ProtocolVersion(IntEnum):
    """MQTT Protocol Level: 4 is MQTT 3.1.1 (§3.1.2.2), 5 is MQTT 5.0 (§3.1.2.2)."""

    MQTT311 = 4
    MQTT5 = 5

    @property
    def label(self) -> str:
        """The version as people write it (``"3.1.1"``, ``"5.0"``): in events and device records."""
        return "5.0" if self is ProtocolVersion.MQTT5 else "3.1.1"

    @classmethod
    def from_label(cls, label: str | None) -> ProtocolVersion:
        """The version a :attr:`label` names (anything but ``"5.0"`` is 3.1.1)."""
        return cls.MQTT5 if label == "5.0" else cls.MQTT311
