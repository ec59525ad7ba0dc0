"""A resource's status over the whole mesh: every node's counters, and their sum.

How this works: ``describe`` on any node asks every node for the status of
one resource (a NATS request on the mesh's status subject, answered by each
node from its own components; see :class:`~headwater.cluster.mesh.Mesh`)
and shows both the per-node statuses and :func:`merge_statuses` of them.
Counters add up (``delivered``, ``failedAttempts``, a latency histogram's
buckets); a few values are the same quantity seen from each node and are
not added: ``lag`` (of the one shared consumer: the largest, i.e. the
freshest worst case, is kept), and configuration echoed in a status
(``maxInflight``, ``ordering``, ``stream``...): the first node's. The last
error is the most recent one over all nodes, with its time and attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["merge_statuses"]

_LARGEST: Final = frozenset({"lag"})
_NOT_ADDED: Final = frozenset(
    {"maxInflight", "maxEventSize", "pending", "replicas", "port", "firstOffset", "lastOffset"}
)
_LAST_ERROR: Final = ("lastError", "lastErrorTime", "lastErrorAttempt")
_PER_NODE: Final = frozenset({"conditions", "activeNode", "address", "dispatchers"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge(values: list[Any], key: str) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key in _LARGEST and all(_number(v) for v in present):
        return max(present)
    if key not in _NOT_ADDED and all(_number(v) for v in present):
        return sum(present)
    if all(isinstance(v, Mapping) for v in present):
        keys: list[str] = []
        for value in present:
            keys.extend(k for k in value if k not in keys)
        return {k: _merge([v.get(k) for v in present], k) for k in keys}
    return present[0]


def merge_statuses(statuses: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One status from each node's (by node name): counters summed, see the module docstring."""
    ordered = [statuses[name] for name in sorted(statuses)]
    if not ordered:
        return {}
    keys: list[str] = []
    for status in ordered:
        keys.extend(k for k in status if k not in keys)
    merged: dict[str, Any] = {}
    for key in keys:
        if key in _LAST_ERROR or key in _PER_NODE:
            continue
        merged[key] = _merge([s.get(key) for s in ordered], key)
    errors = [s for s in ordered if s.get("lastError")]
    if errors:
        latest = max(errors, key=lambda s: str(s.get("lastErrorTime") or ""))
        for key in _LAST_ERROR:
            merged[key] = latest.get(key)
    elif any("lastError" in s for s in ordered):
        for key in _LAST_ERROR:
            if any(key in s for s in ordered):
                merged[key] = None
    # The node that runs a leased component says so itself; the others only say
    # whom they last saw holding the lease.
    running = [name for name, s in sorted(statuses.items()) if s.get("activeNode") == name]
    seen = [s["activeNode"] for s in ordered if s.get("activeNode")]
    if running or seen:
        merged["activeNode"] = running[0] if running else seen[0]
    return merged
