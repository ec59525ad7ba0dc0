"""ISO 8601 durations as Knative's DeliverySpec uses them (``PT0.2S``, ``PT1M``, ``P1D``)."""

from __future__ import annotations

import re

# ISO 8601 duration with the units Knative accepts (no years or months: their
# length is not fixed). At least one component is required after P and T.
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?\Z"
)
_SECONDS = {"weeks": 604800.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration; ``ValueError`` naming the problem otherwise."""
    m = _DURATION.match(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration (e.g. PT0.2S, PT10S, PT1M)")
    return sum(float(v) * _SECONDS[k] for k, v in m.groupdict().items() if v is not None)
