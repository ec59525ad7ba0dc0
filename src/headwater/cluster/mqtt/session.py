"""A persistent session of a mesh, as one node holds it: its deliveries come from JetStream.

How this works: a :class:`MeshSession` is the broker's
:class:`~headwater.mqtt.session.Session` plus what ties each QoS 1/2
delivery to the JetStream message it came from (its reply subject, to
acknowledge it there, and its stream sequence). When a delivery leaves the
session (the device acknowledged it, the overflow policy dropped it, it
expired) the session acknowledges it in JetStream through its ``store``
(:class:`~headwater.cluster.mqtt.sessions.MeshSessions`) and asks for more;
when the session leaves the node, :meth:`MeshSession.give_back` returns what
is still held, to be given back (nak) so that the next node sends it first.
A message that matches several subscriptions comes once per consumer: the
copies are acknowledged with the first, and the last
:data:`RECENT_SEQUENCES` sequences delivered are remembered so that a late
copy is acknowledged, not delivered again. A :class:`Puller` keeps one pull
request open on one consumer while its session is here.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from headwater.cluster.mqtt.link import token
from headwater.mqtt.session import Delivery, Message, Outgoing, Session
from headwater.state import Entry

__all__ = [
    "RECENT_SEQUENCES",
    "MeshSession",
    "Puller",
    "consumer_name",
    "read_doc",
    "restore_released",
]

RECENT_SEQUENCES: Final = 256
"""Stream sequences a session remembers as delivered (copies from overlapping
subscriptions' consumers that arrive later are acknowledged, not delivered)."""


@dataclass(slots=True)
class MeshSession(Session):
    """A session whose QoS 1/2 deliveries came from JetStream and are acked there."""

    store: Any = None
    #: id(Delivery) -> the JetStream reply subjects to ack when it ends.
    acks: dict[int, list[str]] = field(default_factory=dict)
    #: stream sequence -> its delivery; and back.
    by_seq: dict[int, Delivery] = field(default_factory=dict)
    seq_of: dict[int, int] = field(default_factory=dict)
    recent: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_SEQUENCES)
    )
    #: Consumer name -> its filter subject (persistent sessions' QoS 1/2 subscriptions).
    consumers: dict[str, str] = field(default_factory=dict)
    #: Packet id -> stream sequence (or None) of QoS 2 deliveries the device PUBREC'd and
    #: that wait for its PUBCOMP: kept in the session's document, so that the node
    #: that resumes the session sends their PUBREL again [MQTT-4.4.0-1].
    released: dict[int, int | None] = field(default_factory=dict)

    def track(self, delivery: Delivery, reply: str, seq: int) -> None:
        self.acks[id(delivery)] = [reply]
        self.by_seq[seq] = delivery
        self.seq_of[id(delivery)] = seq

    def finished(self, delivery: Delivery) -> None:
        """``delivery`` left the session (acknowledged, dropped, expired): ack it in JetStream."""
        key = id(delivery)
        replies = self.acks.pop(key, None)
        if replies is None:
            return
        seq = self.seq_of.pop(key, None)
        if seq is not None:
            self.by_seq.pop(seq, None)
            self.recent.append(seq)
        self.store.ack(replies)
        self.store.pump(self)  # room again: pull the next ones

    def puback(self, packet_id: int) -> Any:
        out = Session.puback(self, packet_id)
        if out is not None:
            self.finished(out.delivery)
        return out

    def pubcomp(self, packet_id: int) -> Any:
        out = Session.pubcomp(self, packet_id)
        if out is not None:
            if packet_id in self.released:
                del self.released[packet_id]
                self.store.released_changed(self, None)
            self.finished(out.delivery)
        return out

    def pubrec(self, packet_id: int, failed: bool) -> Any:
        out = Session.pubrec(self, packet_id, failed)
        if out is None:
            return None
        if failed or not self.expiry_interval:
            self.finished(out.delivery)  # refused for good, or a session that ends here
        else:
            # The device has it: the PUBREL state goes into the document first, then the
            # message is acked in JetStream (store.released_changed calls finished).
            self.released[packet_id] = self.seq_of.get(id(out.delivery))
            self.store.released_changed(self, out.delivery)
        return out

    def drop_inflight(self, packet_id: int) -> None:
        out = self.inflight.get(packet_id)
        Session.drop_inflight(self, packet_id)
        if out is not None:
            self.finished(out.delivery)

    def discarded(self, delivery: Delivery) -> None:
        self.finished(delivery)  # dropped (overflow) or expired [MQTT-3.3.2-5]: acked

    def sweep(self) -> None:
        """Ack what left the session by another way (an ACL veto while pumping)."""
        if not self.acks:
            return
        live = {id(o.delivery) for o in self.inflight.values()} | {id(d) for d in self.queue}
        for key in [k for k in self.acks if k not in live]:
            replies = self.acks.pop(key)
            seq = self.seq_of.pop(key, None)
            if seq is not None:
                self.by_seq.pop(seq, None)
            self.store.ack(replies)

    def give_back(self) -> list[str]:
        """Every reply still held, oldest first (to be nak'ed: the next node sends them)."""
        held = [
            reply
            for seq in sorted(self.by_seq)
            for reply in self.acks.get(id(self.by_seq[seq]), ())
        ]
        self.acks.clear()
        self.by_seq.clear()
        self.seq_of.clear()
        return held


RELEASED_PLACEHOLDER: Final = Delivery(Message("", b"", 2), 2, False)
"""The delivery of a QoS 2 flow resumed at its PUBREL: only the PUBREL is sent again
[MQTT-4.3.3-6 (5.0)], so the message itself is not kept."""


def restore_released(session: MeshSession, doc: dict[str, Any]) -> None:
    """Put the document's QoS 2 flows waiting for their PUBCOMP back in flight."""
    for pid, seq in dict(doc.get("rel") or {}).items():
        packet_id = int(pid)
        session.inflight[packet_id] = Outgoing(packet_id, RELEASED_PLACEHOLDER, released=True)
        session.released[packet_id] = seq
        if seq is not None:
            session.recent.append(int(seq))  # a copy JetStream offers again is acked, not sent


class Puller:
    """Keeps a pull request open on one consumer while its session is here.

    Its replies come to an inbox of its own: unsubscribing it when the session
    leaves makes JetStream drop the request still open (a request whose reply
    subject nobody listens to is dropped), so nothing more comes here.
    """

    __slots__ = ("asked_at", "consumer", "inbox", "outstanding", "session", "sub", "subject")

    def __init__(self, session: MeshSession, consumer: str, subject: str, inbox: str) -> None:
        self.session = session
        self.consumer = consumer
        self.subject = subject
        self.inbox = inbox
        #: Messages the open request may still bring (0: no request open).
        self.outstanding = 0
        #: When the open request was sent (the event loop's clock).
        self.asked_at = 0.0
        self.sub: Any = None


def consumer_name(client_id: str, subject: str) -> str:
    """The durable consumer of one QoS 1/2 subscription subject of a persistent session."""
    return f"s{token(client_id)[:20]}_{hashlib.sha256(subject.encode()).hexdigest()[:10]}"


def read_doc(entry: Entry | None) -> dict[str, Any]:
    """A session document of the sessions bucket ({} if absent, deleted or unreadable)."""
    if entry is None or entry.deleted:
        return {}
    try:
        doc = orjson.loads(entry.value)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
