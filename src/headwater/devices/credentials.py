"""Device credentials: generated secrets, chosen passwords, X.509 certificates.

How this works:

* A **generated secret** is 128 bits from :mod:`secrets`, shown once (as 22
  URL-safe base64 characters) and stored as its HMAC-SHA256 under the
  registry's key (:class:`SecretHasher`), compared in constant time. A slow
  KDF protects guessable passwords; 128 random bits cannot be guessed, so
  the cost of scrypt (tens of milliseconds and 16 MiB each) would buy
  nothing but a reconnect storm of 10,000 devices queued behind it. The key
  (32 random bytes) lives in its own state store bucket, so a copy of the
  ``devices`` bucket alone cannot be used to test candidate secrets.
* A **password** a person chose is stored as the password file stores it:
  scrypt (:func:`headwater.mqtt.auth.hash_password`), checked in a worker
  thread, because people choose guessable passwords.
* An **X.509** credential names a client certificate by its SHA-256
  fingerprint and/or its subject (RFC 4514). The TLS listener verified the
  chain (``tls.caFile`` with ``requireClientCert``); the registry says which
  device a verified certificate belongs to, as Hono does with a tenant's trust
  anchor and the certificate's subject.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from headwater.devices.model import Credential, InvalidDevice
from headwater.logs import Throttle
from headwater.mqtt.auth import AuthError, check_hash, hash_password, verify_password

__all__ = [
    "SECRET_BYTES",
    "CertificateInfo",
    "SecretHasher",
    "certificate_info",
    "credential_id",
    "generate_secret",
    "hash_chosen_password",
    "normalise_fingerprint",
    "normalise_subject",
    "verify_chosen_password",
]

log = logging.getLogger(__name__)

_uncheckable = Throttle(log)
"""Stored hashes that cannot be checked: a line a minute per hash, with a count."""

SECRET_BYTES: Final = 16
"""128 bits: what the issue (and NIST SP 800-63B for a generated secret) asks for."""

HMAC_KEY_BYTES: Final = 32

MIN_PASSWORD_LENGTH: Final = 8
"""A chosen password shorter than this is refused (NIST SP 800-63B's minimum)."""

MAX_PASSWORD_LENGTH: Final = 1024

_HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")


def generate_secret() -> str:
    """A new device secret: 128 random bits, URL-safe base64 without padding."""
    return secrets.token_urlsafe(SECRET_BYTES)


def credential_id() -> str:
    """A credential's id within its device: 8 hex digits."""
    return secrets.token_hex(4)


class SecretHasher:
    """HMAC-SHA256 of secrets under the registry's key (see the module docstring).

    RFC 2104 with the key's inner and outer pads hashed once, here: each MAC
    copies two SHA-256 states (about a microsecond). ``hmac.digest`` would
    compute the same but releases the GIL around OpenSSL's call, and a CONNECT
    that waits for the GIL behind a store's writer thread costs milliseconds.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the registry key is too short")
        if len(key) > 64:  # RFC 2104: a key longer than the block is hashed first
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    @staticmethod
    def new_key() -> bytes:
        return secrets.token_bytes(HMAC_KEY_BYTES)

    def _mac(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def hash(self, secret: str | bytes) -> str:
        return self._mac(secret.encode("utf-8") if isinstance(secret, str) else secret)

    def matches(self, secret: bytes, stored: str) -> bool:
        """Constant-time comparison of ``secret``'s hash with a stored one."""
        return hmac.compare_digest(self._mac(secret), stored)


def hash_chosen_password(password: str) -> str:
    """scrypt, as the password file; refuses passwords too short to mean anything."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidDevice(
            f"a password needs at least {MIN_PASSWORD_LENGTH} characters "
            "(or let the registry generate a secret: type `secret`)"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidDevice(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return hash_password(password)


def check_password_hash(text: str) -> str:
    """A ``$scrypt$`` hash given as it is (from a password file or an export).

    Read, never computed (:func:`~headwater.mqtt.auth.check_hash`): its form, its
    base64 and its parameters, the memory they need included, else every CONNECT
    would fail. Running scrypt here would cost tens of milliseconds on the event
    loop for each hash of an import, and raise OpenSSL's own ``ValueError`` for
    parameters too large.
    """
    try:
        check_hash(text)
    except AuthError as exc:
        raise InvalidDevice(
            f"password hash: {exc} (expected $scrypt$n=...,r=...,p=...$salt$key)"
        ) from exc
    return text


def verify_chosen_password(password: bytes, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` is the hash of (scrypt: in a worker thread).

    A stored hash that cannot be checked is a refusal, never an error: one
    written before :func:`check_password_hash` read hashes as it does (or by
    an older node), whose parameters OpenSSL refuses (its ``ValueError``).
    """
    try:
        return verify_password(password, stored)
    except ValueError as exc:  # AuthError (malformed) or OpenSSL's (memory limit exceeded)
        # A device retrying its CONNECT would write this line each time: once a
        # minute per stored hash, with a count.
        _uncheckable.warning(
            stored, "a stored device password hash cannot be checked (%s): refused", exc
        )
        return False


# -- X.509 ------------------------------------------------------------------------------------


def normalise_fingerprint(text: str) -> str:
    """``AB:CD:...``, ``abcd...`` or as openssl prints it (``SHA256 Fingerprint=AB:...``)
    -> 64 lower-case hex digits."""
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        value = value.removeprefix(prefix)
    value = value.replace(":", "")
    if not _HEX64.match(value):
        raise InvalidDevice(
            f"certificate fingerprint {text[:100]!r} is not a SHA-256 fingerprint "
            "(64 hex digits, colons allowed: `openssl x509 -noout -fingerprint -sha256`)"
        )
    return value


def normalise_subject(text: str) -> str:
    """A subject DN in RFC 4514 form, compared as written after trimming spaces around ``,``."""
    value = ",".join(part.strip() for part in _split_dn(text.strip()))
    if not value or "=" not in value:
        raise InvalidDevice(f"certificate subject {text[:100]!r} is not a DN like CN=dev-1,O=Acme")
    return value


def _split_dn(text: str) -> list[str]:
    """Split an RFC 4514 string at unescaped commas."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the registry needs from a certificate."""

    fingerprint: str
    subject: str
    common_name: str | None
    issuer: str
    certificate: x509.Certificate


def certificate_info(der: bytes) -> CertificateInfo:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidDevice(f"not an X.509 certificate: {exc}") from exc
    return _info(cert)


def _info(cert: x509.Certificate) -> CertificateInfo:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = names[0].value if names else None
    return CertificateInfo(
        cert.fingerprint(hashes.SHA256()).hex(),
        normalise_subject(cert.subject.rfc4514_string()) if len(cert.subject) else "",
        common if isinstance(common, str) else None,
        cert.issuer.rfc4514_string(),
        cert,
    )


def pem_certificate_info(pem: str) -> CertificateInfo:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidDevice(f"`certificate` is not a PEM X.509 certificate: {exc}") from exc
    return _info(cert)


def load_ca_certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"not PEM CA certificates: {exc}") from exc


def issued_by(cert: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    """Whether one of ``authorities`` signed ``cert`` directly (name and signature)."""
    for authority in authorities:
        try:
            cert.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def x509_credential(spec: Mapping[str, Any], cid: str, now: float) -> Credential:
    """An ``x509`` credential from ``fingerprint``, ``subject`` or a PEM ``certificate``."""
    fingerprint = spec.get("fingerprint")
    subject = spec.get("subject")
    pem = spec.get("certificate")
    if pem is not None:
        if not isinstance(pem, str):
            raise InvalidDevice("`certificate` must be a PEM string")
        info = pem_certificate_info(pem)
        fingerprint = fingerprint or info.fingerprint
        subject = subject or info.subject or None
    if fingerprint is None and subject is None:
        raise InvalidDevice("an x509 credential needs `fingerprint`, `subject` or `certificate`")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise InvalidDevice("`fingerprint` must be a string")
    if subject is not None and not isinstance(subject, str):
        raise InvalidDevice("`subject` must be a string")
    return Credential(
        cid,
        "x509",
        now,
        fingerprint=normalise_fingerprint(fingerprint) if fingerprint else None,
        subject=normalise_subject(subject) if subject else None,
    )
