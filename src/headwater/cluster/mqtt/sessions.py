"""MQTT sessions of a mesh: in a KV bucket and in JetStream, so that a device resumes anywhere.

How this works (one :class:`MeshSessions` per node and MqttBrokerSource):

- **A session's document** (subscriptions, expiry, owner, the node that has
  it, a claim counter ``epoch``, the will) is a key of the sessions bucket.
  At CONNECT the node *claims* it: it writes itself as the session's node
  with the next epoch (compare-and-set on the key's revision; one of two
  nodes claiming at once wins, the other reads again), then resumes what
  the document holds. Every node watches the bucket: a node whose client's
  session was claimed by another node takes that connection over (DISCONNECT
  0x8E, as MQTT requires for a second connection with the same client id
  [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)]), wherever the second one came in.
- **Queued QoS 1/2 messages** of a persistent session (Session Expiry > 0,
  or 3.1.1 CleanSession=0) live in the source's JetStream stream: each of
  its QoS 1/2 subscriptions has a durable consumer there, created before the
  SUBACK goes out and deleted with the subscription or the session. The node
  that has the session pulls from its consumers (as much as the client's
  receive window allows) and acknowledges a message in JetStream when the
  client acknowledges it (PUBACK, or PUBREC for QoS 2); between connections
  nobody pulls and the messages wait in the stream. A disconnect gives
  unacknowledged messages back at once (nak), so the next node delivers them
  first; a node that dies gives them back after :data:`ACK_WAIT`. A message
  matching several of the session's subscriptions comes once per consumer
  and is delivered once (by its stream sequence), at the highest QoS granted
  with every subscription identifier [MQTT-3.3.4-2/3 (5.0)].
- **Expiry and orphans**: one node (a lease) keeps every session document in
  view and ends expired sessions, publishes the wills of sessions whose node
  is gone (its heartbeat expired) or whose Will Delay passed, and marks
  those sessions disconnected (:mod:`headwater.cluster.mqtt.janitor`).

Clean sessions (expiry 0) are claimed too (for takeovers across nodes) and
their document is deleted when they end; they have no consumers.
QoS 2 towards a device of a persistent session: at its PUBREC the packet id
(and the message's stream sequence) goes into the session's document
(``rel``), then the message is acknowledged in JetStream; the PUBCOMP takes
the id out. The node that resumes the session, after a disconnect or the
death of the node that had it, sends those PUBRELs again [MQTT-4.4.0-1] and
keeps the ids in use until their PUBCOMP (the device may still hold them
for duplicate suppression), and a copy JetStream offers again because the
ack did not get out is acknowledged, not delivered a second time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from headwater.cluster.mqtt.janitor import Janitor
from headwater.cluster.mqtt.link import MeshLink, MeshUnavailable, decode, kv_key
from headwater.cluster.mqtt.session import (
    MeshSession,
    Puller,
    consumer_name,
    read_doc,
    restore_released,
)
from headwater.cluster.mqtt.subjects import filter_subjects
from headwater.log._jetstream_nats import stream_sequence
from headwater.logs import Throttle
from headwater.mqtt.connection import PublishParts
from headwater.mqtt.session import (
    DEFAULT_MAX_QUEUED_MESSAGES,
    Delivery,
    OverflowPolicy,
    Session,
    Subscription,
)
from headwater.mqtt.stores import StoreChanges, StoredState
from headwater.mqtt.topics import topic_matches
from headwater.state import Entry, RevisionMismatch, StateError

if TYPE_CHECKING:
    from headwater.cluster.mqtt.router import NatsRouter
    from headwater.mqtt.broker import MqttBroker

__all__ = ["ACK_WAIT", "MeshSession", "MeshSessions"]

log = logging.getLogger(__name__)

ACK_WAIT: Final = 10.0
"""Seconds JetStream waits for a pulled message's ack before offering it again: how
long the messages a dead node had sent to a device (unacknowledged) wait before
the device's next node gets them. Live nodes report progress on what they hold."""

PULL_BATCH: Final = 64
PULL_EXPIRES: Final = 20.0
"""A waiting pull request for a connected session lasts this many seconds, then is
renewed: the only traffic an idle persistent session costs."""

PULL_LOST_AFTER: Final = PULL_EXPIRES + 10.0
"""A request still open this long after it was sent is taken for lost and asked again:
its end (the server's 408) or its messages went to a node cut off from NATS for a
moment (core NATS does not keep them), and nothing else would ever ask again."""

MAX_ACK_PENDING: Final = 1000
"""Messages of one consumer handed out and not acknowledged, at most."""

SWEEP_INTERVAL: Final = 5.0
"""Seconds between a node's checks for messages that left a session without an ack
(a veto of the ACL, a message expired in the queue): they are acknowledged then."""

CLAIM_ATTEMPTS: Final = 8


class MeshSessions:
    """The broker's :class:`~headwater.mqtt.stores.SessionStore` in a mesh (see above)."""

    def __init__(self, link: MeshLink) -> None:
        self.link = link
        self.router: NatsRouter | None = None
        self.broker: MqttBroker | None = None
        self.max_queued = DEFAULT_MAX_QUEUED_MESSAGES
        self.overflow = OverflowPolicy.DROP_OLDEST
        #: Client id -> (revision of its document as this node last wrote it, epoch).
        self.claimed: dict[str, tuple[int, int]] = {}
        #: Client id -> its session, while this node has it.
        self.hosted: dict[str, MeshSession] = {}
        self._pullers: dict[str, Puller] = {}
        #: Per client, one writer of its subscriptions (consumers and document), and
        #: one of its QoS 2 flows' state; a change that comes while one is under way
        #: is written together with any others after it.
        self._syncs = _Coalesced(self._sync, self._write_later)
        self._releases = _Coalesced(self._write_released, self._write_later)
        #: Client id -> (session, delivery) PUBREC'd, acked in JetStream once written.
        self._after_release: dict[str, list[tuple[MeshSession, Delivery]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._acks: list[bytes | str] = []
        self._acks_scheduled = False
        self._generation = 0
        self._closed = False
        self.throttle = Throttle(log)
        self.counters = collections.Counter[str]()

    # -- SessionStore ---------------------------------------------------------------------

    async def load(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED_MESSAGES,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> StoredState:
        """Sessions are loaded one at a time, at CONNECT (:meth:`claim`); the retained
        messages are all loaded here, and followed from now on."""
        self.max_queued, self.overflow = max_queued, overflow
        link = self.link
        assert link.nc is not None and link.sessions is not None and self.router is not None
        retained = await self.router.start()
        revision = await link.sessions.revision()
        await self._close_previous_run()
        self._spawn(self._watch(revision), "mqtt-sessions-watch")
        self._spawn(Janitor(self).run(), "mqtt-sessions-janitor")
        self._spawn(self._sweeper(), "mqtt-sessions-sweep")
        return StoredState([], retained)

    async def _close_previous_run(self) -> None:
        """Hand the sessions this node's name still holds to the mesh, before any client
        connects: they are its previous process's (it crashed, or restarted sooner than
        the node registry's TTL, so no other node saw it gone and the janitor, which
        closes the sessions of nodes that are gone, left them). Each is marked
        disconnected now with its will due (at once, or after its Will Delay), so that
        the janitor publishes the will through the broker's hooks and ends a clean
        session, as for a connection a network failure ended."""
        link = self.link
        bucket = link.sessions
        assert bucket is not None
        now = time.time()
        for key in await bucket.keys():
            entry = await bucket.get(key)
            doc = read_doc(entry)
            if entry is None or doc.get("node") != link.node:
                continue
            will = doc.get("will")
            delay = int((will or {}).get("delay") or 0) if int(doc.get("exp") or 0) else 0
            doc.update(node=None, disc=now, will_at=now + delay if will is not None else None)
            log.info(
                "session %s was left by this node's previous run: disconnected", doc.get("cid")
            )
            with contextlib.suppress(RevisionMismatch):  # its client is back (elsewhere)
                await bucket.update(key, orjson.dumps(doc), entry.revision)

    async def save(self, changes: StoreChanges) -> None:
        """Nothing to do: session documents are written when they change, retained
        messages when they are published (before the PUBACK)."""

    async def close(self) -> None:
        self._closed = True
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_acks()
        if self.router is not None:
            await self.router.stop()
        for name in list(self._pullers):
            await self._stop_pulling(name)
        with contextlib.suppress(nats.errors.Error, OSError):
            if self.link.nc is not None:
                await self.link.nc.flush(timeout=2)

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        # Owned here and cancelled in close(): they live as long as the broker.
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        return {
            "sessionsHere": len(self.hosted),
            "takenOver": self.counters["taken_over"],
            "storedDelivered": self.counters["delivered"],
            "orphansClosed": self.counters["orphans"],
            "expired": self.counters["expired"],
        }

    # -- documents ----------------------------------------------------------------------------

    def _key(self, client_id: str) -> str:
        return kv_key(client_id)

    def new_session(self, client_id: str) -> MeshSession:
        """A new session (the broker's factory): hosted here from now on."""
        session = MeshSession(
            client_id, max_queued=self.max_queued, overflow=self.overflow, store=self
        )
        self.hosted[client_id] = session
        return session

    def _doc(self, session: Session, *, node: str | None, epoch: int) -> dict[str, Any]:
        consumers = session.consumers if isinstance(session, MeshSession) else {}
        return {
            "cid": session.client_id,
            "node": node,
            "epoch": epoch,
            "exp": session.expiry_interval,
            "own": session.owner,
            "disc": session.disconnected_at,
            "subs": [s.to_json() for s in session.subscriptions.values()],
            "cons": consumers,
            "rel": _released(session),
        }

    async def claim(
        self, client_id: str, clean_start: bool, owner: str, will: dict[str, Any] | None
    ) -> Session | None:
        """Make this node the session's node; the session to resume, if there is one.

        ``will``: the CONNECT's will, kept in the document so that it is published
        even if this node dies. Raises :class:`MeshUnavailable`.
        """
        link = self.link
        bucket = link.sessions
        assert bucket is not None
        key = self._key(client_id)
        for _ in range(CLAIM_ATTEMPTS):
            try:
                entry = await bucket.get(key)
            except StateError as exc:
                raise MeshUnavailable(f"cannot read session {client_id!r}: {exc}") from exc
            doc = read_doc(entry)
            epoch = int(doc.get("epoch", 0)) + 1 if doc else 1
            claimed = dict(doc) if doc else {"cid": client_id, "subs": [], "cons": {}, "exp": 0}
            claimed.update(node=link.node, epoch=epoch, disc=None, will=will, will_at=None)
            # The broker discards the session (Clean Start [MQTT-3.1.2-4 (5.0) / 3.1.2-6
            # (3.1.1)], or another owner): the document says so with the claim, so that
            # a node that dies now leaves nothing of it to resume.
            discard = bool(doc) and (clean_start or doc.get("own") not in (None, owner))
            if discard:
                claimed.update(subs=[], cons={}, exp=0, own=owner)
                claimed.pop("rel", None)
            try:
                revision = await bucket.update(
                    key, orjson.dumps(claimed), entry.revision if entry is not None else 0
                )
            except RevisionMismatch:
                continue
            except StateError as exc:
                raise MeshUnavailable(f"cannot claim session {client_id!r}: {exc}") from exc
            break
        else:
            raise MeshUnavailable(f"session {client_id!r} changes too often to claim it")
        self.claimed[client_id] = (revision, epoch)
        if discard:
            # Its consumers go before the CONNACK: deleted later, they would take with
            # them the consumers of the same names that the new session's first
            # SUBSCRIBE makes (names come from the client id and the filter).
            consumers = dict(doc.get("cons") or {})
            hosted = self.hosted.get(client_id)
            if hosted is not None:
                consumers.update(hosted.consumers)
                hosted.consumers.clear()  # the broker drops it: nothing left to delete then
            await self.delete_consumers(consumers)
            return None
        if client_id in self.hosted:
            return None  # this node has it already (a reconnection here): the broker resumes it
        if not doc or not int(doc.get("exp") or 0):
            return None
        session = self._session(doc)
        if session.is_expired(time.time()):
            await self.delete_consumers(session.consumers)
            return None
        self.hosted[client_id] = session
        assert self.router is not None
        self.router.attach(client_id, session)
        wanted = {
            consumer_name(client_id, subject)
            for sub in session.subscriptions.values()
            if sub.share is None and sub.qos > 0
            for subject in filter_subjects(self.link.stored, sub.match_filter)
        }
        if wanted != set(session.consumers):
            # A subscription stored without its consumer (its node failed midway).
            self.router.wait(client_id, self.subscriptions_changed(client_id))
        interest = self.router.pending(client_id)
        if interest is not None:
            await interest  # subscribed in NATS (and consumers made) before the CONNACK
        for name, subject in session.consumers.items():
            await self._start_pulling(session, name, subject)
        # After the CONNACK (the session is attached to its connection by then).
        asyncio.get_running_loop().call_soon(self.pump, session)
        return session

    def _session(self, doc: dict[str, Any]) -> MeshSession:
        subs = [Subscription.from_json(item) for item in doc.get("subs", ())]
        session = MeshSession(
            str(doc["cid"]),
            expiry_interval=int(doc.get("exp") or 0),
            max_queued=self.max_queued,
            overflow=self.overflow,
            subscriptions={s.topic_filter: s for s in subs},
            disconnected_at=doc.get("disc"),
            owner=doc.get("own"),
            dirty=False,
            store=self,
            consumers=dict(doc.get("cons") or {}),
        )
        restore_released(session, doc)
        return session

    async def _write(
        self, client_id: str, change: dict[str, Any], *, epoch: int | None = None
    ) -> bool:
        """Update this node's claim of a session's document (False: no longer ours).

        A write of this node's that came in between (its subscriptions, its QoS 2
        flows) is read again and the change made on top of it. ``epoch``: only over
        that claim (a hand-off must not write over the claim of a reconnection)."""
        bucket = self.link.sessions
        for _ in range(CLAIM_ATTEMPTS):
            claim = self.claimed.get(client_id)
            if claim is None or bucket is None:
                return False
            _, current = claim
            if epoch is not None and current != epoch:
                return False
            entry = await bucket.get(self._key(client_id))
            doc = read_doc(entry)
            if entry is None or doc.get("node") != self.link.node or doc.get("epoch") != current:
                return False
            doc.update(change)
            try:
                new = await bucket.update(self._key(client_id), orjson.dumps(doc), entry.revision)
            except RevisionMismatch:
                continue
            if self.claimed.get(client_id) == claim:
                self.claimed[client_id] = (new, current)
            return True
        return False

    def _write_later(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    # -- the broker's hooks -------------------------------------------------------------------

    def subscriptions_changed(self, client_id: str) -> Awaitable[None] | None:
        """A SUBSCRIBE/UNSUBSCRIBE changed the session: its consumers and document follow,
        before the SUBACK/UNSUBACK (the returned awaitable). Changes that come while a
        previous one is being written are written together after it."""
        session = self.hosted.get(client_id)
        if session is None or not session.expiry_interval:
            return None
        return self._syncs.request(client_id)

    async def _sync(self, client_id: str) -> None:
        session = self.hosted.get(client_id)
        if session is not None:
            await self._subscriptions_changed(session)

    def released_changed(self, session: MeshSession, delivery: Delivery | None) -> None:
        """A QoS 2 flow of ``session`` got its PUBREC (``delivery``) or its PUBCOMP
        (``None``): the document follows; a PUBREC'd delivery is acknowledged in
        JetStream once it is written. Changes that come while a write is on the way
        are written together after it."""
        client_id = session.client_id
        if delivery is not None:
            self._after_release.setdefault(client_id, []).append((session, delivery))
        self._releases.request(client_id)

    async def _write_released(self, client_id: str) -> None:
        waiting = self._after_release.pop(client_id, [])
        session = self.hosted.get(client_id)
        if session is not None:
            try:
                await self._write(client_id, {"rel": _released(session)})
            except StateError as exc:
                self.throttle.warning("released", "QoS 2 state of %s not saved: %s", client_id, exc)
        for held, delivery in waiting:
            held.finished(delivery)  # a session gone meanwhile gave it back already

    async def _subscriptions_changed(self, session: MeshSession) -> None:
        link = self.link
        wanted: dict[str, str] = {}
        for sub in session.subscriptions.values():
            if sub.share is None and sub.qos > 0:
                for subject in filter_subjects(link.stored, sub.match_filter):
                    wanted[consumer_name(session.client_id, subject)] = subject
        gone = {n: s for n, s in session.consumers.items() if n not in wanted}
        new = {n: s for n, s in wanted.items() if n not in session.consumers}
        for name, subject in new.items():
            await self._create_consumer(session.client_id, name, subject)
            session.consumers[name] = subject
            await self._start_pulling(session, name, subject)
        for name in gone:
            session.consumers.pop(name, None)
        await self.delete_consumers(gone)
        try:
            await self._write(
                session.client_id,
                self._doc(session, node=link.node, epoch=self.claimed[session.client_id][1]),
            )
        except StateError as exc:
            raise MeshUnavailable(f"cannot keep the subscriptions: {exc}") from exc

    async def _create_consumer(self, client_id: str, name: str, subject: str) -> None:
        link = self.link
        config = api.ConsumerConfig(
            durable_name=name,
            description=client_id[:200],
            filter_subject=subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=api.DeliverPolicy.NEW,
        )
        try:
            await link.js.add_consumer(link.stream, config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10013:  # "consumer name already in use": it is ours already
                raise MeshUnavailable(f"cannot create consumer {name}: {exc}") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise MeshUnavailable(f"cannot create consumer {name}: {exc}") from exc

    async def delete_consumers(self, consumers: dict[str, str]) -> None:
        for name in consumers:
            await self._stop_pulling(name)
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self.link.js.delete_consumer(self.link.stream, name)

    def hand_off(
        self, session: Session, will: dict[str, Any] | None, will_at: float | None
    ) -> bool:
        """The connection of a persistent session ended: the mesh keeps the session (and a
        will waiting for its Will Delay) from now on, not this node. True: taken."""
        client_id = session.client_id
        if self.hosted.get(client_id) is not session:
            return False
        self._leave(client_id, session)
        epoch = self.claimed.get(client_id, (0, 0))[1]
        doc = self._doc(session, node=None, epoch=epoch)
        doc["will"] = will
        doc["will_at"] = will_at
        self._write_later(self._handed_off(client_id, doc, epoch))
        return True

    async def _handed_off(self, client_id: str, doc: dict[str, Any], epoch: int) -> None:
        """Write the handed-off document over this connection's claim (``epoch``) only:
        the client may have connected here again meanwhile, with a claim of its own."""
        try:
            await self._write(client_id, doc, epoch=epoch)
        except StateError as exc:
            self.throttle.warning(
                "handoff", "session %s not saved at disconnect: %s", client_id, exc
            )
        finally:
            claim = self.claimed.get(client_id)
            if claim is not None and claim[1] == epoch:
                del self.claimed[client_id]

    def dropped(self, session: Session) -> None:
        """The session ended (clean start, Session Expiry 0, a new owner): forget it
        everywhere (its consumers, its document)."""
        client_id = session.client_id
        if self.hosted.get(client_id) is session:
            self._leave(client_id, session)
        consumers = dict(session.consumers) if isinstance(session, MeshSession) else {}
        self._write_later(self._dropped(client_id, consumers))

    async def _dropped(self, client_id: str, consumers: dict[str, str]) -> None:
        await self.delete_consumers(consumers)
        claim = self.claimed.pop(client_id, None)
        bucket = self.link.sessions
        if claim is None or bucket is None or client_id in self.hosted:
            if claim is not None and client_id in self.hosted:
                self.claimed[client_id] = claim  # a new session of the same client, here
            return
        with contextlib.suppress(StateError):
            entry = await bucket.get(self._key(client_id))
            doc = read_doc(entry)
            if (
                entry is not None
                and doc.get("node") == self.link.node
                and (doc.get("epoch") == claim[1])
            ):
                await bucket.delete(self._key(client_id), expected_revision=entry.revision)

    def _leave(self, client_id: str, session: Session) -> None:
        """This node no longer has the session: stop pulling, give back what it held."""
        self.hosted.pop(client_id, None)
        if isinstance(session, MeshSession):
            for name in session.consumers:
                self._write_later(self._stop_pulling(name))
            held = session.give_back()
            if held:
                self._send([(reply, b"-NAK") for reply in held])
        if self.router is not None:
            self.router.detach(client_id, session)

    # -- takeovers -----------------------------------------------------------------------------

    async def _watch(self, revision: int) -> None:
        bucket = self.link.sessions
        assert bucket is not None
        while not self._closed:
            try:
                changes = cast(AsyncGenerator[Entry, None], bucket.watch(after=revision))
                async with contextlib.aclosing(changes):
                    async for entry in changes:
                        revision = entry.revision
                        self._changed(entry)
            except StateError as exc:
                if self._closed:
                    return
                self.throttle.warning("watch", "watching MQTT sessions failed: %s", exc)
                await asyncio.sleep(1.0)

    def _changed(self, entry: Entry) -> None:
        doc = read_doc(entry)
        client_id = doc.get("cid")
        if not isinstance(client_id, str) or client_id not in self.claimed:
            return
        _, epoch = self.claimed[client_id]
        if doc.get("node") == self.link.node and doc.get("epoch") == epoch:
            return
        if entry.deleted or (doc.get("epoch") or 0) < epoch:
            return
        # Claimed by another connection on another node (or closed by the janitor).
        self.claimed.pop(client_id, None)
        broker = self.broker
        session = self.hosted.get(client_id)
        if broker is not None and broker.take_over(client_id, doc.get("node")):
            self.counters["taken_over"] += 1
            log.info("client %s connected to node %s: taken over here", client_id, doc.get("node"))
        if session is not None:
            self._leave(client_id, session)
            if broker is not None:
                broker.forget(client_id, session)

    # -- stored deliveries ------------------------------------------------------------------------

    async def _start_pulling(self, session: MeshSession, name: str, subject: str) -> None:
        link = self.link
        await self._stop_pulling(name)
        self._generation += 1
        inbox = f"{link.prefix}.r.{link.node_token}.{name}.{self._generation}"
        puller = Puller(session, name, subject, inbox)

        async def pulled(message: Any) -> None:
            self._pulled(puller, message)

        try:
            puller.sub = await link.nc.subscribe(inbox, cb=pulled)
        except nats.errors.Error as exc:
            raise MeshUnavailable(f"cannot subscribe for {name}: {exc}") from exc
        self._pullers[name] = puller
        self._pull(puller)

    async def _stop_pulling(self, name: str) -> None:
        puller = self._pullers.pop(name, None)
        if puller is not None and puller.sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await puller.sub.unsubscribe()

    def _room(self, session: MeshSession) -> int:
        broker = self.broker
        conn = broker.online(session.client_id) if broker is not None else None
        if conn is None or not conn.connected:
            return 0
        quota = conn.conn.send_quota or PULL_BATCH
        return max(0, min(PULL_BATCH, quota - len(session.inflight) - len(session.queue)))

    def _pull(self, puller: Puller) -> None:
        """Ask for as many as the session has room for, if no request is open (or the
        open one is lost: :data:`PULL_LOST_AFTER`; the sweeper asks every few seconds)."""
        if self._pullers.get(puller.consumer) is not puller:
            return
        now = asyncio.get_running_loop().time()
        if puller.outstanding and now - puller.asked_at < PULL_LOST_AFTER:
            return
        room = self._room(puller.session)
        if not room:
            return
        puller.outstanding = room
        puller.asked_at = now
        request = orjson.dumps({"batch": room, "expires": int(PULL_EXPIRES * 1e9)})
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.link.stream}.{puller.consumer}"
        self._send([(subject, request, puller.inbox)])

    def pump(self, session: Session) -> None:
        """The session has room again (a flow ended): pull more for it."""
        if isinstance(session, MeshSession):
            for name in session.consumers:
                puller = self._pullers.get(name)
                if puller is not None:
                    self._pull(puller)

    def _pulled(self, puller: Puller, message: Any) -> None:
        headers = message.headers
        status = headers.get("Status") if headers else None
        if status is not None:
            if status != "100":  # 404/408/409: the request ended
                puller.outstanding = 0
                if status in ("404", "408"):
                    self._pull(puller)
            return
        reply = message.reply
        if (
            self._pullers.get(puller.consumer) is not puller
            or self.hosted.get(puller.session.client_id) is not puller.session
        ):
            self._send([(reply, b"-NAK")])
            return
        puller.outstanding = max(0, puller.outstanding - 1)
        self._deliver(puller.session, message)
        if not puller.outstanding:
            self._pull(puller)

    def _deliver(self, session: MeshSession, message: Any) -> None:
        reply = message.reply
        try:
            seq = stream_sequence(reply)
            mqtt, _, _ = decode(message.data)
        except (ValueError, IndexError, KeyError, TypeError, orjson.JSONDecodeError):
            self.throttle.warning("undecodable", "not an MQTT message in %s", self.link.stream)
            self._send([(reply, b"+ACK")])
            return
        held = session.by_seq.get(seq)
        if held is not None:
            session.acks[id(held)].append(reply)  # a copy for an overlapping subscription
            return
        if seq in session.recent:
            self._send([(reply, b"+ACK")])
            return
        broker = self.broker
        conn = broker.online(session.client_id) if broker is not None else None
        if conn is None:
            self._send([(reply, b"-NAK")])
            return
        client_id = session.client_id
        topic = mqtt.topic
        subs = [
            s
            for s in session.subscriptions.values()
            if s.share is None
            and not (s.no_local and mqtt.origin == client_id)
            and topic_matches(s.match_filter, topic)
        ]
        now = time.time()
        if not subs or mqtt.expired(now) or not conn.may_read(topic):
            self._send([(reply, b"+ACK")])
            return
        qos = min(mqtt.qos, max(s.qos for s in subs))
        retain = mqtt.retain and any(s.retain_as_published for s in subs)
        ids = tuple(s.identifier for s in subs if s.identifier)
        parts = PublishParts(mqtt, now)
        self.counters["delivered"] += 1
        if not qos:
            conn.deliver(parts, 0, retain, ids)
            self._send([(reply, b"+ACK")])
            return
        delivery = Delivery(mqtt, qos, retain, ids)
        session.track(delivery, reply, seq)
        conn.conn.deliver(delivery, parts)
        conn.wake()

    # -- acks and publishes, batched per loop iteration ---------------------------------------

    def ack(self, replies: list[str]) -> None:
        self._send([(reply, b"+ACK") for reply in replies])

    def _send(self, items: list[tuple[Any, ...]]) -> None:
        self._acks.extend(items)  # type: ignore[arg-type]
        if not self._acks_scheduled:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._acks_scheduled = False
        items, self._acks = self._acks, []
        if items and self.link.nc is not None:
            self._write_later(self._publish_all(items))

    async def _publish_all(self, items: list[Any]) -> None:
        nc = self.link.nc
        try:
            for item in items:
                if len(item) == 3:
                    await nc.publish(item[0], item[1], reply=item[2])
                else:
                    await nc.publish(item[0], item[1])
        except (nats.errors.Error, OSError) as exc:
            # Unacknowledged messages come again after ACK_WAIT: at least once.
            self.throttle.warning("ack", "acks to JetStream failed: %s", exc)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for session in list(self.hosted.values()):
                session.sweep()
                held = [r for replies in session.acks.values() for r in replies]
                if held:
                    self._send([(reply, b"+WPI") for reply in held])  # still being delivered
                self.pump(session)


class _Coalesced:
    """Per key, at most one task running ``work(key)``, again as long as new requests
    came while it ran: changes that come during a write are written together after it."""

    def __init__(
        self,
        work: Callable[[str], Awaitable[None]],
        spawn: Callable[[Awaitable[None]], asyncio.Task[Any]],
    ) -> None:
        self._work = work
        self._spawn = spawn
        self._requested: set[str] = set()
        self._running: dict[str, asyncio.Task[Any]] = {}

    def request(self, key: str) -> asyncio.Task[Any]:
        """``work(key)`` will run after this call; the task that will have run it."""
        self._requested.add(key)
        task = self._running.get(key)
        if task is None or task.done():
            task = self._running[key] = self._spawn(self._run(key))
        return task

    async def _run(self, key: str) -> None:
        try:
            while key in self._requested:
                self._requested.discard(key)
                await self._work(key)
        finally:
            self._running.pop(key, None)


def _released(session: Session) -> dict[str, int | None]:
    """The document's ``rel``: packet id -> stream sequence of QoS 2 flows at PUBREL."""
    released = session.released if isinstance(session, MeshSession) else {}
    return {str(pid): seq for pid, seq in released.items()}
