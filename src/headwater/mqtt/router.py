"""Who receives a message: the broker's subscription router, behind a small interface.

How this works: the broker tells its :class:`Router` about every subscription a
session gains or loses, and for every message asks it to call ``deliver`` once
per receiving client with the QoS granted, Retain As Published and the
subscription identifiers. :class:`LocalRouter` answers from a
:class:`~headwater.mqtt.topics.SubscriptionTree` in this process; a router
that spans several broker processes (routing between nodes by interest) can
stand in its place, since the broker needs nothing else from it.

The MQTT rules applied here, for any router:

* overlapping subscriptions of one client give one copy at the maximum granted
  QoS, carrying every matching subscription identifier [MQTT-3.3.5-1 (3.1.1) /
  3.3.4-2/3/4 (5.0)];
* No Local: not to the publishing client [MQTT-3.8.3-3 (5.0)];
* each shared subscription group (``$share/{name}/{filter}``) gets one copy,
  for one member, preferring members that are connected [MQTT-4.8.2-3].
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from headwater.mqtt.session import Message, Subscription
from headwater.mqtt.topics import SubscriptionTree

if TYPE_CHECKING:
    from headwater.mqtt.broker import MqttBroker

__all__ = [
    "Deliver",
    "LocalRouter",
    "Router",
    "RoutingUnavailable",
    "SpanningRouter",
    "subscription_ids",
]

Deliver = Callable[[str, int, bool, tuple[int, ...]], None]
"""``deliver(client_id, granted_qos, retain_as_published, subscription_ids)``."""


class RoutingUnavailable(Exception):
    """A router spanning several processes cannot take a change now (its network is
    away); the broker refuses what depends on it, and acknowledges nothing."""


def subscription_ids(sub: Subscription) -> tuple[int, ...]:
    return (sub.identifier,) if sub.identifier else ()


class Router(Protocol):
    """Subscriptions in, receivers out."""

    def subscribe(self, client_id: str, sub: Subscription) -> None:
        """``client_id`` now holds ``sub`` (replacing one with the same filter)."""

    def unsubscribe(self, client_id: str, sub: Subscription) -> None:
        """``client_id`` no longer holds ``sub``."""

    def route(self, message: Message, deliver: Deliver, available: Callable[[str], bool]) -> None:
        """Call ``deliver`` once per client that receives ``message``.

        ``available(client_id)`` says whether a client is connected now: a
        shared group prefers such a member.
        """

    def filters(self) -> Iterator[tuple[str, str | None, str, Subscription]]:
        """Every subscription: (match filter, share name, client id, subscription)."""


@runtime_checkable
class SpanningRouter(Router, Protocol):
    """A router that spans several broker processes (headwater.cluster.mqtt.router);
    the broker checks for it once, when it is given the router."""

    def bind(self, broker: MqttBroker) -> None:
        """The broker starts using this router (it may wrap ``broker.hook``)."""

    def pending(self, client_id: str) -> Awaitable[None] | None:
        """What a SUBSCRIBE/UNSUBSCRIBE of ``client_id`` must wait for before its
        answer (an awaitable raising :class:`RoutingUnavailable`), or None."""

    async def persist(self, messages: Sequence[Message]) -> None:
        """Store messages published in-process (QoS 1/2, retained) before they are routed."""


class LocalRouter:
    """The subscriptions of this process, in a matching tree."""

    __slots__ = ("tree",)

    def __init__(self) -> None:
        self.tree: SubscriptionTree[str, Subscription] = SubscriptionTree()

    def __len__(self) -> int:
        return len(self.tree)

    def subscribe(self, client_id: str, sub: Subscription) -> None:
        self.tree.subscribe(sub.match_filter, client_id, sub, sub.share)

    def unsubscribe(self, client_id: str, sub: Subscription) -> None:
        self.tree.unsubscribe(sub.match_filter, client_id, sub.share)

    def filters(self) -> Iterator[tuple[str, str | None, str, Subscription]]:
        return self.tree.filters()

    def route(self, message: Message, deliver: Deliver, available: Callable[[str], bool]) -> None:
        topic = message.topic
        tree = self.tree
        for cid, sub, _share in tree.shared(topic, available):
            # One member of each shared group; its granted QoS applies [MQTT-4.8.2-3].
            deliver(cid, sub.qos, sub.retain_as_published, subscription_ids(sub))
        origin = message.origin
        single: tuple[str, Subscription] | None = None
        merged: dict[str, list[Subscription]] | None = None
        for table in tree.subscribers(topic):
            for cid, sub in table.items():
                if sub.no_local and cid == origin:
                    # [MQTT-3.8.3-3 (5.0)] No Local: not to the publishing connection.
                    continue
                if single is None and merged is None:
                    single = (cid, sub)
                    continue
                if merged is None:
                    assert single is not None
                    merged = {single[0]: [single[1]]}
                    single = None
                merged.setdefault(cid, []).append(sub)
        if single is not None:
            cid, sub = single
            deliver(cid, sub.qos, sub.retain_as_published, subscription_ids(sub))
            return
        if merged is None:
            return
        for cid, subs in merged.items():
            if len(subs) == 1:
                sub = subs[0]
                deliver(cid, sub.qos, sub.retain_as_published, subscription_ids(sub))
                continue
            # Overlapping subscriptions: one copy at the maximum granted QoS
            # [MQTT-3.3.5-1 (3.1.1) / 3.3.4-2 (5.0)] carrying every subscription
            # identifier [MQTT-3.3.4-3/4 (5.0)].
            qos = max(s.qos for s in subs)
            rap = any(s.retain_as_published for s in subs)
            ids = tuple(s.identifier for s in subs if s.identifier)
            deliver(cid, qos, rap, ids)
