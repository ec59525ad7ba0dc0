"""What a device may publish and subscribe to: ACL templates, and who it is at CONNECT.

How this works: an MqttBrokerSource with the registry turned on gives every
device the same :class:`~headwater.mqtt.auth.Acl`, built once from templates
in which ``{device}`` stands for the device's own id (``devices/{device}/#``):
the template becomes a rule with ``%u`` and the device's username is its id,
so one rule serves every device, without a line per device, and a device can
never name another's topics (an id holds no ``/``, ``+`` or ``#``). Whatever
the templates allow, a device may not publish on the topics Headwater itself
publishes to it (its commands, its twin's delta and document), so that no
device can forge its own commands or desired state.

:class:`RegistryAuthenticator` is the broker's
:class:`~headwater.mqtt.config.Authenticator` for one namespace of the
registry:

* a client certificate (verified by the TLS listener) that an x509
  credential names is that device; with auto-provisioning on, a certificate
  no device holds that a configured CA signed registers a new device (its id
  from the certificate's CN or SAN) on its first connect, as Hono does;
* a username that is a registered device id must come with one of its
  secrets (an HMAC, inline) or passwords (scrypt, in a thread);
* anything else is not the registry's business (the password file decides).

A known device with wrong credentials is refused with 0x86 Bad user name or
password; a disabled one with 0x87 Not authorized (after its credentials were
checked, so that the answer does not tell a stranger that it exists); a
client id other than the device id with 0x85 Client Identifier not valid: one
device is one MQTT session, so that presence, takeover and commands mean the
same thing (Azure IoT Hub asks the same).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography import x509

from headwater.devices.credentials import CertificateInfo, certificate_info, issued_by
from headwater.devices.model import (
    Credential,
    Device,
    DeviceExists,
    InvalidDevice,
    check_device_id,
)
from headwater.devices.registry import Registry
from headwater.logs import Throttle
from headwater.mqtt.auth import Access, Acl, AclRule, AuthError
from headwater.mqtt.config import Credentials, Identity, PeerCertificate
from headwater.mqtt.packets import ReasonCode

__all__ = [
    "DEFAULT_PUBLISH",
    "DEFAULT_SUBSCRIBE",
    "RESERVED_PUBLISH",
    "Provisioning",
    "RegistryAuthenticator",
    "build_acl",
]

log = logging.getLogger(__name__)

DEFAULT_PUBLISH: Final = ("devices/{device}/#",)
DEFAULT_SUBSCRIBE: Final = ("devices/{device}/#",)
RESERVED_PUBLISH: Final = (
    "devices/{device}/commands/#",
    "devices/{device}/twin/delta",
    "devices/{device}/twin/document",
)
"""What only Headwater publishes to a device, whatever the templates allow."""


def _rule(template: str, access: Access, allow: bool) -> AclRule:
    probe = template.replace("{device}", "")
    if "{" in probe or "}" in probe or "%" in probe:
        raise ValueError(
            f"ACL template {template!r}: `{{device}}` is the only placeholder "
            "(it stands for the device's id)"
        )
    try:
        return AclRule(template.replace("{device}", "%u"), access, allow)
    except AuthError as exc:
        raise ValueError(f"ACL template {template!r}: {exc}") from exc


def build_acl(publish: Sequence[str], subscribe: Sequence[str]) -> Acl:
    """One ACL for every device of a source (see the module docstring)."""
    rules = [_rule(t, Access.WRITE, True) for t in publish]
    rules += [_rule(t, Access.READ, True) for t in subscribe]
    rules += [_rule(t, Access.WRITE, False) for t in RESERVED_PUBLISH]
    return Acl(rules)


@dataclass(frozen=True, slots=True)
class Provisioning:
    """Auto-provisioning: certificates these CAs signed register their device on first connect."""

    authorities: tuple[x509.Certificate, ...]
    id_from: Literal["cn", "san"] = "cn"
    labels: Mapping[str, str] = field(default_factory=dict)


class RegistryAuthenticator:
    """The broker's authenticator for one namespace of the registry."""

    def __init__(
        self,
        registry: Registry,
        namespace: str,
        acl: Acl,
        provisioning: Provisioning | None = None,
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        self.acl = acl
        self.provisioning = provisioning
        self.throttle = Throttle(log)
        #: The credential each device last authenticated with, until it is connected.
        self.used: dict[str, str] = {}
        self.provisioned = 0
        self.refused = 0

    def _refuse(self, code: ReasonCode, why: str, *args: object) -> ReasonCode:
        self.refused += 1
        self.throttle.info(("refused", code), "device registry: " + why, *args)
        return code

    def _accept(
        self, device: Device, credential: Credential, credentials: Credentials
    ) -> Identity | ReasonCode:
        if not device.enabled:
            return self._refuse(ReasonCode.NOT_AUTHORIZED, "device %s is disabled", device.id)
        if credentials.client_id != device.id:
            return self._refuse(
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                "device %s connected with client id %r: it must be the device id",
                device.id,
                credentials.client_id[:80],
            )
        self.used[device.user] = credential.id
        return Identity(device.user, device.id, self.acl, device.labels)

    async def authenticate(self, credentials: Credentials) -> Identity | ReasonCode | None:
        certificate = credentials.certificate
        if certificate is not None:
            verdict = await self._certificate(certificate, credentials)
            if verdict is not None:
                return verdict
        username = credentials.username
        if username is None:
            return None
        device = self.registry.get(self.namespace, username)
        if device is None:
            return None  # not a device: the password file (or anonymous access) decides
        password = credentials.password
        credential = None
        if password is not None:
            credential = self.registry.check_secret(device, password)
            if credential is None:
                credential = await self.registry.check_password(device, password)
        if credential is None:
            return self._refuse(
                ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad credentials for device %s", device.id
            )
        return self._accept(device, credential, credentials)

    async def _certificate(
        self, certificate: PeerCertificate, credentials: Credentials
    ) -> Identity | ReasonCode | None:
        registry = self.registry
        fingerprint = certificate.fingerprint()
        device = registry.by_certificate(self.namespace, fingerprint, None)
        subject: str | None = None
        if device is None:
            info = certificate_info(certificate.der)
            subject = info.subject or None
            device = registry.by_certificate(self.namespace, fingerprint, subject)
            if device is None and self.provisioning is not None:
                provisioned = await self._provision(info, certificate)
                if isinstance(provisioned, ReasonCode):
                    return provisioned
                device = provisioned
        if device is None:
            return None  # a certificate the registry does not know: the listener decides
        for credential in device.credentials:
            if credential.type != "x509":
                continue
            if credential.fingerprint == fingerprint or (
                credential.fingerprint is None
                and subject is not None
                and credential.subject == subject
            ):
                return self._accept(device, credential, credentials)
        # Its subject names a device whose credential pins another certificate.
        return self._refuse(
            ReasonCode.NOT_AUTHORIZED,
            "certificate %s is not the one device %s is registered with",
            fingerprint[:16],
            device.id,
        )

    async def _provision(
        self, info: CertificateInfo, certificate: PeerCertificate
    ) -> Device | ReasonCode | None:
        provisioning = self.provisioning
        assert provisioning is not None
        if not issued_by(info.certificate, list(provisioning.authorities)):
            return None  # not the provisioning CA's: not ours to register
        name = info.common_name if provisioning.id_from == "cn" else certificate.name("san")
        try:
            device_id = check_device_id(name)
        except InvalidDevice as exc:
            return self._refuse(
                ReasonCode.NOT_AUTHORIZED, "cannot provision certificate %s: %s", info.subject, exc
            )
        if self.registry.get(self.namespace, device_id) is not None:
            # Never attach a certificate to a device someone registered otherwise.
            return self._refuse(
                ReasonCode.NOT_AUTHORIZED,
                "certificate %s names device %s, which is registered with other credentials",
                info.subject,
                device_id,
            )
        spec = {"type": "x509", "fingerprint": info.fingerprint}
        if info.subject:
            spec["subject"] = info.subject
        try:
            device, _ = await self.registry.create(
                self.namespace, device_id, labels=dict(provisioning.labels), credentials=[spec]
            )
        except DeviceExists:
            # Two first connects at once: the other one registered it.
            return self.registry.by_certificate(self.namespace, info.fingerprint, None)
        self.provisioned += 1
        log.info("device registry: provisioned %s from certificate %s", device_id, info.subject)
        return device
