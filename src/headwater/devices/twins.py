"""Twins: a device's desired and reported state, each versioned, and the delta between them.

How this works: a :class:`Twin` holds two JSON objects, ``desired`` (what the
API, the CLI or an event says the device should be) and ``reported`` (what
the device says it is), each with a version that counts its changes. Both
are changed by JSON Merge Patch (RFC 7386: a member set to ``null`` is
removed), or the desired state is replaced whole. The *delta* is what
desired asks for that reported does not show yet (AWS IoT's shadow delta):
every desired member whose value differs from the reported one, nested
objects compared member by member. Values compare as JSON does: ``true`` is
not ``1``, ``1`` is ``1.0``.

A twin is one key of the state store's ``device-twins`` bucket
(``{namespace}/{id}``). A change is a read-modify-write on the key's
revision (compare-and-set, retried when another writer came first); a
change of the desired state that names the ``version`` it was made
against is refused with :class:`~headwater.devices.model.DeviceConflict`
(the API's 409) when the desired state moved on since, so that of two
people editing at once the second is told instead of silently overwriting.

Limits, as Azure IoT Hub sets them for its twins: each of desired and
reported is at most :data:`MAX_STATE_BYTES` of JSON, nested at most
:data:`MAX_DEPTH` levels; more is refused (:class:`TwinTooLarge`, 413).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import orjson

from headwater.devices.model import DeviceConflict, InvalidDevice, device_key, parse_device_key
from headwater.state import Bucket, RevisionMismatch, StateStore

__all__ = [
    "MAX_DEPTH",
    "MAX_STATE_BYTES",
    "TWINS_BUCKET",
    "InvalidTwin",
    "Twin",
    "TwinTooLarge",
    "Twins",
    "delta",
    "merge_patch",
]

TWINS_BUCKET: Final = "device-twins"

MAX_STATE_BYTES: Final = 32 * 1024
"""Bytes of JSON in a desired or a reported state at most (Azure IoT Hub's limit
for each): a twin describes configuration, not telemetry history."""

MAX_DEPTH: Final = 10
"""Levels of nested objects and arrays at most (Azure IoT Hub's limit)."""

MAX_KEY_LENGTH: Final = 128

UPDATE_ATTEMPTS: Final = 16
"""Read-modify-write attempts before a change gives up (each failure means
another writer changed the twin in between)."""

Side = Literal["desired", "reported"]


class InvalidTwin(InvalidDevice):
    """A state that is not a JSON object, or has unusable members."""


class TwinTooLarge(InvalidTwin):
    """Over :data:`MAX_STATE_BYTES` or :data:`MAX_DEPTH`."""


def _same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers; 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON Merge Patch of an object with an object."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key)
            out[key] = merge_patch(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = value
    return out


def delta(desired: Mapping[str, Any], reported: Mapping[str, Any]) -> dict[str, Any]:
    """What ``desired`` asks for that ``reported`` does not show (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif key not in reported or not _same(want, have):
            out[key] = want
    return out


def _check_value(value: Any, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise TwinTooLarge(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, inner in value.items():
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
                raise InvalidTwin(
                    f"{where}: member names are 1..{MAX_KEY_LENGTH} characters, "
                    f"not {str(key)[:40]!r}"
                )
            _check_value(inner, depth + 1, f"{where}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _check_value(inner, depth + 1, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidTwin(f"{where}: {value} is not a JSON number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise InvalidTwin(f"{where}: {type(value).__name__} is not a JSON value")


def check_state(value: Any, side: str) -> dict[str, Any]:
    """A state (or a patch of one) as it may be stored: a JSON object within the limits."""
    if not isinstance(value, dict):
        raise InvalidTwin(f"the {side} state must be a JSON object, not {type(value).__name__}")
    _check_value(value, 1, side)
    size = len(orjson.dumps(value))
    if size > MAX_STATE_BYTES:
        raise TwinTooLarge(
            f"the {side} state would be {size} bytes of JSON, over the limit of {MAX_STATE_BYTES}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Twin:
    """A device's twin at one revision of the store."""

    namespace: str
    device: str
    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 0
    desired_updated: float | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    reported_version: int = 0
    reported_updated: float | None = None
    revision: int = 0

    def delta(self) -> dict[str, Any]:
        return delta(self.desired, self.reported)

    def _sides(self) -> dict[str, Any]:
        return {
            "desired": {
                "state": self.desired,
                "version": self.desired_version,
                "updated": self.desired_updated,
            },
            "reported": {
                "state": self.reported,
                "version": self.reported_version,
                "updated": self.reported_updated,
            },
        }

    def stored(self) -> bytes:
        return orjson.dumps(self._sides())

    @classmethod
    def load(cls, namespace: str, device: str, value: bytes, revision: int) -> Twin:
        doc = orjson.loads(value)
        desired, reported = doc.get("desired") or {}, doc.get("reported") or {}
        return cls(
            namespace,
            device,
            dict(desired.get("state") or {}),
            int(desired.get("version") or 0),
            desired.get("updated"),
            dict(reported.get("state") or {}),
            int(reported.get("version") or 0),
            reported.get("updated"),
            revision,
        )

    def to_json(self) -> dict[str, Any]:
        """What the API shows."""
        return {
            "device": self.device,
            "namespace": self.namespace,
            **self._sides(),
            "delta": self.delta(),
        }

    def delta_message(self) -> dict[str, Any]:
        """The retained ``devices/{id}/twin/delta`` document a device receives."""
        return {
            "version": self.desired_version,
            "state": self.delta(),
            "timestamp": self.desired_updated,
        }

    def document(self) -> dict[str, Any]:
        """The ``devices/{id}/twin/document`` a device gets when it asks (``twin/get``)."""
        return {
            "desired": {"state": self.desired, "version": self.desired_version},
            "reported": {"state": self.reported, "version": self.reported_version},
            "delta": self.delta(),
        }


@dataclass(frozen=True, slots=True)
class TwinChange:
    """A change that was made: the twin before and after it."""

    side: Side
    before: Twin
    after: Twin
    patch: dict[str, Any] | None
    """The merge patch applied (None when the desired state was replaced whole)."""

    @property
    def changed(self) -> bool:
        return self.before.revision != self.after.revision


class Twins:
    """Every twin, in the state store (see the module docstring)."""

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._bucket: Bucket | None = None

    async def start(self) -> None:
        if self._bucket is None:
            self._bucket = await self.state.bucket(TWINS_BUCKET)

    def _store(self) -> Bucket:
        if self._bucket is None:
            raise RuntimeError("twins are not started")
        return self._bucket

    async def get(self, namespace: str, device: str) -> Twin:
        entry = await self._store().get(device_key(namespace, device))
        if entry is None:
            return Twin(namespace, device)
        return Twin.load(namespace, device, entry.value, entry.revision)

    async def keys(self) -> list[tuple[str, str]]:
        return [p for p in map(parse_device_key, await self._store().keys()) if p is not None]

    async def all(self) -> Iterator[Twin]:
        twins = []
        for namespace, device in await self.keys():
            twins.append(await self.get(namespace, device))
        return iter(twins)

    async def set_desired(
        self,
        namespace: str,
        device: str,
        state: Any,
        *,
        merge: bool = True,
        version: int | None = None,
    ) -> TwinChange:
        """Merge-patch (or replace) the desired state; ``version``: only if still at it."""
        patch = check_state(state, "desired")

        def change(twin: Twin, now: float) -> Twin | None:
            if version is not None and version != twin.desired_version:
                raise DeviceConflict(
                    f"the desired state of {device!r} is at version {twin.desired_version}, not "
                    f"{version}: it was changed meanwhile; read it again",
                    twin.desired_version,
                )
            # Replacing is merging into nothing: a null member means absent either way.
            desired = merge_patch(twin.desired if merge else {}, patch)
            check_state(desired, "desired")
            if _same(desired, twin.desired):
                return None
            return Twin(
                namespace,
                device,
                desired,
                twin.desired_version + 1,
                now,
                twin.reported,
                twin.reported_version,
                twin.reported_updated,
            )

        return await self._change(namespace, device, "desired", change, patch if merge else None)

    async def report(self, namespace: str, device: str, patch: Any) -> TwinChange:
        """Merge-patch the reported state (from the device)."""
        checked = check_state(patch, "reported")

        def change(twin: Twin, now: float) -> Twin | None:
            reported = merge_patch(twin.reported, checked)
            check_state(reported, "reported")
            if _same(reported, twin.reported):
                return None
            return Twin(
                namespace,
                device,
                twin.desired,
                twin.desired_version,
                twin.desired_updated,
                reported,
                twin.reported_version + 1,
                now,
            )

        return await self._change(namespace, device, "reported", change, checked)

    async def _change(
        self,
        namespace: str,
        device: str,
        side: Side,
        change: Callable[[Twin, float], Twin | None],
        patch: dict[str, Any] | None,
    ) -> TwinChange:
        bucket = self._store()
        key = device_key(namespace, device)
        for _ in range(UPDATE_ATTEMPTS):
            before = await self.get(namespace, device)
            after = change(before, self.clock())
            if after is None:
                return TwinChange(side, before, before, patch)
            try:
                revision = await bucket.update(key, after.stored(), before.revision)
            except RevisionMismatch:
                continue
            return TwinChange(side, before, replace(after, revision=revision), patch)
        raise DeviceConflict(f"the twin of {device!r} keeps changing; try again", 0)

    async def delete(self, namespace: str, device: str) -> None:
        await self._store().delete(device_key(namespace, device))
