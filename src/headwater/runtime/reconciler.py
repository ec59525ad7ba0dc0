"""Reconcile desired resources into running components.

How this works: the desired state is a map from resource key (kind, namespace,
name) to a validated resource. ``apply`` merges resources into it and
``delete`` removes them; ``replace`` makes a set of files the whole desired
state (hot reload). After each change the reconciler walks the kinds in
the order of their stages (each kind's stage is given with its builder:
things that receive events before things that send them),
creates components for new resources, asks existing ones to ``update`` in
place (a Trigger keeps its cursor when only its filter changes) and recreates
those that cannot (or fail to: nothing stays half updated), with the Triggers
and Subscriptions inside a Broker or Channel made anew, and stops the ones no
longer desired, senders first. A resource that failed to start is tried again
when it is given again (an apply, a reload), even unchanged. One
lock serialises changes, so concurrent API calls and file reloads never
interleave. A change may carry a ``commit`` callback: it runs under that lock
once the new desired state passed its checks and before anything changes
(the runtime persists API changes there), and if it raises, nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from headwater.log import LogError
from headwater.resources import (
    Broker,
    ConfigError,
    Loaded,
    Problem,
    Resource,
    Subscription,
    Trigger,
    check_references,
)
from headwater.runtime.capabilities import Removable
from headwater.state import StateError

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""A resource's (kind, namespace, name)."""

_REFUSALS = (OSError, ValueError, LogError, StateError)
"""What the environment refuses (a port in use, a file not there, the log or the
state store away): one line in the log; a traceback is for Headwater's own bugs."""


class Component(Protocol):
    """A running resource."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def update(self, resource: Resource) -> bool:
        """Take a changed spec in place; False means "recreate me"."""
        ...

    def status(self) -> dict[str, Any]: ...


Builder = Callable[[Resource], Awaitable[Component]]
Commit = Callable[[], Awaitable[None]]


@dataclass
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass
class Entry:
    loaded: Loaded
    component: Component | None = None
    ready: Condition = field(default_factory=lambda: Condition("Ready", "Unknown"))


@dataclass(frozen=True)
class ApplyResult:
    created: list[Key]
    updated: list[Key]
    unchanged: list[Key]
    deleted: list[Key]
    warnings: list[Problem] = field(default_factory=list)
    """Fields of what was applied that are accepted but ignored (see resources.loader)."""


class Reconciler:
    """Owns the desired state and the running components.

    ``stages`` ranks the kinds: lower ranks start first and stop last (a kind
    without a rank starts after all others).
    """

    def __init__(self, builders: Mapping[str, Builder], stages: Mapping[str, int]) -> None:
        self._builders = dict(builders)
        self._stages = dict(stages)
        self._unranked = max(self._stages.values(), default=0) + 1
        self._entries: dict[Key, Entry] = {}
        self._lock = asyncio.Lock()

    # -- reading --------------------------------------------------------------

    def resources(self, kind: str | None = None) -> list[Resource]:
        return [
            e.loaded.resource
            for key, e in sorted(self._entries.items())
            if kind is None or key[0] == kind
        ]

    def get(self, key: Key) -> Resource | None:
        entry = self._entries.get(key)
        return entry.loaded.resource if entry else None

    def loaded(self) -> list[Loaded]:
        """The desired state: every resource, with where it was loaded from."""
        return [e.loaded for _, e in sorted(self._entries.items())]

    def component(self, key: Key) -> Component | None:
        entry = self._entries.get(key)
        return entry.component if entry else None

    def status(self, key: Key) -> dict[str, Any]:
        entry = self._entries[key]
        out: dict[str, Any] = {"conditions": [entry.ready.as_dict()]}
        if entry.component is not None:
            out.update(entry.component.status())
        return out

    # -- changing -------------------------------------------------------------

    async def apply(self, loaded: Iterable[Loaded], *, commit: Commit | None = None) -> ApplyResult:
        """Merge resources into the desired state and reconcile."""
        async with self._lock:
            incoming = {item.resource.key: item for item in loaded}
            desired = {k: e.loaded for k, e in self._entries.items()} | incoming
            self._check(desired.values())
            if commit is not None:
                await commit()
            result = await self._reconcile(desired, retry=incoming.keys())
            result.unchanged[:] = [k for k in result.unchanged if k in incoming]
            return result

    async def replace(
        self, loaded: Iterable[Loaded], *, keep: Iterable[Key] = (), commit: Commit | None = None
    ) -> ApplyResult:
        """Make ``loaded`` the whole desired state (plus the ``keep`` keys)."""
        async with self._lock:
            kept = {k: self._entries[k].loaded for k in keep if k in self._entries}
            desired = kept | {item.resource.key: item for item in loaded}
            self._check(desired.values())
            if commit is not None:
                await commit()
            return await self._reconcile(desired, retry=desired.keys())

    async def delete(self, keys: Iterable[Key], *, commit: Commit | None = None) -> ApplyResult:
        async with self._lock:
            gone = set(keys)
            missing = gone - self._entries.keys()
            if missing:
                raise KeyError(", ".join(f"{k[0]} {k[1]}/{k[2]}" for k in sorted(missing)))
            desired = {k: e.loaded for k, e in self._entries.items() if k not in gone}
            self._check(desired.values())
            if commit is not None:
                await commit()
            return await self._reconcile(desired)

    async def close(self) -> None:
        """Stop every component, senders first."""
        async with self._lock:
            for key in sorted(self._entries, key=self._stop_order):
                await self._stop(key)
            self._entries.clear()

    def _check(self, desired: Iterable[Loaded]) -> None:
        items = list(desired)
        unknown = [i for i in items if i.resource.kind not in self._builders]
        if unknown:
            raise ConfigError(
                [
                    Problem(
                        i.file,
                        i.line,
                        "this kind is not supported by this runtime",
                        i.resource.kind,
                        i.resource.name,
                    )
                    for i in unknown
                ]
            )
        check_references(items)

    async def _reconcile(
        self, desired: dict[Key, Loaded], *, retry: Iterable[Key] = ()
    ) -> ApplyResult:
        """Make the running components what ``desired`` says. ``retry``: keys whose
        resource was given again (an apply, a reload): one that failed to start is
        started again even when unchanged.

        A Trigger or Subscription lives inside its Broker's or Channel's fan-out:
        when that one is started anew (recreated, or started after it had
        failed), its members are started again too, unchanged or not, else they
        would be left attached to the fan-out that stopped."""
        result = ApplyResult([], [], [], [])
        retried = set(retry)
        for key in sorted(self._entries.keys() - desired.keys(), key=self._stop_order):
            await self._stop(key, removed=True)
            del self._entries[key]
            result.deleted.append(key)
        started: set[Key] = set()  # components started anew in this pass
        for key in sorted(desired, key=self._start_order):
            item = desired[key]
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = Entry(item)
                await self._start(entry)
                started.add(key)
                result.created.append(key)
                continue
            # A member of a fan-out started anew joins that one, changed or not.
            parent = _parent(item.resource)
            restart = parent in started
            # One moved to another Broker or Channel leaves the old one's cursor behind
            # (Knative makes spec.broker immutable; here a move is a recreate).
            moved = _parent(entry.loaded.resource) != parent
            if entry.loaded.resource == item.resource:
                result.unchanged.append(key)
                restart = restart or (entry.component is None and key in retried)
            else:
                result.updated.append(key)
                restart = restart or not await self._update(key, entry, item.resource)
            entry.loaded = item
            if restart:
                await self._stop(key, removed=moved)
                await self._start(entry)
                started.add(key)
        return result

    async def _update(self, key: Key, entry: Entry, resource: Resource) -> bool:
        """Ask a running component to take a changed resource in place; False when it
        cannot (or failed midway: it is recreated then, so nothing is left half done)."""
        component = entry.component
        if component is None:
            return False
        try:
            if not await component.update(resource):
                return False
        except Exception as exc:
            if isinstance(exc, _REFUSALS):
                log.error("%s %s/%s could not be updated in place (%s): recreated", *key, exc)
            else:
                log.exception("%s %s/%s could not be updated in place: recreated", *key)
            return False
        entry.ready = Condition("Ready", "True")
        return True

    async def _start(self, entry: Entry) -> None:
        resource = entry.loaded.resource
        try:
            component = await self._builders[resource.kind](resource)
            await component.start()
        except Exception as exc:
            # The resource stays desired and reports why it is not running;
            # the rest of the mesh keeps going (docs/architecture.md, principle 6).
            # The environment's refusals (a port in use, a file that is not
            # there) are one line; a traceback is for Headwater's own bugs.
            what = (resource.kind, resource.namespace, resource.name)
            if isinstance(exc, _REFUSALS):
                log.error("%s %s/%s failed to start: %s", *what, exc)
            else:
                log.exception("%s %s/%s failed to start", *what)
            entry.component = None
            entry.ready = Condition("Ready", "False", type(exc).__name__, str(exc))
            return
        entry.component = component
        entry.ready = Condition("Ready", "True")

    def _start_order(self, key: Key) -> tuple[int, Key]:
        return (self._stages.get(key[0], self._unranked), key)

    def _stop_order(self, key: Key) -> tuple[int, Key]:
        rank, _ = self._start_order(key)
        return (-rank, key)

    async def _stop(self, key: Key, *, removed: bool = False) -> None:
        """Stop a component; ``removed``: its resource was deleted (or a Trigger or
        Subscription moved to another Broker or Channel), and a
        :class:`~headwater.runtime.capabilities.Removable` component (one that
        keeps something, as a Device its registry entry) is told, unlike at
        shutdown."""
        entry = self._entries[key]
        component, entry.component = entry.component, None
        if component is not None:
            try:
                await component.stop()
                if removed and isinstance(component, Removable):
                    await component.removed()
            except Exception:
                log.exception("%s %s/%s did not stop cleanly", *key)


def _parent(resource: Resource) -> Key | None:
    """The Broker or Channel whose fan-out a Trigger or Subscription runs in."""
    if isinstance(resource, Trigger):
        return (Broker.KIND, resource.namespace, resource.spec.broker)
    if isinstance(resource, Subscription):
        channel = resource.spec.channel
        return (channel.kind, resource.namespace, channel.name)
    return None
