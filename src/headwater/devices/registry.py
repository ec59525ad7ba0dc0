"""The device registry: devices and credentials in the state store, indexed in memory.

How this works: every device is one key of the state store's ``devices``
bucket, ``{namespace}/{id}``, its value the JSON of
:meth:`~headwater.devices.model.Device.to_json` (hashes included); the
registry's HMAC key is the one key of the ``device-keys`` bucket, created by
whichever node starts first (a compare-and-set, so two nodes agree on it).
At :meth:`Registry.start` every device is read into an index in memory (by
id, and by certificate fingerprint and subject), which is what a CONNECT
asks: authenticating a device costs a dictionary lookup and an HMAC, never
a read of the store. A watcher on the bucket keeps the index current with
what other writers change (another registry on the same store); this
registry's own writes update the index at once, before the call returns, so
a device registered by the API can connect the moment the answer arrives.

Writes are compare-and-set on the key's revision: ``create`` fails if the id
exists, ``update``/``delete`` with a ``revision`` fail with
:class:`~headwater.devices.model.DeviceConflict` if someone else wrote
first (the API's 409), and without one are retried on the fresh version.
Listeners (:meth:`Registry.on_change`) hear every change, local or not, with
the old and new device: the embedded broker uses it to cut off a device
that was disabled or deleted, or whose credential it used was removed.

A device a ``Device`` resource defines (``owner``) is changed by that
resource only: the API refuses with :class:`~headwater.devices.model.OwnedByResource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from headwater.devices.credentials import (
    SecretHasher,
    check_password_hash,
    credential_id,
    generate_secret,
    hash_chosen_password,
    verify_chosen_password,
    x509_credential,
)
from headwater.devices.model import (
    MAX_CREDENTIALS,
    Credential,
    Device,
    DeviceConflict,
    DeviceExists,
    DeviceNotFound,
    InvalidDevice,
    OwnedByResource,
    Selector,
    check_device_id,
    check_labels,
    check_namespace,
    device_key,
    parse_device_key,
)
from headwater.state import Bucket, Entry, RevisionMismatch, StateClosed, StateError, StateStore

__all__ = [
    "DEVICES_BUCKET",
    "KEYS_BUCKET",
    "ImportResult",
    "Listener",
    "Registry",
    "Secret",
    "follow",
]

log = logging.getLogger(__name__)

DEVICES_BUCKET: Final = "devices"
KEYS_BUCKET: Final = "device-keys"
HMAC_KEY: Final = "hmac-sha256"

UPDATE_ATTEMPTS: Final = 8
"""Read-modify-write attempts of an update without a revision before giving up
(each failed attempt means another writer changed the device in between)."""

IMPORT_CONCURRENCY: Final = 64
"""Creates of one import in flight at once: the store serialises writes, and a
few in flight keep its writer busy (about a third faster on SQLite than one at a time)."""

Listener = Callable[[Device | None, Device | None], None]
"""``listener(old, new)``: called for every change of a device (None: absent)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A generated secret, shown once: when the credential is created."""

    device: str
    credential: str
    secret: str

    def to_json(self) -> dict[str, str]:
        return {"device": self.device, "credential": self.credential, "secret": self.secret}


@dataclass(slots=True)
class ImportResult:
    created: list[Device] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    #: (device id, why) of the rows that could not be registered.
    failed: list[tuple[str, str]] = field(default_factory=list)


async def follow(bucket: Bucket, after: int, apply: Callable[[Entry], object], what: str) -> None:
    """``apply`` every change of ``bucket`` after revision ``after``, until the store closes."""
    try:
        changes = bucket.watch(after=after)
        try:
            async for entry in changes:
                apply(entry)
        finally:
            close = getattr(changes, "aclose", None)
            if close is not None:
                await close()
    except StateClosed:
        return
    except StateError as exc:
        log.error("%s: following the store stopped: %s", what, exc)


class Registry:
    """The registry (see the module docstring); ``await start()`` before use."""

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._bucket: Bucket | None = None
        self._hasher: SecretHasher | None = None
        self._devices: dict[str, dict[str, Device]] = {}
        #: Latest revision applied per key, deletes included (the watcher's guard).
        self._applied: dict[str, int] = {}
        self._by_fingerprint: dict[tuple[str, str], str] = {}
        self._by_subject: dict[tuple[str, str], str] = {}
        #: Certificates that writes in flight register: ``(namespace, fingerprint or
        #: subject) -> (device id, writes)`` (a fingerprint is hex, a subject has an
        #: ``=``: they never collide). See :meth:`_claim`.
        self._claims: dict[tuple[str, str], tuple[str, int]] = {}
        self._listeners: list[Listener] = []
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            keys = await self.state.bucket(KEYS_BUCKET)
            entry = await keys.get(HMAC_KEY)
            if entry is None:
                with contextlib.suppress(RevisionMismatch):  # another node's came first
                    await keys.create(HMAC_KEY, SecretHasher.new_key())
                entry = await keys.get(HMAC_KEY)
                assert entry is not None
            self._hasher = SecretHasher(entry.value)
            bucket = self._bucket = await self.state.bucket(DEVICES_BUCKET)
            revision = await bucket.revision()
            loaded = 0
            for key in await bucket.keys():
                stored = await bucket.get(key)
                if stored is not None and self._index(stored) is not None:
                    loaded += 1
            if loaded:
                log.info("device registry: %d devices", loaded)
            self._watcher = asyncio.create_task(self._watch(revision), name="devices:registry")
            self._started = True

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, after: int) -> None:
        assert self._bucket is not None
        await follow(self._bucket, after, self._index, "device registry")

    def _index(self, entry: Entry) -> Device | None:
        """Apply one stored version to the index (if newer than what it has)."""
        parsed = parse_device_key(entry.key)
        if parsed is None or self._applied.get(entry.key, 0) >= entry.revision:
            return None
        namespace, device_id = parsed
        if entry.deleted:
            self._apply(namespace, device_id, None, entry.revision)
            return None
        try:
            device = Device.from_json(
                namespace, device_id, orjson.loads(entry.value), entry.revision
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("device registry: %s is not readable (%s); it is ignored", entry.key, exc)
            return None
        self._apply(namespace, device_id, device, entry.revision)
        return device

    def _apply(self, namespace: str, device_id: str, device: Device | None, revision: int) -> None:
        key = device_key(namespace, device_id)
        if self._applied.get(key, 0) >= revision:
            return
        self._applied[key] = revision
        devices = self._devices.setdefault(namespace, {})
        old = devices.get(device_id)
        if old is not None:
            for credential in old.credentials:
                for index, value in (
                    (self._by_fingerprint, credential.fingerprint),
                    (self._by_subject, credential.subject),
                ):
                    # Only if it is this device's: two nodes that registered one
                    # certificate at once both wrote it, and the other device keeps it.
                    if value and index.get((namespace, value)) == device_id:
                        del index[(namespace, value)]
        if device is None:
            devices.pop(device_id, None)
        else:
            devices[device_id] = device
            for credential in device.credentials:
                if credential.fingerprint:
                    self._by_fingerprint[(namespace, credential.fingerprint)] = device_id
                if credential.subject:
                    self._by_subject[(namespace, credential.subject)] = device_id
        for listener in self._listeners:
            try:
                listener(old, device)
            except Exception:
                log.exception("a device registry listener failed")

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(old, new)`` on every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def hasher(self) -> SecretHasher:
        if self._hasher is None:
            raise RuntimeError("the device registry is not started")
        return self._hasher

    def _store(self) -> Bucket:
        if self._bucket is None:
            raise RuntimeError("the device registry is not started")
        return self._bucket

    # -- reading (from the index) ------------------------------------------------------------

    def get(self, namespace: str, device_id: str) -> Device | None:
        return self._devices.get(namespace, {}).get(device_id)

    def require(self, namespace: str, device_id: str) -> Device:
        device = self.get(check_namespace(namespace), check_device_id(device_id))
        if device is None:
            raise DeviceNotFound(f"no device {device_id!r} in namespace {namespace!r}")
        return device

    def find(self, namespace: str | None = None, selector: Selector | None = None) -> list[Device]:
        """Devices sorted by namespace and id (all namespaces when ``namespace`` is None)."""
        spaces = [namespace] if namespace is not None else sorted(self._devices)
        out: list[Device] = []
        for space in spaces:
            devices = self._devices.get(space, {})
            for device_id in sorted(devices):
                device = devices[device_id]
                if selector is None or selector.matches(device.labels):
                    out.append(device)
        return out

    def count(self, namespace: str | None = None) -> int:
        if namespace is not None:
            return len(self._devices.get(namespace, {}))
        return sum(len(d) for d in self._devices.values())

    def by_certificate(
        self, namespace: str, fingerprint: str, subject: str | None
    ) -> Device | None:
        """The device one of whose x509 credentials names this certificate."""
        device_id = self._by_fingerprint.get((namespace, fingerprint))
        if device_id is None and subject:
            device_id = self._by_subject.get((namespace, subject))
        return self.get(namespace, device_id) if device_id is not None else None

    # -- authentication ---------------------------------------------------------------------

    def check_secret(self, device: Device, secret: bytes) -> Credential | None:
        """The generated-secret credential ``secret`` is, if any (HMAC, constant time)."""
        hasher = self.hasher
        found = None
        for credential in device.credentials:
            # Every secret is compared (no early exit), so the time does not say which.
            if (
                credential.type == "secret"
                and credential.hash is not None
                and hasher.matches(secret, credential.hash)
            ):
                found = credential
        return found

    async def check_password(self, device: Device, password: bytes) -> Credential | None:
        """A chosen password (scrypt, in a worker thread: tens of milliseconds)."""
        chosen = [c for c in device.credentials if c.type == "password" and c.hash is not None]
        if not chosen:
            return None

        def check() -> Credential | None:
            for credential in chosen:
                assert credential.hash is not None
                if verify_chosen_password(password, credential.hash):
                    return credential
            return None

        return await asyncio.to_thread(check)

    # -- writing ---------------------------------------------------------------------------------

    async def _credentials(
        self, device_id: str, specs: Iterable[Mapping[str, Any]], now: float, taken: set[str]
    ) -> tuple[list[Credential], list[Secret]]:
        credentials: list[Credential] = []
        shown: list[Secret] = []
        for spec in specs:
            if not isinstance(spec, Mapping):
                raise InvalidDevice("a credential is an object with a `type`")
            kind = spec.get("type")
            allowed = {"type"}
            cid = credential_id()
            while cid in taken:
                cid = credential_id()
            taken.add(cid)
            if kind == "secret":
                secret = generate_secret()
                credentials.append(Credential(cid, "secret", now, hash=self.hasher.hash(secret)))
                shown.append(Secret(device_id, cid, secret))
            elif kind == "password":
                allowed |= {"password", "hash"}
                password, hashed = spec.get("password"), spec.get("hash")
                if (password is None) == (hashed is None):
                    raise InvalidDevice("a password credential needs `password` or `hash` (one)")
                if password is not None:
                    if not isinstance(password, str):
                        raise InvalidDevice("`password` must be a string")
                    hashed = await asyncio.to_thread(hash_chosen_password, password)
                elif not isinstance(hashed, str):
                    raise InvalidDevice("`hash` must be a string")
                else:
                    hashed = check_password_hash(hashed)
                credentials.append(Credential(cid, "password", now, hash=hashed))
            elif kind == "x509":
                allowed |= {"fingerprint", "subject", "certificate"}
                credentials.append(x509_credential(spec, cid, now))
            else:
                raise InvalidDevice(
                    f"credential type {str(kind)[:40]!r} is not one of secret, password, x509"
                )
            unknown = set(spec) - allowed
            if unknown:
                raise InvalidDevice(
                    f"unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                    f"in a {kind} credential"
                )
        return credentials, shown

    def _check_certificates(
        self, namespace: str, device_id: str, credentials: Iterable[Credential]
    ) -> None:
        for credential in credentials:
            for index, value in (
                (self._by_fingerprint, credential.fingerprint),
                (self._by_subject, credential.subject),
            ):
                if value is None:
                    continue
                holder = index.get((namespace, value))
                if holder is not None and holder != device_id:
                    raise DeviceExists(
                        f"certificate {value[:80]} is a credential of device {holder!r} already"
                    )
                claimed, _ = self._claims.get((namespace, value), (device_id, 0))
                if claimed != device_id:
                    raise DeviceExists(
                        f"certificate {value[:80]} is a credential of device {claimed!r} "
                        "(being registered)"
                    )

    @contextlib.contextmanager
    def _claim(
        self, namespace: str, device_id: str, credentials: Iterable[Credential]
    ) -> Iterator[None]:
        """Check that no other device holds or is registering these certificates, and
        hold them for ``device_id`` until the block ends: the write applied to the
        index, or failed.

        The index shows what is written; a write awaits the store. Checked and
        claimed with no await in between, a second write at once finds the
        certificate taken, as it would once the first was applied (and an import
        runs its creates at once). Only this registry's writes claim: two nodes
        may still both register one certificate (see :meth:`_apply`).
        """
        self._check_certificates(namespace, device_id, credentials)
        keys = {
            (namespace, value)
            for credential in credentials
            for value in (credential.fingerprint, credential.subject)
            if value is not None
        }
        for key in keys:
            _, writes = self._claims.get(key, (device_id, 0))
            self._claims[key] = (device_id, writes + 1)
        try:
            yield
        finally:
            for key in keys:
                _, writes = self._claims[key]
                if writes == 1:
                    del self._claims[key]
                else:
                    self._claims[key] = (device_id, writes - 1)

    async def create(
        self,
        namespace: str,
        device_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        enabled: bool = True,
        credentials: Sequence[Mapping[str, Any]] | None = None,
        owner: str | None = None,
    ) -> tuple[Device, list[Secret]]:
        """Register a device; with no ``credentials``, one generated secret (shown once)."""
        namespace = check_namespace(namespace)
        device_id = check_device_id(device_id)
        label_map = check_labels(labels)
        specs = [{"type": "secret"}] if credentials is None else list(credentials)
        if len(specs) > MAX_CREDENTIALS:
            raise InvalidDevice(f"{len(specs)} credentials: at most {MAX_CREDENTIALS} per device")
        if self.get(namespace, device_id) is not None:
            raise DeviceExists(f"device {device_id!r} exists in namespace {namespace!r}")
        now = self.clock()
        creds, shown = await self._credentials(device_id, specs, now, set())
        device = Device(
            namespace, device_id, label_map, bool(enabled), tuple(creds), now, now, owner
        )
        with self._claim(namespace, device_id, creds):
            try:
                revision = await self._store().create(device.key, orjson.dumps(device.to_json()))
            except RevisionMismatch as exc:
                raise DeviceExists(
                    f"device {device_id!r} exists in namespace {namespace!r}"
                ) from exc
            device = device.evolve(revision=revision)
            self._apply(namespace, device_id, device, revision)
        return device, shown

    async def update(
        self,
        namespace: str,
        device_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        enabled: bool | None = None,
        add: Sequence[Mapping[str, Any]] = (),
        remove: Sequence[str] = (),
        replace_secrets: bool = False,
        revision: int | None = None,
        owner: str | None = None,
        as_owner: bool = False,
    ) -> tuple[Device, list[Secret]]:
        """Change labels (replaced whole), the enabled flag, or credentials.

        ``replace_secrets`` removes the generated secrets before ``add``ing (a
        rotation that keeps nothing old). ``revision``: only if the device is
        still at it (else :class:`DeviceConflict`). ``as_owner``: the Device
        resource that owns the device is making the change.
        """
        namespace = check_namespace(namespace)
        device_id = check_device_id(device_id)
        label_map = check_labels(labels) if labels is not None else None
        bucket = self._store()
        key = device_key(namespace, device_id)
        for _ in range(UPDATE_ATTEMPTS):
            entry = await bucket.get(key)
            if entry is None:
                raise DeviceNotFound(f"no device {device_id!r} in namespace {namespace!r}")
            current = Device.from_json(
                namespace, device_id, orjson.loads(entry.value), entry.revision
            )
            if revision is not None and revision != current.revision:
                raise DeviceConflict(
                    f"device {device_id!r} is at revision {current.revision}, not {revision}: "
                    "it was changed meanwhile; read it again",
                    current.revision,
                )
            if current.owner is not None and not as_owner:
                raise OwnedByResource(device_id, current.owner, "change")
            kept = [
                c
                for c in current.credentials
                if c.id not in remove and not (replace_secrets and c.type == "secret")
            ]
            missing = set(remove) - {c.id for c in current.credentials}
            if missing:
                raise DeviceNotFound(
                    f"device {device_id!r} has no credential {', '.join(sorted(missing))}"
                )
            now = self.clock()
            added, shown = await self._credentials(
                device_id, add, now, {c.id for c in current.credentials}
            )
            credentials = (*kept, *added)
            if len(credentials) > MAX_CREDENTIALS:
                raise InvalidDevice(
                    f"{len(credentials)} credentials: at most {MAX_CREDENTIALS} per device "
                    "(remove one first)"
                )
            changed = current.evolve(
                labels=label_map if label_map is not None else current.labels,
                enabled=current.enabled if enabled is None else bool(enabled),
                credentials=tuple(credentials),
                updated=now,
                owner=owner if as_owner else current.owner,
            )
            with self._claim(namespace, device_id, added):
                try:
                    new_revision = await bucket.update(
                        key, orjson.dumps(changed.to_json()), current.revision
                    )
                except RevisionMismatch as exc:
                    if revision is not None:
                        raise DeviceConflict(
                            f"device {device_id!r} was changed meanwhile; read it again",
                            exc.actual,
                        ) from exc
                    continue
                changed = changed.evolve(revision=new_revision)
                self._apply(namespace, device_id, changed, new_revision)
            return changed, shown
        raise DeviceConflict(f"device {device_id!r} keeps changing; try again", 0)

    async def delete(
        self, namespace: str, device_id: str, *, revision: int | None = None, as_owner: bool = False
    ) -> Device:
        device = self.require(namespace, device_id)
        if device.owner is not None and not as_owner:
            raise OwnedByResource(device_id, device.owner, "delete")
        try:
            deleted = await self._store().delete(device.key, revision)
        except RevisionMismatch as exc:
            raise DeviceConflict(
                f"device {device_id!r} is at revision {exc.actual}, not {revision}: "
                "it was changed meanwhile; read it again",
                exc.actual,
            ) from exc
        if deleted is not None:
            self._apply(namespace, device_id, None, deleted)
        return device

    async def put_owned(
        self,
        namespace: str,
        device_id: str,
        *,
        labels: Mapping[str, str],
        enabled: bool,
        credentials: Sequence[Credential],
        owner: str,
    ) -> Device:
        """What a Device resource defines, written as it is (it owns the device).

        Credentials are given complete (hashes computed by the caller, which
        keeps a password's hash when the password did not change).
        """
        namespace = check_namespace(namespace)
        device_id = check_device_id(device_id)
        label_map = check_labels(labels)
        key = device_key(namespace, device_id)
        bucket = self._store()
        with self._claim(namespace, device_id, credentials):
            for _ in range(UPDATE_ATTEMPTS):
                entry = await bucket.get(key)
                now = self.clock()
                created = now
                if entry is not None:
                    current = Device.from_json(
                        namespace, device_id, orjson.loads(entry.value), entry.revision
                    )
                    created = current.created
                    if current.owner is None:
                        log.warning(
                            "device %s/%s, registered through the API, is now defined by %s",
                            namespace,
                            device_id,
                            owner,
                        )
                device = Device(
                    namespace,
                    device_id,
                    label_map,
                    enabled,
                    tuple(credentials),
                    created,
                    now,
                    owner,
                )
                if (
                    entry is not None
                    and current.labels == device.labels
                    and current.enabled == device.enabled
                    and current.credentials == device.credentials
                    and current.owner == owner
                ):
                    return current  # unchanged: no write, the revision stays
                try:
                    revision = await bucket.update(
                        key, orjson.dumps(device.to_json()), entry.revision if entry else 0
                    )
                except RevisionMismatch:
                    continue
                device = device.evolve(revision=revision)
                self._apply(namespace, device_id, device, revision)
                return device
            raise DeviceConflict(f"device {device_id!r} keeps changing; try again", 0)

    async def build_credentials(
        self, device_id: str, specs: Sequence[Mapping[str, Any]], now: float
    ) -> list[Credential]:
        """Credentials from specs without generated secrets (a Device resource's)."""
        for spec in specs:
            if isinstance(spec, Mapping) and spec.get("type") == "secret":
                raise InvalidDevice(
                    "a Device resource cannot have a generated secret (it is shown once, to "
                    "whoever asks the API for it): use `headwater device update --add-secret`"
                )
        credentials, _ = await self._credentials(device_id, specs, now, set())
        return credentials

    async def import_devices(
        self, namespace: str, rows: Sequence[Mapping[str, Any]]
    ) -> ImportResult:
        """Register many devices (see :mod:`headwater.devices.imports` for the rows).

        Every row was validated by the caller; ids that exist are reported in
        ``existing`` and left as they are, and a row the registry refuses (a
        certificate another device holds) in ``failed``. A store failure stops
        the import (what was created stays created) and raises.
        """
        namespace = check_namespace(namespace)
        result = ImportResult()
        semaphore = asyncio.Semaphore(IMPORT_CONCURRENCY)

        async def one(row: Mapping[str, Any]) -> None:
            device_id = row["id"]
            if self.get(namespace, device_id) is not None:
                result.existing.append(device_id)
                return
            async with semaphore:
                try:
                    device, shown = await self.create(
                        namespace,
                        device_id,
                        labels=row.get("labels"),
                        enabled=row.get("enabled", True),
                        credentials=row.get("credentials"),
                    )
                except DeviceExists as exc:
                    if self.get(namespace, device_id) is not None:
                        result.existing.append(device_id)  # registered meanwhile
                    else:
                        result.failed.append((device_id, str(exc)))
                    return
                except InvalidDevice as exc:
                    result.failed.append((device_id, str(exc)))
                    return
                result.created.append(device)
                result.secrets.extend(shown)

        try:
            async with asyncio.TaskGroup() as group:
                for row in rows:
                    group.create_task(one(row))
        except ExceptionGroup as failure:
            raise failure.exceptions[0] from None  # the store failed: say why, once
        result.created.sort(key=lambda d: d.id)
        result.secrets.sort(key=lambda s: s.device)
        result.existing.sort()
        result.failed.sort()
        return result
