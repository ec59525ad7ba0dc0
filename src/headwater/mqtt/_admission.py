"""Who may connect: authenticators, the client certificate, the password file, anonymous access.

How this works: :func:`admit` decides once per CONNECT, from the
:class:`~headwater.mqtt.config.Credentials` the client presented, and
answers an :class:`~headwater.mqtt.config.Identity` or a :class:`Refused`
(the CONNACK reason code and why, for the log); the connection handler
(:mod:`headwater.mqtt._handler`) sends the refusal. In order:

1. the broker's authenticators (a device registry): the first that answers
   decides; one that does not know the client passes it on;
2. on a listener that takes the user name from the client certificate
   (``certUsername``), the certificate's CN or SAN;
3. a user name with a password file: the scrypt hash is checked in a worker
   thread, since a memory-hard KDF must not stop the event loop;
4. otherwise anonymous access, if the listener admits it: any authentication
   configured (a password file, a device registry) turns it off unless the
   listener says ``allowAnonymous: true``, as Mosquitto 2 does.

Every refusal counts in ``auth_failures``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

from headwater.mqtt.config import Credentials, Identity
from headwater.mqtt.packets import ReasonCode

if TYPE_CHECKING:
    from headwater.mqtt.broker import MqttBroker

__all__ = ["Refused", "admit", "identity"]


class Refused(NamedTuple):
    """A CONNECT refused: the CONNACK's reason code, and why (for the log)."""

    code: ReasonCode
    why: str


def identity(username: str | None) -> str:
    """Who owns a session: the authenticated user (or certificate identity)."""
    return "anonymous" if username is None else f"user:{username}"


async def admit(broker: MqttBroker, credentials: Credentials) -> Identity | Refused:
    """The client's identity, or why it is refused; see the module docstring."""
    verdict = await _admit(broker, credentials)
    if isinstance(verdict, Refused):
        broker.stats.auth_failures += 1
    return verdict


async def _admit(broker: MqttBroker, credentials: Credentials) -> Identity | Refused:
    for authenticator in broker.authenticators:
        verdict = await authenticator.authenticate(credentials)
        if verdict is None:
            continue
        if isinstance(verdict, Identity):
            return verdict
        return Refused(verdict, f"refused by {type(authenticator).__name__}")
    username = credentials.username
    passwords = broker.passwords
    listener = credentials.listener
    certificate = credentials.certificate
    mode = listener.cert_username
    if certificate is not None and mode is not None:
        username = certificate.name(mode)
        if username is None:
            return Refused(ReasonCode.NOT_AUTHORIZED, f"no {mode} in the client certificate")
    elif username is not None and passwords is not None:
        if not await asyncio.to_thread(passwords.verify, username, credentials.password):
            return Refused(ReasonCode.BAD_USER_NAME_OR_PASSWORD, f"bad password for {username!r}")
    elif not listener.admits_anonymous(
        authentication=passwords is not None or bool(broker.authenticators)
    ):
        return Refused(ReasonCode.NOT_AUTHORIZED, "anonymous access is off on this listener")
    return Identity(identity(username), username)
