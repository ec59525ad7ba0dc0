"""Resources applied through the admin API: kept in the state store, reloaded at start.

How this works: every resource the API accepts (``headwater apply``, POST/PUT
``/api/v1/resources``) is written to the state store's ``resources`` bucket
before it runs, under the key ``Kind/namespace/name``, as JSON: the document
as it was written (before ``${VAR}`` substitution, so a secret taken from the
environment is never stored; it is substituted again at each start), the file
name the client gave and its line. The store's revision of that key is the
resource's ``metadata.resourceVersion``. ``headwater delete`` removes the key.
At start, ``headwater up`` runs its files and everything the bucket holds.

Who owns what (:class:`Origin`). ``headwater up`` owns what its own files
define (``-f``, or its embedded defaults without ``-f``); the API owns what it
created. The API refuses, with 409 and the file and line to edit, to change
or delete a resource a file defines: that file is what runs again at the next
start and at the next ``--watch`` reload, so a change made beside it would
silently be undone then (kubelet's static pods follow the same rule: their
manifest files own them and the API shows them read-only). The other way
round a file wins: when a file starts to define a resource that was applied
through the API, the file's version runs and the stored copy is removed, with
a warning that says so. A stored resource that no longer loads (an
environment variable gone, a reference to a resource no longer defined) is
not started and is kept, with a warning; ``headwater delete`` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from headwater.resources import (
    ConfigError,
    Loaded,
    LoadResult,
    Problem,
    collect_text,
    load_document,
    reference_problems,
)
from headwater.runtime.reconciler import ApplyResult, Key, Reconciler
from headwater.state import Bucket, Entry, StateError, StateStore

log = logging.getLogger(__name__)


RESOURCES_BUCKET: Final = "resources"
"""The state store bucket that holds the resources applied through the API."""

EMBEDDED_DEFAULTS: Final = "<embedded defaults>"
"""The file name of ``headwater up``'s embedded defaults (used without ``-f``)."""

Source = Literal["file", "api"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a running resource came from."""

    source: Source
    file: str
    """The file that defines it; for the API, the name the client gave (``headwater
    apply -f`` sends its path), or ``request``."""
    line: int
    revision: int = 0
    """The state store's revision (``metadata.resourceVersion``); 0 for files."""
    applied: datetime | None = None
    """When the API accepted this version."""
    node: str | None = None
    """In a mesh, the node that stored this version (its file, or its API)."""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def describe(self) -> str:
        on = f" on node {self.node}" if self.node else ""
        if self.source == "api":
            return f"applied through the API{on} (from {self.where})"
        if self.file == EMBEDDED_DEFAULTS:
            return f"the embedded defaults of `headwater up`{on} (no -f)"
        return f"file {self.where}" + (f" of node {self.node}" if self.node else "")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "file": self.file, "line": self.line}
        if self.source == "api":
            out["resourceVersion"] = str(self.revision)
            out["applied"] = self.applied.isoformat() if self.applied else None
        if self.node is not None:
            out["node"] = self.node
        return out


class OwnedByFile(Exception):
    """The API may not change or delete a resource that ``headwater up``'s files define."""

    def __init__(self, key: Key, origin: Origin, action: str) -> None:
        self.key = key
        self.origin = origin
        kind, namespace, name = key
        if origin.file == EMBEDDED_DEFAULTS:
            fix = "run `headwater up -f` with files of your own to change it"
        else:
            fix = f"edit {origin.where} instead (`headwater up --watch` reloads it)"
        super().__init__(
            f"cannot {action} {kind} {namespace}/{name}: it is defined by "
            f"{origin.describe()}, which owns it; {fix}"
        )


def store_key(key: Key) -> str:
    return "/".join(key)


def parse_store_key(text: str) -> Key | None:
    kind, namespace, name = [*text.split("/", 2), "", ""][:3]
    return (kind, namespace, name) if kind and namespace and name else None


def _without_server_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document without what a server writes (``status``, ``resourceVersion``):
    applying ``headwater get -o yaml`` output keeps what the user wrote."""
    out = {k: v for k, v in document.items() if k != "status"}
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and "resourceVersion" in metadata:
        out["metadata"] = {k: v for k, v in metadata.items() if k != "resourceVersion"}
    return out


@dataclass(frozen=True, slots=True)
class Stored:
    """A resource as the bucket keeps it, loaded again (or the reason it no longer loads)."""

    key: Key
    origin: Origin
    loaded: Loaded | None
    problem: str | None = None


class ResourceStore:
    """The ``resources`` bucket, in resources (see the module docstring).

    ``node`` (in a mesh) is recorded with every version this node stores; a
    mesh also stores the resources of ``headwater up``'s files here
    (``source="file"``, see :mod:`headwater.cluster.resources`).
    """

    def __init__(self, bucket: Bucket, node: str | None = None) -> None:
        self.bucket = bucket
        self.node = node

    @staticmethod
    def _origin(entry: Entry, value: Mapping[str, Any]) -> Origin:
        file = value.get("file")
        line = value.get("line")
        node = value.get("node")
        return Origin(
            "file" if value.get("source") == "file" else "api",
            file if isinstance(file, str) else "request",
            line if isinstance(line, int) else 0,
            entry.revision,
            entry.updated,
            node if isinstance(node, str) else None,
        )

    def read(self, key: Key, entry: Entry) -> Stored:
        """One stored resource, validated again (with today's environment)."""
        try:
            value = orjson.loads(entry.value)
            document = value["document"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            origin = Origin("api", "request", 0, entry.revision, entry.updated)
            return Stored(key, origin, None, "the stored value is not readable")
        origin = self._origin(entry, value)
        try:
            loaded = load_document(document, origin.file, origin.line)
        except ConfigError as exc:
            return Stored(key, origin, None, "; ".join(str(p) for p in exc.problems))
        if loaded.resource.key != key:
            named = "/".join(loaded.resource.key)
            return Stored(key, origin, None, f"the stored document is {named}")
        return Stored(key, origin, loaded)

    async def load(self) -> list[Stored]:
        """Every stored resource, validated again (with today's environment)."""
        out: list[Stored] = []
        for text in await self.bucket.keys():
            key = parse_store_key(text)
            entry = await self.bucket.get(text)
            if key is None or entry is None:
                continue
            out.append(self.read(key, entry))
        return out

    async def get(self, key: Key) -> Entry | None:
        return await self.bucket.get(store_key(key))

    async def save(
        self, item: Loaded, expected_revision: int | None = None, *, source: Source = "api"
    ) -> Origin:
        """Keep ``item`` (compare-and-set on ``expected_revision`` when given).

        The same document from the same file again writes nothing (its
        revision stays), as re-applying an unchanged manifest should.
        """
        document = _without_server_fields(item.document or {})
        fields: dict[str, Any] = {"document": document, "file": item.file, "line": item.line}
        if source != "api":
            fields["source"] = source
        if self.node is not None:
            fields["node"] = self.node
        value = orjson.dumps(fields)
        key = store_key(item.resource.key)
        current = await self.bucket.get(key)
        if current is not None and current.value == value and expected_revision is None:
            return Origin(
                source, item.file, item.line, current.revision, current.updated, self.node
            )
        if expected_revision is None:
            revision = await self.bucket.put(key, value)
        else:
            revision = await self.bucket.update(key, value, expected_revision)
        entry = await self.bucket.get(key)
        applied = entry.updated if entry is not None and entry.revision == revision else None
        return Origin(source, item.file, item.line, revision, applied, self.node)

    async def restore(self, key: Key, previous: Entry | None) -> None:
        """Put back what ``key`` held before a change that could not be completed."""
        if previous is None:
            await self.bucket.delete(store_key(key))
        else:
            await self.bucket.put(store_key(key), previous.value)

    async def remove(self, keys: Iterable[Key]) -> None:
        for key in keys:
            await self.bucket.delete(store_key(key))


def set_aside_unresolved(
    candidates: dict[Key, Stored], present: set[Key], skipped: dict[Key, Stored]
) -> None:
    """Move from ``candidates`` to ``skipped`` the stored resources that do not load or
    whose references resolve neither among ``present`` nor among the other candidates."""
    for key, s in list(candidates.items()):
        if s.loaded is None:
            skipped[key] = candidates.pop(key)
    # Leaving one out may break another's reference: until nothing changes.
    while True:
        known = present | candidates.keys()
        broken = {
            key: problems
            for key, s in candidates.items()
            if s.loaded is not None and (problems := reference_problems([s.loaded], present=known))
        }
        if not broken:
            return
        for key, problems in broken.items():
            s = candidates.pop(key)
            skipped[key] = replace(s, problem="; ".join(str(p) for p in problems))


def warn_skipped(skipped: Mapping[Key, Stored]) -> None:
    for key, s in skipped.items():
        log.warning(
            "not starting %s %s/%s (%s): %s; it is kept, and `headwater delete %s %s -n %s` "
            "removes it",
            *key,
            s.origin.describe(),
            s.problem,
            key[0].lower(),
            key[2],
            key[1],
        )


def _as_applied(item: Loaded) -> Loaded:
    """``item`` without what a server writes, so that a re-applied ``get -o yaml`` is unchanged."""
    resource = item.resource
    if resource.status is None and resource.metadata.resource_version is None:
        return item
    metadata = resource.metadata.model_copy(update={"resource_version": None})
    clean = resource.model_copy(update={"status": None, "metadata": metadata})
    return replace(item, resource=clean)


def _resource_version(item: Loaded) -> int | None:
    """The ``metadata.resourceVersion`` a PUT carries: the revision it was read at."""
    text = item.resource.metadata.resource_version
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise ConfigError(
            [
                Problem(
                    item.file,
                    item.line,
                    f"{text!r} is not a resourceVersion this Headwater gave out",
                    item.resource.kind,
                    item.resource.name,
                    "metadata.resourceVersion",
                )
            ]
        )
    return int(text)


class Resources:
    """The desired state and where each part came from (see the module docstring).

    ``start`` and ``reload`` take ``headwater up``'s files; ``apply_text``,
    ``update_text`` and ``delete`` are the admin API's, checked against
    ownership and kept in the state store. One lock orders them all.
    """

    def __init__(self, reconciler: Reconciler, state: StateStore, node: str | None = None) -> None:
        self.reconciler = reconciler
        self.state = state
        self.node = node
        self.origins: dict[Key, Origin] = {}
        self.skipped: dict[Key, Stored] = {}
        """Resources in the store that did not load at start (kept; deletable)."""
        self._store: ResourceStore | None = None
        self._lock = asyncio.Lock()

    async def store(self) -> ResourceStore:
        if self._store is None:
            self._store = ResourceStore(await self.state.bucket(RESOURCES_BUCKET), self.node)
        return self._store

    def origin(self, key: Key) -> Origin | None:
        return self.origins.get(key)

    async def settled(self) -> None:
        """Return once no change is being applied (in a mesh, one followed from
        another node may be starting a component right now)."""
        async with self._lock:
            pass

    async def close(self) -> None:
        """Stop following the store (a mesh's resources do; these have nothing to stop)."""

    def _forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.origins.pop(key, None)

    # -- headwater up's files ------------------------------------------------------

    async def apply_files(self, loaded: Sequence[Loaded]) -> ApplyResult:
        """Apply resources the process itself owns (files), without the API's checks."""
        async with self._lock:
            result = await self.reconciler.apply(loaded)
            self.origins.update({i.resource.key: Origin("file", i.file, i.line) for i in loaded})
            return result

    async def start(self, files: LoadResult) -> ApplyResult:
        """Run ``headwater up``'s files and the resources applied through the API before.

        Raises :class:`ConfigError` with every problem of the files (their own
        and their references) before anything starts.
        """
        async with self._lock:
            store = await self.store()
            stored = await store.load()
            owned = {item.resource.key for item in files.loaded} | files.invalid
            taken = [s for s in stored if s.key in owned]
            candidates = {s.key: s for s in stored if s.key not in owned}
            set_aside_unresolved(candidates, owned, self.skipped)
            kept = [s.loaded for s in candidates.values() if s.loaded is not None]
            files.check_references(kept)
            loaded = files.result()

            async def commit() -> None:
                await store.remove(s.key for s in taken)

            result = await self.reconciler.apply([*loaded, *kept], commit=commit)
            self.origins.update({i.resource.key: Origin("file", i.file, i.line) for i in loaded})
            self.origins.update({key: s.origin for key, s in candidates.items()})
        for s in taken:
            log.warning(
                "%s %s/%s, applied through the API, is now defined by %s: "
                "the file's version runs and the applied copy is removed",
                *s.key,
                self.origins[s.key].describe(),
            )
        warn_skipped(self.skipped)
        for item in [*loaded, *kept]:
            for warning in item.warnings:
                log.warning("%s", warning)
        return result

    async def reload(self, files: LoadResult) -> ApplyResult:
        """Make the files the desired state again (``--watch``); what the API applied stays."""
        async with self._lock:
            store = await self.store()
            owned = {item.resource.key for item in files.loaded} | files.invalid
            applied = {k for k, o in self.origins.items() if o.source == "api"}
            taken = applied & owned
            keep = applied - taken
            files.check_references([i for i in self.reconciler.loaded() if i.resource.key in keep])
            loaded = files.result()

            async def commit() -> None:
                await store.remove(taken)

            result = await self.reconciler.replace(loaded, keep=keep, commit=commit)
            self._forget(result.deleted)
            self.origins.update({i.resource.key: Origin("file", i.file, i.line) for i in loaded})
        for key in sorted(taken):
            log.warning(
                "%s %s/%s, applied through the API, is now defined by %s: "
                "the file's version runs and the applied copy is removed",
                *key,
                self.origins[key].describe(),
            )
        for item in loaded:
            for warning in item.warnings:
                log.warning("%s", warning)
        return result

    # -- the admin API -------------------------------------------------------------

    def _check_owner(self, keys: Iterable[Key], action: str) -> None:
        for key in keys:
            origin = self.origins.get(key)
            if origin is not None and origin.source == "file":
                raise OwnedByFile(key, origin, action)

    async def _apply(self, loaded: list[Loaded], expected: Mapping[Key, int]) -> ApplyResult:
        self._check_owner((i.resource.key for i in loaded), "change")
        store = await self.store()
        saved: dict[Key, Origin] = {}

        async def commit() -> None:
            previous: dict[Key, Entry | None] = {}
            try:
                for item in loaded:
                    key = item.resource.key
                    previous[key] = await store.get(key)
                    saved[key] = await store.save(item, expected.get(key))
            except BaseException:
                # All or nothing: put back what was already written.
                for key in saved:
                    with contextlib.suppress(StateError):
                        await store.restore(key, previous[key])
                saved.clear()
                raise

        result = await self.reconciler.apply(loaded, commit=commit)
        self.origins.update(saved)
        for key in saved:
            self.skipped.pop(key, None)
        result.warnings.extend(w for item in loaded for w in item.warnings)
        return result

    async def apply_text(self, text: str, file: str) -> ApplyResult:
        """``headwater apply``: create or update every resource of ``text`` (last write wins)."""
        async with self._lock:
            found = collect_text(text, file)
            if not found.loaded and not found.problems:
                raise ConfigError([Problem(file, None, "no resources in the request")])
            found.check_references(self.reconciler.loaded())
            return await self._apply([_as_applied(i) for i in found.result()], {})

    async def update_text(self, text: str, file: str, key: Key) -> ApplyResult:
        """Replace one resource (PUT); with ``metadata.resourceVersion``, only if it is current."""
        async with self._lock:
            found = collect_text(text, file)
            keys = [i.resource.key for i in found.loaded]
            if not found.problems and keys != [key]:
                named = ", ".join("/".join(k) for k in keys) or "no resource"
                raise ConfigError(
                    [Problem(file, None, f"the body must be {'/'.join(key)} alone, not {named}")]
                )
            if self.reconciler.get(key) is None and key not in self.skipped:
                raise KeyError(f"{key[0]} {key[1]}/{key[2]}")
            found.check_references(self.reconciler.loaded())
            [item] = found.result()
            expected = _resource_version(item)
            return await self._apply(
                [_as_applied(item)], {key: expected} if expected is not None else {}
            )

    async def delete(self, keys: Sequence[Key]) -> ApplyResult:
        """``headwater delete``: stop and forget resources the API applied."""
        async with self._lock:
            self._check_owner(keys, "delete")
            running = [k for k in keys if self.reconciler.get(k) is not None]
            stored_only = [k for k in keys if k not in running and k in self.skipped]
            missing = sorted(set(keys) - set(running) - set(stored_only))
            if missing:
                raise KeyError(", ".join(f"{k[0]} {k[1]}/{k[2]}" for k in missing))
            store = await self.store()

            async def commit() -> None:
                await store.remove(running)

            if running:
                result = await self.reconciler.delete(running, commit=commit)
            else:
                result = ApplyResult([], [], [], [])
            await store.remove(stored_only)
            for key in stored_only:
                del self.skipped[key]
                result.deleted.append(key)
            self._forget(result.deleted)
            return result
