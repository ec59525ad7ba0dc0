"""Devices and their credentials as values: validated once, written down as JSON.

How this works: a :class:`Device` is a frozen record (namespace, id, labels,
enabled flag, credentials, created/updated times, the resource that owns it
if a ``Device`` YAML defines it, and the state store revision it was read
at). Every name a person or a device gives is checked here, once, with a
message that says what is allowed:

* a device id is 1..128 letters, digits, ``.``, ``_`` or ``-``, starting
  with a letter or digit and not ending with ``.``: it is one MQTT topic level
  (``devices/{id}/...``, so never ``/``, ``+`` or ``#``), a state store key
  and a URL path segment as it is, and the MQTT username of the device;
* a namespace (the tenant) is a Kubernetes name, as a resource's namespace;
* labels follow Kubernetes' rules (``[prefix/]name`` keys, values of at most
  63 characters) so that label selectors (``site=a,tier!=test``) read as
  users of Knative and kubectl expect.

A :class:`Credential` is one way a device may prove who it is; a device has
up to :data:`MAX_CREDENTIALS` so that one can be rotated while the other
still works. The hash of a secret or password is kept, never the secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_CREDENTIALS",
    "MAX_LABELS",
    "Credential",
    "CredentialType",
    "Device",
    "DeviceConflict",
    "DeviceError",
    "DeviceExists",
    "DeviceNotFound",
    "InvalidDevice",
    "OwnedByResource",
    "Selector",
    "check_device_id",
    "check_labels",
    "check_namespace",
    "device_key",
    "parse_device_key",
]

DEFAULT_NAMESPACE: Final = "default"

MAX_CREDENTIALS: Final = 8
"""Credentials per device at most: two or three during a rotation is the use;
eight leaves room for a device with a password, a secret and certificates,
and bounds the work of one CONNECT (each secret costs an HMAC)."""

MAX_LABELS: Final = 64
"""Labels per device at most (Kubernetes has no limit; a registry row should be small)."""

_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9_-])?\Z")
# A resource namespace (resources/models.py): a Kubernetes object name.
_NAMESPACE: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_LABEL_NAME: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_PREFIX: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_LABEL_VALUE: Final = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")

CredentialType = Literal["secret", "password", "x509"]


# -- errors ----------------------------------------------------------------------------


class DeviceError(Exception):
    """Base of the registry's errors; the message is fit for an API answer."""


class InvalidDevice(DeviceError, ValueError):
    """Input that can never be accepted as it is (an id, a label, a credential)."""


class DeviceNotFound(DeviceError, LookupError):
    """No such device (or command) in that namespace."""


class DeviceExists(DeviceError):
    """A device (or a certificate) with that name is registered already."""


class DeviceConflict(DeviceError):
    """Someone changed the device (or twin) since the revision the caller read."""

    def __init__(self, message: str, actual: int) -> None:
        super().__init__(message)
        self.actual = actual


class OwnedByResource(DeviceError):
    """A ``Device`` resource (a file, or ``headwater apply``) defines this device."""

    def __init__(self, device: str, owner: str, action: str) -> None:
        self.device = device
        self.owner = owner
        self.action = action
        super().__init__(f"device {device!r} is defined by {owner}: {action} it there")


# -- names -----------------------------------------------------------------------------


def check_device_id(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE_ID.match(value):
        shown = repr(value)[:80]
        raise InvalidDevice(
            f"device id {shown} is not valid: use 1..128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit and not ending with '.' (no '/', '+', '#' or "
            "spaces: a device id is one MQTT topic level)"
        )
    return value


def check_namespace(value: object) -> str:
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise InvalidDevice(
            f"namespace {repr(value)[:80]} is not valid: use lower-case letters, digits, '-' "
            "and '.', starting and ending with a letter or digit"
        )
    return value


def check_labels(value: object) -> dict[str, str]:
    """Kubernetes label rules: ``[prefix/]name`` keys, short values, at most MAX_LABELS."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidDevice("labels must be an object of names to strings")
    if len(value) > MAX_LABELS:
        raise InvalidDevice(f"{len(value)} labels: at most {MAX_LABELS} per device")
    out: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str):
            raise InvalidDevice(f"label name {key!r} is not a string")
        prefix, slash, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or (slash and not _LABEL_PREFIX.match(prefix)):
            raise InvalidDevice(
                f"label name {key[:80]!r} is not valid: [prefix/]name, the name 1..63 letters, "
                "digits, '-', '_' or '.' starting and ending with a letter or digit"
            )
        if not isinstance(text, str) or not _LABEL_VALUE.match(text):
            raise InvalidDevice(
                f"label {key}={str(text)[:80]!r}: a value is empty or 1..63 letters, digits, "
                "'-', '_' or '.' starting and ending with a letter or digit"
            )
        out[key] = text
    return out


def device_key(namespace: str, device_id: str) -> str:
    """The state store key of a device: ``{namespace}/{id}``."""
    return f"{namespace}/{device_id}"


def parse_device_key(key: str) -> tuple[str, str] | None:
    namespace, slash, device_id = key.partition("/")
    if not slash or not namespace or not device_id or "/" in device_id:
        return None
    return namespace, device_id


# -- label selectors ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """An equality-based label selector, as kubectl's ``-l``: ``a=b,c!=d,e,!f``."""

    equal: tuple[tuple[str, str], ...] = ()
    unequal: tuple[tuple[str, str], ...] = ()
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        equal: list[tuple[str, str]] = []
        unequal: list[tuple[str, str]] = []
        present: list[str] = []
        absent: list[str] = []
        for raw in text.split(","):
            part = raw.strip()
            if not part:
                continue
            if "!=" in part:
                key, _, value = part.partition("!=")
                unequal.append((key.strip(), value.strip()))
            elif "=" in part:
                key, _, value = part.partition("=")
                equal.append((key.strip().rstrip("="), value.strip().lstrip("=")))
            elif part.startswith("!"):
                absent.append(part[1:].strip())
            else:
                present.append(part)
        for key in [k for k, _ in equal + unequal] + present + absent:
            if not key:
                raise InvalidDevice(f"label selector {text!r}: a term has no label name")
        return cls(tuple(equal), tuple(unequal), tuple(present), tuple(absent))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (
            all(labels.get(k) == v for k, v in self.equal)
            and all(labels.get(k) != v for k, v in self.unequal)
            and all(k in labels for k in self.present)
            and all(k not in labels for k in self.absent)
        )


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """One way to authenticate: a generated secret, a password, or a certificate.

    ``hash`` is the HMAC-SHA256 of a secret (hex) or the scrypt hash of a
    password (``$scrypt$...``); an ``x509`` credential names the certificate by
    its SHA-256 ``fingerprint`` (lower-case hex of the DER) and/or its
    ``subject`` (RFC 4514, as ``openssl x509 -subject -nameopt RFC2253`` prints it).
    """

    id: str
    type: CredentialType
    created: float
    hash: str | None = None
    fingerprint: str | None = None
    subject: str | None = None

    def to_json(self, *, secrets: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "created": self.created}
        if self.hash is not None and secrets:
            out["hash"] = self.hash
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.subject is not None:
            out["subject"] = self.subject
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Credential:
        kind = doc["type"]
        if kind not in ("secret", "password", "x509"):
            raise ValueError(f"unknown credential type {kind!r}")
        return cls(
            str(doc["id"]),
            kind,
            float(doc.get("created", 0.0)),
            doc.get("hash"),
            doc.get("fingerprint"),
            doc.get("subject"),
        )


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device (see the module docstring)."""

    namespace: str
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    credentials: tuple[Credential, ...] = ()
    created: float = 0.0
    updated: float = 0.0
    #: ``Device/{namespace}/{name}`` when a Device resource defines it (the API may
    #: then not change it; the runtime knows where the resource comes from).
    owner: str | None = None
    #: The state store revision this version was written at (0: not stored yet).
    revision: int = 0

    @property
    def key(self) -> str:
        return device_key(self.namespace, self.id)

    @property
    def user(self) -> str:
        """Who owns the device's MQTT sessions (another user's session is never resumed)."""
        return f"device:{self.namespace}/{self.id}"

    def credential(self, credential_id: str) -> Credential | None:
        for credential in self.credentials:
            if credential.id == credential_id:
                return credential
        return None

    def evolve(self, **changes: Any) -> Device:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """What the state store keeps (with hashes; never shown by the API)."""
        out: dict[str, Any] = {
            "labels": dict(self.labels),
            "enabled": self.enabled,
            "credentials": [c.to_json() for c in self.credentials],
            "created": self.created,
            "updated": self.updated,
        }
        if self.owner is not None:
            out["owner"] = self.owner
        return out

    @classmethod
    def from_json(
        cls, namespace: str, device_id: str, doc: Mapping[str, Any], revision: int
    ) -> Device:
        return cls(
            namespace,
            device_id,
            dict(doc.get("labels") or {}),
            bool(doc.get("enabled", True)),
            tuple(Credential.from_json(c) for c in doc.get("credentials") or ()),
            float(doc.get("created", 0.0)),
            float(doc.get("updated", 0.0)),
            doc.get("owner"),
            revision,
        )

    def public_json(self) -> dict[str, Any]:
        """What the API shows: everything but the hashes."""
        out: dict[str, Any] = {
            "id": self.id,
            "namespace": self.namespace,
            "labels": dict(self.labels),
            "enabled": self.enabled,
            "credentials": [c.to_json(secrets=False) for c in self.credentials],
            "created": self.created,
            "updated": self.updated,
            "revision": self.revision,
        }
        if self.owner is not None:
            out["owner"] = {"resource": self.owner}
        return out
