"""Errors raised by the CloudEvents model, formats and bindings."""

from __future__ import annotations


class InvalidEvent(ValueError):
    """A CloudEvent, or bytes meant to hold one, that break the specification.

    ``attribute`` names what is wrong (an attribute, ``data``, a header or the
    envelope as a whole) and ``reason`` says which rule was broken; ``str()``
    joins both so that it can be answered as-is to a client (HTTP 400).
    """

    def __init__(self, attribute: str, reason: str) -> None:
        self.attribute = attribute
        self.reason = reason
        super().__init__(f"{attribute}: {reason}")
