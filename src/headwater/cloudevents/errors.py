"""Errors raised by the CloudEvents model, formats and bindings."""

from __future__ import annotations

MAX_SHOWN: int = 60
"""Characters of an offending name or value quoted in an error message: enough
to recognise it, and a hostile 64 KiB value does not come back in a 400 body."""


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def shown(value: object) -> str:
    """``repr(value)``, shortened to :data:`MAX_SHOWN` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return f"<a {value.bit_length()}-bit int>" if type(value) is int else "<unprintable>"
    return _shorten(text)


class InvalidEvent(ValueError):
    """A CloudEvent, or bytes meant to hold one, that break the specification.

    ``attribute`` names what is wrong (an attribute, ``data``, a header or the
    envelope as a whole) and ``reason`` says which rule was broken; ``str()``
    joins both so that it can be answered as-is to a client (HTTP 400).
    """

    def __init__(self, attribute: str, reason: str) -> None:
        self.attribute = attribute
        self.reason = reason
        super().__init__(f"{_shorten(attribute)}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidEvent], tuple[str, str]]:
        return InvalidEvent, (self.attribute, self.reason)
