"""Who receives a message, over all the nodes of a mesh: routing by interest over NATS.

How this works: each node subscribes, on NATS, to the subjects of the topic
filters its own clients hold (:mod:`headwater.cluster.mqtt.subjects`; counted,
so a filter held by a thousand clients is one NATS subscription), and
publishes each message its clients send once, to the subject of its topic:
NATS hands it to exactly the nodes with a matching filter, so a mesh of many
nodes with many devices never sends every message to every node. A node
delivers to its own clients directly (its NATS connection does not echo
its own publishes), and a message that comes from NATS is matched against
the node's own subscription tree, which applies MQTT's rules (overlapping
subscriptions give one copy at the highest QoS with every identifier, No
Local, ``$`` topics and leading wildcards). A message that matches several
of a node's NATS subscriptions arrives once per subscription; its id (in the
envelope) makes the node route it once.

- **QoS 1/2** messages go to ``<prefix>.s.<topic>``, which the source's
  stream stores: the publisher's PUBACK/PUBREC waits for JetStream to have
  stored it (with the stream's replicas), since persistent sessions anywhere
  get it from there (:mod:`headwater.cluster.mqtt.sessions`); live subscribers
  get it at the same moment as a plain NATS message. For a persistent
  session's QoS 1/2 subscription the live copy is skipped: its consumer
  delivers the message, acknowledged end to end. QoS 0 messages go to
  ``<prefix>.m.<topic>``, not stored.
- **Shared subscriptions** (``$share/{group}/{filter}``): each node with a
  member of a group joins a NATS queue group named after the group and the
  filter, on a second connection that does receive its own node's
  publishes; NATS hands each message to one node of the group, anywhere,
  which gives it to one of its members (round robin) [MQTT-4.8.2-3]. Members
  are connected clients (a node has no session whose client left).
- **Retained messages** are written to the mesh's retained bucket before
  the PUBACK (an empty payload deletes), and every node follows that bucket
  into its own retained store, from which new subscriptions are served.
- **Storing before acknowledging** is the broker's publish hook, wrapped
  (:class:`MeshHook`): the source's hook first (the Broker's durable append,
  for the topics it selects), then the mesh's writes for what it accepted;
  if NATS cannot take them, the publish is refused as if the log were
  unavailable (MQTT 5: 0x80; 3.1.1: no ack, the device resends).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import nats.errors
import orjson

from headwater.cluster.mqtt.link import (
    PUBLISH_TIMEOUT,
    MeshLink,
    MeshUnavailable,
    PubAcks,
    decode,
    encode,
    kv_key,
    token,
)
from headwater.cluster.mqtt.subjects import filter_subjects, topic_subject, unescape
from headwater.logs import Throttle
from headwater.mqtt.config import ClientInfo, Hooked, Outcome, PublishHook, Refusal
from headwater.mqtt.packets import ReasonCode
from headwater.mqtt.router import Deliver, LocalRouter, subscription_ids
from headwater.mqtt.session import Message, Session, Subscription
from headwater.state import Entry, StateError

if TYPE_CHECKING:
    from headwater.cluster.mqtt.sessions import MeshSessions
    from headwater.mqtt.broker import MqttBroker

__all__ = ["MeshHook", "NatsRouter"]

log = logging.getLogger(__name__)

RECENT_IDS: Final = 8192
"""Message ids a node remembers to route a message once when several of its NATS
subscriptions match it (copies arrive together, within a few messages)."""

SENT_REMEMBERED: Final = 100_000
"""Messages stored by the publish hook whose route() (which must not send them again)
a node remembers at most."""

_ACCEPTED_BELOW: Final = 0x80


def _accepted(outcome: Outcome) -> bool:
    if outcome is None:
        return True
    code = outcome.code if isinstance(outcome, Refusal) else outcome
    return int(code) < _ACCEPTED_BELOW


class MeshHook:
    """The broker's publish hook in a mesh: the source's hook, then the mesh's writes."""

    def __init__(self, inner: PublishHook | None, router: NatsRouter) -> None:
        self.inner = inner
        self.router = router

    def selects(self, topic: str) -> bool:
        return True  # every QoS 1/2 or retained publish is stored before its ack

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [None] * len(batch)
        inner = self.inner
        if inner is not None:
            chosen = [i for i, h in enumerate(batch) if inner.selects(h.message.topic)]
            if chosen:
                answers = await inner(info, [batch[i] for i in chosen])
                for i, answer in zip(chosen, answers, strict=True):
                    outcomes[i] = answer
        keep = [
            i
            for i, h in enumerate(batch)
            if (h.message.qos or h.message.retain) and _accepted(outcomes[i])
        ]
        if keep:
            try:
                await self.router.persist([batch[i].message for i in keep])
            except MeshUnavailable as exc:
                self.router.throttle.warning(
                    "persist",
                    "MQTT messages of %s not stored in NATS, refused: %s",
                    info.client_id,
                    exc,
                )
                for i in keep:
                    outcomes[i] = ReasonCode.UNSPECIFIED_ERROR
        return outcomes


class _Interest:
    """One topic filter held by this node's clients: its NATS subscriptions, counted."""

    __slots__ = ("count", "subs")

    def __init__(self) -> None:
        self.count = 0
        self.subs: list[Any] = []


class _Group:
    """One shared subscription group of this node: its members and queue subscriptions."""

    __slots__ = ("members", "next", "subs")

    def __init__(self) -> None:
        self.members: dict[str, Subscription] = {}
        self.subs: list[Any] = []
        self.next = 0


class NatsRouter:
    """A :class:`~headwater.mqtt.router.Router` spanning the nodes (see the module docstring)."""

    def __init__(self, link: MeshLink, sessions: MeshSessions) -> None:
        self.link = link
        self.sessions = sessions
        self.local = LocalRouter()
        self.broker: MqttBroker | None = None
        self._interest: dict[str, _Interest] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        #: Work a SUBSCRIBE/UNSUBSCRIBE waits for before its answer, per client.
        self._pending: dict[str, list[Awaitable[Any]]] = {}
        #: Messages the hook stored (and so sent) already: route() does not send them.
        self._sent: dict[int, Message] = {}
        self._incoming: Message | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=RECENT_IDS)
        self._recent_set: set[str] = set()
        self._outbox: list[tuple[str, bytes]] = []
        self._flushing = False
        self._pubacks = PubAcks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.throttle = Throttle(log)
        self.counters = collections.Counter[str]()

    # -- wiring ---------------------------------------------------------------------------

    def bind(self, broker: MqttBroker) -> None:
        """Called by the broker it routes for: its publishes are stored before their acks."""
        self.broker = broker
        self.sessions.broker = broker
        broker.hook = MeshHook(broker.hook, self)

    async def start(self) -> list[Message]:
        """Subscribe what is needed from the start; the retained messages of the mesh."""
        link = self.link
        await self._pubacks.open(link.nc)
        assert link.retained is not None
        revision = await link.retained.revision()
        retained: list[Message] = []
        for key in await link.retained.keys():
            entry = await link.retained.get(key)
            message = _retained(entry)
            if message is not None and message.payload:
                retained.append(message)
        self._spawn(self._follow_retained(revision))
        return retained

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pubacks.fail_all("the broker stopped")

    def _spawn(self, work: Awaitable[Any]) -> None:
        # Owned and cancelled in stop().
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "sentToMesh": c["sent"],
            "receivedFromMesh": c["received"],
            "duplicatesDropped": c["duplicates"],
            "stored": c["stored"],
            "storeFailures": c["store_failures"],
            "sharedDelivered": c["shared"],
            "sharedWithoutMember": c["shared_nobody"],
        }

    # -- subscriptions ---------------------------------------------------------------------

    def pending(self, client_id: str) -> Awaitable[None] | None:
        """What a SUBSCRIBE/UNSUBSCRIBE of ``client_id`` waits for (NATS interest, consumers)."""
        work = self._pending.pop(client_id, None)
        if not work:
            return None
        return _all(work)

    def wait(self, client_id: str, work: Awaitable[Any] | None) -> None:
        """Make the next SUBACK/UNSUBACK (or CONNACK) of ``client_id`` wait for ``work``."""
        if work is not None:
            self._pending.setdefault(client_id, []).append(work)

    def subscribe(self, client_id: str, sub: Subscription) -> None:
        if sub.share is not None:
            self._join(client_id, sub)
        else:
            self.local.subscribe(client_id, sub)
            self.wait(client_id, self._interest_up(sub.match_filter))
        self.wait(client_id, self.sessions.subscriptions_changed(client_id))

    def unsubscribe(self, client_id: str, sub: Subscription) -> None:
        self._drop(client_id, sub)
        session = self.sessions.hosted.get(client_id)
        if session is not None and sub.topic_filter not in session.subscriptions:
            # A real UNSUBSCRIBE (not the end of the session, which drops it all at once).
            self.wait(client_id, self.sessions.subscriptions_changed(client_id))

    def _drop(self, client_id: str, sub: Subscription) -> None:
        if sub.share is not None:
            self._leave_group(client_id, sub)
            return
        self.local.unsubscribe(client_id, sub)
        self._interest_down(sub.match_filter)

    def attach(self, client_id: str, session: Session) -> None:
        """A resumed session is here now: its subscriptions join this node's interest."""
        for sub in session.subscriptions.values():
            if sub.share is not None:
                self._join(client_id, sub)
            else:
                self.local.subscribe(client_id, sub)
                self.wait(client_id, self._interest_up(sub.match_filter))

    def detach(self, client_id: str, session: Session) -> None:
        """The session left this node (it stays in the mesh): its interest here goes."""
        self._pending.pop(client_id, None)
        for sub in session.subscriptions.values():
            self._drop(client_id, sub)

    def filters(self) -> Iterator[tuple[str, str | None, str, Subscription]]:
        yield from self.local.filters()
        for (share, match), group in self._groups.items():
            for cid, sub in group.members.items():
                yield match, share, cid, sub

    def _interest_up(self, match_filter: str) -> Awaitable[None] | None:
        interest = self._interest.get(match_filter)
        if interest is None:
            interest = self._interest[match_filter] = _Interest()
        interest.count += 1
        if interest.count > 1:
            return None
        subjects = [
            *filter_subjects(self.link.live, match_filter),
            *filter_subjects(self.link.stored, match_filter),
        ]
        return self._subscribe(self.link.nc, subjects, "", self._arrived, interest.subs)

    def _interest_down(self, match_filter: str) -> None:
        interest = self._interest.get(match_filter)
        if interest is None:
            return
        interest.count -= 1
        if interest.count <= 0:
            del self._interest[match_filter]
            self._spawn(_unsubscribe(interest.subs))

    def _join(self, client_id: str, sub: Subscription) -> None:
        assert sub.share is not None
        key = (sub.share, sub.match_filter)
        group = self._groups.get(key)
        new = group is None
        if group is None:
            group = self._groups[key] = _Group()
        group.members[client_id] = sub
        if not new:
            return
        subjects = [
            *filter_subjects(self.link.live, sub.match_filter),
            *filter_subjects(self.link.stored, sub.match_filter),
        ]
        queue = token(f"{sub.share}/{sub.match_filter}")

        async def arrived(message: Any, key: tuple[str, str] = key) -> None:
            self._shared(key, message)

        self.wait(
            client_id, self._subscribe(self.link.queues, subjects, queue, arrived, group.subs)
        )

    def _leave_group(self, client_id: str, sub: Subscription) -> None:
        assert sub.share is not None
        key = (sub.share, sub.match_filter)
        group = self._groups.get(key)
        if group is None:
            return
        group.members.pop(client_id, None)
        if not group.members:
            del self._groups[key]
            self._spawn(_unsubscribe(group.subs))

    def _subscribe(
        self,
        nc: Any,
        subjects: list[str],
        queue: str,
        cb: Callable[[Any], Awaitable[None]],
        into: list[Any],
    ) -> Awaitable[None]:
        """Subscribe, then make sure the server has it (a flush) before the SUBACK goes out."""

        async def subscribe() -> None:
            try:
                into.extend([await nc.subscribe(s, queue=queue, cb=cb) for s in subjects])
                await nc.flush(timeout=PUBLISH_TIMEOUT)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                raise MeshUnavailable(f"cannot subscribe on NATS: {exc}") from exc

        task = asyncio.ensure_future(subscribe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- routing -------------------------------------------------------------------------------

    def route(self, message: Message, deliver: Deliver, available: Callable[[str], bool]) -> None:
        hosted = self.sessions.hosted
        if message.qos:

            def live(cid: str, qos: int, rap: bool, ids: tuple[int, ...]) -> None:
                if qos:
                    session = hosted.get(cid)
                    if session is not None and session.expiry_interval:
                        return  # its consumer delivers it, acknowledged end to end
                deliver(cid, qos, rap, ids)

            self.local.route(message, live, available)
        else:
            self.local.route(message, deliver, available)
        if self._incoming is message:
            return
        if self._sent.pop(id(message), None) is message:
            return
        self._send(message)

    def _send(self, message: Message) -> None:
        """Publish a message to the mesh, without waiting (QoS 0, or nothing to wait for)."""
        link = self.link
        prefix = link.stored if message.qos else link.live
        data = encode(message, link.node, link.new_id())
        self._outbox.append((topic_subject(prefix, message.topic), data))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        batch, self._outbox = self._outbox, []
        if batch:
            self._spawn(self._publish(batch))

    async def _publish(self, batch: list[tuple[str, bytes]]) -> None:
        nc = self.link.nc
        try:
            for subject, data in batch:
                await nc.publish(subject, data)
            self.counters["sent"] += len(batch)
        except (nats.errors.Error, OSError) as exc:
            self.throttle.warning("send", "MQTT messages not sent to the mesh: %s", exc)

    async def persist(self, messages: Sequence[Message]) -> None:
        """Store QoS 1/2 messages in the stream (sending them to the mesh) and retained ones
        in the retained bucket; return once NATS has them. Raises :class:`MeshUnavailable`."""
        link = self.link
        nc = link.nc
        if nc is None or not nc.is_connected:
            self.counters["store_failures"] += len(messages)
            raise MeshUnavailable("NATS is unreachable")
        waiting: list[Awaitable[Any]] = []
        replies: list[str] = []
        sent: list[Message] = []
        try:
            for message in messages:
                if message.qos:
                    reply, future = self._pubacks.expect()
                    replies.append(reply)
                    waiting.append(future)
                    data = encode(message, link.node, link.new_id())
                    await nc.publish(topic_subject(link.stored, message.topic), data, reply=reply)
                    sent.append(message)
                if message.retain:
                    waiting.append(self._keep_retained(message))
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await asyncio.gather(*waiting)
        except asyncio.CancelledError:
            # The publisher went away meanwhile: its PubAcks are not waited for.
            for reply in replies:
                self._pubacks.forget(reply)
            raise
        except (nats.errors.Error, OSError, TimeoutError, StateError, MeshUnavailable) as exc:
            self.counters["store_failures"] += len(messages)
            for reply in replies:
                self._pubacks.forget(reply)
            for item in waiting:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.cancel()
            if sent:
                # Sent but not confirmed: live subscribers may have them; the publisher
                # resends (at least once).
                self._remember_sent(sent)
            raise MeshUnavailable(str(exc) or type(exc).__name__) from exc
        self.counters["stored"] += len(sent)
        self.counters["sent"] += len(sent)
        self._remember_sent(sent)

    def _remember_sent(self, sent: list[Message]) -> None:
        remembered = self._sent
        for message in sent:
            remembered[id(message)] = message
        # Messages whose route never came (their connection closed first) would stay:
        # the oldest go (a clear would also forget those whose route is due now, and
        # send them to the mesh a second time).
        while len(remembered) > SENT_REMEMBERED:
            del remembered[next(iter(remembered))]

    async def _keep_retained(self, message: Message) -> None:
        bucket = self.link.retained
        assert bucket is not None
        key = kv_key(message.topic)
        if message.payload or key.startswith("h/"):
            # (A hashed key keeps its topic in the value: an empty message deletes there.)
            await bucket.put(key, orjson.dumps(message.to_json()))
        else:
            await bucket.delete(key)  # [MQTT-3.3.1-10] an empty retained message deletes

    # -- from the mesh ----------------------------------------------------------------------

    def _seen(self, msg_id: str) -> bool:
        if msg_id in self._recent_set:
            self.counters["duplicates"] += 1
            return True
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_set.discard(recent[0])
        recent.append(msg_id)
        self._recent_set.add(msg_id)
        return False

    async def _arrived(self, received: Any) -> None:
        try:
            message, _node, msg_id = decode(received.data)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self.throttle.warning(
                "undecodable", "a message on %s is not one of ours", received.subject
            )
            return
        if self._seen(msg_id) or self.broker is None:
            return
        self.counters["received"] += 1
        self._incoming = message
        try:
            self.broker.route(message)
        finally:
            self._incoming = None

    def _shared(self, key: tuple[str, str], received: Any) -> None:
        group = self._groups.get(key)
        broker = self.broker
        try:
            message, _, _ = decode(received.data)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return
        if group is None or broker is None or not group.members:
            self.counters["shared_nobody"] += 1
            return
        members = list(group.members.items())
        online = [m for m in members if broker.online(m[0]) is not None] or members
        cid, sub = online[group.next % len(online)]
        group.next += 1
        self.counters["shared"] += 1
        # One member of the group gets it, at its granted QoS [MQTT-4.8.2-3].
        broker.deliver(cid, message, sub.qos, sub.retain_as_published, subscription_ids(sub))

    async def _follow_retained(self, revision: int) -> None:
        bucket = self.link.retained
        assert bucket is not None
        while True:
            try:
                changes = cast(AsyncGenerator[Entry, None], bucket.watch(after=revision))
                async with contextlib.aclosing(changes):
                    async for entry in changes:
                        revision = entry.revision
                        self._retained_changed(entry)
            except StateError as exc:
                self.throttle.warning("retained", "following retained messages failed: %s", exc)
                await asyncio.sleep(1.0)

    def _retained_changed(self, entry: Entry) -> None:
        broker = self.broker
        if broker is None:
            return
        message = _retained(entry)
        if message is not None:
            broker.retained.set(message)
        elif entry.deleted:
            topic = _topic_of(entry.key)
            if topic is not None:
                broker.retained.set(Message(topic, b"", retain=True))


def _retained(entry: Entry | None) -> Message | None:
    if entry is None or entry.deleted:
        return None
    try:
        return Message.from_json(orjson.loads(entry.value))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _topic_of(key: str) -> str | None:
    """The topic a retained bucket key stands for (None for a hashed one)."""
    return None if key.startswith("h/") else unescape(key, "=")


async def _all(work: list[Awaitable[Any]]) -> None:
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _unsubscribe(subs: list[Any]) -> None:
    for sub in subs:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
