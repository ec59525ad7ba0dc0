"""ISO 8601 durations, as Knative's DeliverySpec and Headwater's resources write them.

How this works: one regular expression over the units Knative accepts
(weeks, days, hours, minutes, seconds; no years or months, whose length
varies) and a sum. A leaf module: the resource schema (validation at apply
time) and the delivery policy (seconds at run time) both read durations
through :func:`parse_duration`, and neither has to import the other.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration"]

_DURATION: Final = re.compile(
    r"P(?!\Z)(?:(?P<weeks>\d+(?:[.,]\d+)?)W)?(?:(?P<days>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:[.,]\d+)?)H)?(?:(?P<minutes>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?\Z"
)
_UNIT_SECONDS: Final = {
    "weeks": 604800.0,
    "days": 86400.0,
    "hours": 3600.0,
    "minutes": 60.0,
    "seconds": 1.0,
}


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration (``PT0.2S``, ``PT10S``, ``PT1M30S``, ``P1D``).

    Raises ``ValueError`` naming the input when it is not one.
    """
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or not any(m.groupdict().values()):
        raise ValueError(f"{text!r} is not an ISO 8601 duration (e.g. PT0.2S, PT10S, PT1M)")
    return sum(
        float(value.replace(",", ".")) * _UNIT_SECONDS[unit]
        for unit, value in m.groupdict().items()
        if value is not None
    )
