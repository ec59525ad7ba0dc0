"""The embedded MQTT 3.1.1 / 5.0 broker: listeners, sessions, wills and routing, composed.

How this works: :class:`MqttBroker` binds its listeners
(:mod:`headwater.mqtt.transports`) and serves each accepted connection with a
:class:`~headwater.mqtt._handler.ClientHandler`, which drives a sans-IO
:class:`~headwater.mqtt.connection.ServerConnection`. What outlives a
connection lives here:

* sessions (:class:`~headwater.mqtt.session.Session`): attached at CONNECT
  (a session belongs to the user who created it), taken over by a second
  connection with the same client id, expired after their Session Expiry
  Interval, and persisted through a :class:`~headwater.mqtt.stores.SessionStore`
  (SQLite in the data directory by default) on an autosave interval and at
  shutdown, together with the retained messages
  (:class:`~headwater.mqtt.retained.RetainedStore`);
* wills, published when a connection ends without DISCONNECT (after the Will
  Delay, or when the session ends, whichever comes first);
* routing: :meth:`MqttBroker.route` asks the :class:`~headwater.mqtt.router.Router`
  (a local subscription tree by default) who receives a message and hands it
  to each receiver's handler, framed from parts encoded once per message
  (:class:`~headwater.mqtt.connection.PublishParts`), or queues it in the
  session of a client that is offline.

Statement ids are quoted as [MQTT-x.y.z-n] with the version when they differ.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from headwater.logs import Throttle
from headwater.mqtt._handler import ClientHandler
from headwater.mqtt._os import TRIM_AFTER_BYTES, TRIM_DELAY, fd_budget, malloc_trim
from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.config import (
    DEFAULT_MAX_INCOMPLETE_BYTES,
    Authenticator,
    BrokerConfig,
    BrokerStats,
    ClientInfo,
    Hooked,
    Listener,
    OnConnect,
    OnDisconnect,
    OnPublish,
    OnSubscribe,
    PeerCertificate,
    PublishHook,
    Refusal,
    server_tls_context,
)
from headwater.mqtt.connection import PublishParts, ServerLimits
from headwater.mqtt.hooks import EachPublish, PendingWill, info_json
from headwater.mqtt.packets import ReasonCode, Will
from headwater.mqtt.retained import RetainedStore
from headwater.mqtt.router import LocalRouter, Router, SpanningRouter
from headwater.mqtt.session import NEVER_EXPIRES, Delivery, Message, Session
from headwater.mqtt.stores import (
    SessionStore,
    SharedSessionStore,
    SqliteSessionStore,
    StoreChanges,
    dump,
)
from headwater.mqtt.topics import validate_topic_name
from headwater.mqtt.transports import WS_CLOSE_TIMEOUT, Bound, Link, listen

__all__ = [
    "DEFAULT_MAX_INCOMPLETE_BYTES",
    "BrokerConfig",
    "BrokerStats",
    "ClientInfo",
    "Listener",
    "MqttBroker",
    "Refusal",
    "server_tls_context",
]

logger = logging.getLogger("headwater.mqtt.broker")


class MqttBroker:
    """An MQTT 3.1.1 / 5.0 broker; use as ``async with MqttBroker(config) as broker``.

    ``router`` and ``store`` replace the local subscription tree and the SQLite
    session store (``config.data_dir``) with others of the same interface.
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        on_publish: OnPublish | None = None,
        hook: PublishHook | None = None,
        on_connect: OnConnect | None = None,
        on_disconnect: OnDisconnect | None = None,
        on_subscribe: OnSubscribe | None = None,
        router: Router | None = None,
        store: SessionStore | None = None,
        authenticators: Sequence[Authenticator] = (),
    ) -> None:
        self.config = config = config or BrokerConfig()
        self.stats = BrokerStats()
        self.limits = ServerLimits(
            max_packet_size=config.max_packet_size,
            receive_maximum=config.receive_maximum,
            topic_alias_maximum=config.topic_alias_maximum,
            maximum_qos=config.maximum_qos,
            retain_available=config.retain_available,
            max_inflight=config.max_inflight,
            server_keep_alive=config.server_keep_alive,
        )
        #: Asked first at every CONNECT (a device registry), then the password file.
        self.authenticators: list[Authenticator] = list(authenticators)
        #: Authentication and authorisation in force; :meth:`reload_auth` swaps them.
        self.passwords: PasswordFile | None = config.passwords
        self.acl: Acl | None = config.acl
        #: Bumped by every :meth:`reload_auth`: connections re-check their
        #: subscriptions against the new ACL at their next delivery.
        self.acl_generation = 0
        #: A peer's misbehaviour is logged once per kind and interval, with a count.
        self.throttle = Throttle(logger)
        #: Bytes held by all connections for packets still arriving.
        self._incomplete = 0
        #: Sockets open at most (connected clients and those yet to CONNECT).
        self.max_sockets = fd_budget()
        if on_publish is not None and hook is not None:
            raise ValueError("give on_publish or hook, not both")
        #: What sees selected PUBLISHes before they are acknowledged and routed.
        self.hook: PublishHook | None = hook if on_publish is None else EachPublish(on_publish)
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_subscribe = on_subscribe
        self.router: Router = router if router is not None else LocalRouter()
        #: The router, when it spans several processes (it learns its broker below).
        self.spanning_router = self.router if isinstance(self.router, SpanningRouter) else None
        self._retained = RetainedStore(config.max_retained)
        self._sessions: dict[str, Session] = {}
        self._online: dict[str, ClientHandler] = {}
        self._connections: set[ClientHandler] = set()
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._wills: dict[str, PendingWill] = {}
        self._deleted_sessions: set[str] = set()
        self._store: SessionStore | None = store
        self._shared = store if isinstance(store, SharedSessionStore) else None
        self._bound: list[Bound] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._autosave: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._stopping = False
        self._id_counter = itertools.count(1)
        self._id_prefix = f"hw-{secrets.token_hex(4)}-"
        self._trim: asyncio.TimerHandle | None = None
        #: The message being routed, and its encoded parts once someone needs them.
        self._routed: Message | None = None
        self._routed_parts: PublishParts | None = None
        if self.spanning_router is not None:
            self.spanning_router.bind(self)

    # -- public API ---------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[Listener, str, int]]:
        """Where each listener is bound (the real port when configured with port 0)."""
        return [(b.listener, b.host, b.port) for b in self._bound]

    def port(self, index: int = 0) -> int:
        return self._bound[index].port

    @property
    def sessions(self) -> dict[str, Session]:
        """Live view of the sessions (read only, for diagnostics and tests)."""
        return self._sessions

    @property
    def retained(self) -> RetainedStore:
        return self._retained

    @property
    def connected_clients(self) -> list[str]:
        return list(self._online)

    @property
    def incomplete_bytes(self) -> int:
        """Bytes held across connections for packets still arriving."""
        return self._incomplete

    def reload_auth(self, passwords: PasswordFile | None, acl: Acl | None) -> None:
        """Use a new password file and ACL from now on, without dropping anyone.

        New CONNECTs authenticate against ``passwords``; every later PUBLISH,
        SUBSCRIBE and delivery is checked against ``acl`` (connected clients'
        subscriptions included: what they may no longer read stops reaching them).
        """
        self.passwords = passwords
        self.acl = acl
        self.acl_generation += 1
        for conn in self._connections:
            conn._all_readable = False

    def released(self, held: int) -> None:
        """A connection gave back ``held`` bytes of incomplete packets; after a
        large one, hand the freed memory back to the system (debounced)."""
        if held >= TRIM_AFTER_BYTES and self._trim is None and not self._stopping:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        malloc_trim()

    def disconnect(self, *, user: str | None = None, client_id: str | None = None) -> int:
        """Disconnect the clients authenticated as ``user`` (or with ``client_id``) now.

        A device disabled in its registry is cut off this way: MQTT 5 clients
        get DISCONNECT 0x87 Not authorized. Returns how many were connected.
        """
        gone = [
            conn
            for conn in self._connections
            if conn.info is not None
            and (user is None or conn.info.user == user)
            and (client_id is None or conn.client_id == client_id)
        ]
        for conn in gone:
            conn.disconnect(ReasonCode.NOT_AUTHORIZED)
        return len(gone)

    @property
    def queue_dropped(self) -> int:
        """Messages dropped by session queue overflow policies, over all sessions."""
        return sum(s.dropped for s in self._sessions.values())

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        content_type: str | None = None,
        payload_format_indicator: int | None = None,
        message_expiry_interval: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Publish from inside the process, as if a client had (without the on_publish hook)."""
        validate_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos} is not 0, 1 or 2")
        expires = None if message_expiry_interval is None else time.time() + message_expiry_interval
        message = Message(
            topic,
            bytes(payload),
            min(qos, self.config.maximum_qos),
            retain,
            payload_format_indicator,
            expires,
            content_type,
            response_topic,
            correlation_data,
            tuple(user_properties),
        )
        spanning = self.spanning_router
        if spanning is not None and (message.qos or message.retain):
            await spanning.persist([message])  # a router spanning processes stores it first
        self.route(message)

    # -- what a router or store spanning several processes asks of the broker ------------------

    def online(self, client_id: str) -> ClientHandler | None:
        """The connection of ``client_id`` on this broker, if it is connected here."""
        return self._online.get(client_id)

    def deliver(
        self, client_id: str, message: Message, granted: int, rap: bool, ids: tuple[int, ...]
    ) -> None:
        """Deliver ``message`` to one client as routing would (a shared group's choice)."""
        self._routed = message
        self._routed_parts = None
        self._deliver_routed(client_id, granted, rap, ids)

    def take_over(self, client_id: str, by: object = None) -> bool:
        """Another process claimed ``client_id``'s session for a new connection: close
        ours as a takeover [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)]. False: not here."""
        conn = self._online.pop(client_id, None)
        if conn is None:
            return False
        conn.take_over()
        self._connection_lost(conn, takeover=True)
        return True

    def forget(self, client_id: str, session: Session) -> None:
        """The session lives elsewhere now: drop this process's copy (not the session)."""
        if self._sessions.get(client_id) is session:
            del self._sessions[client_id]
        handle = self._expiry.pop(client_id, None)
        if handle is not None:
            handle.cancel()

    def publish_will(self, message: Message, info: ClientInfo) -> None:
        """Publish a will that a shared store kept (its node is gone, its delay passed)."""
        self._publish_will(PendingWill(message, info, self.acl))

    async def claim(
        self, conn: ClientHandler, client_id: str, clean_start: bool, owner: str, will: Will | None
    ) -> None:
        """Before a connection attaches: a store shared by several processes hands over
        the session (resumed from wherever it was). Raises RoutingUnavailable."""
        shared = self._shared
        if shared is None:
            return
        kept = None
        if will is not None:
            info = ClientInfo(
                client_id,
                conn.username,
                conn.conn.version,
                conn.listener.label,
                conn.link.peer,
                owner,
            )
            kept = {
                "message": self._will_message(will, client_id).to_json(),
                "delay": (will.properties.will_delay_interval or 0) if conn.v5 else 0,
                "info": info_json(info),
            }
        session = await shared.claim(client_id, clean_start, owner, kept)
        if session is not None:
            self._sessions[client_id] = session

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttBroker:
        config = self.config
        if self._store is None and config.data_dir is not None:
            self._store = SqliteSessionStore(Path(config.data_dir))
        if self._store is not None:
            await self._load()
        else:
            # Nothing persists changes: deleted sessions and retained topics are not
            # recorded (the sets would only grow, one id per client ever seen).
            self._retained.tracked = False
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            for listener in config.listeners:
                bound = await listen(
                    listener,
                    self._serve,
                    max_packet_size=config.max_packet_size,
                    stopping=lambda: self._stopping,
                )
                self._bound.append(bound)
            if self._store is not None:
                self._autosave = self._tg.create_task(self._autosave_loop())
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        for bound in self._bound:
            bound.close()
        for conn in list(self._connections):
            conn.disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WS_CLOSE_TIMEOUT + 1)
        for bound in self._bound:
            await bound.wait_closed()
        if self._autosave is not None:
            self._autosave.cancel()
        if self._trim is not None:
            self._trim.cancel()
        for handle in self._expiry.values():
            handle.cancel()
        for will in self._wills.values():
            if will.handle is not None:
                will.handle.cancel()
        if self._tg is not None:
            tg, self._tg = self._tg, None
            await tg.__aexit__(None, None, None)
        if self._store is not None:
            now = time.time()
            for session in self._sessions.values():
                if session.disconnected_at is None:
                    session.disconnected_at = now
                    session.dirty = True
            store, self._store = self._store, None
            async with self._save_lock:
                await store.save(self._changes())
            await store.close()

    async def _serve(
        self, link: Link, listener: Listener, certificate: PeerCertificate | None
    ) -> None:
        if self._stopping:
            link.close()
            return
        sockets = len(self._connections)
        pending = sockets - len(self._online)
        if sockets >= self.max_sockets or pending >= self.config.max_pending_connections:
            self.stats.connections_refused += 1
            self.throttle.warning(
                "socket-cap",
                "MQTT connection limit reached (%d sockets, %d before CONNACK): "
                "closing the new one from %s",
                sockets,
                pending,
                link.peer,
            )
            link.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = ClientHandler(self, link, listener, certificate)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._tasks.discard(task)

    # -- sessions -----------------------------------------------------------------------------

    def _assign_client_id(self) -> str:
        while True:
            candidate = f"{self._id_prefix}{next(self._id_counter)}"
            if candidate not in self._sessions and candidate not in self._online:
                return candidate

    def _attach(
        self, conn: ClientHandler, clean_start: bool, expiry: int, owner: str
    ) -> tuple[Session, bool]:
        """Bind ``conn`` to its session; returns (session, session present).

        A session belongs to the user who created it. Another user connecting
        with its client id takes the connection over, as MQTT requires
        [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)], but not the session: it gets a
        new, clean one (Session Present 0) and the old one is discarded, so its
        subscriptions and queued messages never reach someone else. Refusing
        the CONNECT instead would lock a client id forever to whoever first
        used it (3.1.1 sessions never expire), so a device whose credentials
        were rotated could never reconnect. Mosquitto resumes the session for
        the new user and drops the queued messages its ACL forbids
        (``db__check_acl_of_all_messages`` in ``connect__on_authorised``); EMQX
        resumes it unchecked. Besides this rule every delivery is checked
        against the receiver's ACL (:meth:`~headwater.mqtt._handler.ClientHandler.may_read`).
        """
        cid = conn.client_id
        now = time.time()
        existing = self._sessions.get(cid)
        # Whether the session this connection finds ends now instead of being resumed:
        # Clean Start, another owner, its expiry passed, or Session Expiry 0 (a session
        # that ends with its connection, which a takeover is closing).
        ends = existing is not None and (
            clean_start
            or existing.owner not in (None, owner)
            or existing.expiry_interval == 0
            or existing.is_expired(now)
        )
        old = self._online.pop(cid, None)
        if old is not None:
            # [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)] takeover: DISCONNECT 0x8E, close.
            old.take_over()
            self._connection_lost(old, takeover=True, ends=ends)
        pending = self._wills.pop(cid, None)
        if pending is not None:
            if pending.handle is not None:
                pending.handle.cancel()
            if ends:
                # [MQTT-3.1.2-8 (5.0)] the will goes when its delay passes or the session
                # ends, whichever comes first: this connection ends it.
                self._publish_will(pending)
            # Else [MQTT-3.1.3-9 (5.0)] reconnected to the session within the Will Delay:
            # no will.
        handle = self._expiry.pop(cid, None)
        if handle is not None:
            handle.cancel()
        session = self._sessions.get(cid)
        if session is not None and ends:
            if not clean_start and session.owner not in (None, owner):
                self.stats.sessions_reset_owner += 1
                logger.warning(
                    "client id %r connected as %s: the session of %s is discarded, not resumed",
                    cid,
                    owner,
                    session.owner,
                )
            # Clean start discards any existing session [MQTT-3.1.2-6 (3.1.1) / 3.1.2-4 (5.0)],
            # and one of Session Expiry 0 ended with its connection (taken over just now):
            # its state is never reused [MQTT-3.1.2-6 (3.1.1)], Session Present 0.
            self._drop_session(session)
            session = None
        present = session is not None
        if session is None:
            if self._shared is not None:
                session = self._shared.new_session(cid)
            else:
                session = Session(
                    cid,
                    max_queued=self.config.max_queued_messages,
                    overflow=self.config.overflow_policy,
                )
            self._sessions[cid] = session
            self._deleted_sessions.discard(cid)
        session.expiry_interval = expiry
        session.disconnected_at = None
        # A session saved before owners were recorded is adopted by whoever
        # resumes it; the per-delivery ACL check filters what it queued.
        session.owner = owner
        session.dirty = True
        self._online[cid] = conn
        return session, present

    def _drop_session(self, session: Session) -> None:
        cid = session.client_id
        for sub in session.subscriptions.values():
            self.router.unsubscribe(cid, sub)
        if self._sessions.get(cid) is session:
            del self._sessions[cid]
            if self._store is not None:
                self._deleted_sessions.add(cid)
        if self._shared is not None:
            self._shared.dropped(session)

    def _end_session(self, cid: str) -> None:
        """The session expired [MQTT-4.1.0-2 (5.0)]: drop it, publish a delayed will."""
        self._expiry.pop(cid, None)
        session = self._sessions.get(cid)
        if session is not None and cid not in self._online:
            self._drop_session(session)
            logger.debug("session %s expired", cid)
        pending = self._wills.pop(cid, None)
        if pending is not None:
            # [MQTT-3.1.2-8 (5.0)] the will goes out at the end of the session at the
            # latest, even if the Will Delay has not passed.
            if pending.handle is not None:
                pending.handle.cancel()
            self._publish_will(pending)

    async def _connection_closed(self, conn: ClientHandler) -> None:
        if not conn.taken_over and self._online.get(conn.client_id) is conn:
            del self._online[conn.client_id]
            self._connection_lost(conn, takeover=False)
        if conn.info is not None and self._on_disconnect is not None:
            try:
                await self._on_disconnect(conn.info)
            except Exception:
                logger.exception("on_disconnect hook failed for %s", conn.client_id)

    def _connection_lost(self, conn: ClientHandler, takeover: bool, ends: bool = False) -> None:
        """Handle the will and the session of a connection that just ended. ``ends``: a
        takeover by a connection that does not resume the session (it ends now)."""
        cid = conn.client_id
        session = conn.session
        will, conn.will = conn.will, None
        delay = 0
        if will is not None and conn.info is not None and not self._stopping:
            delay = (will.properties.will_delay_interval or 0) if conn.v5 else 0
            pending = PendingWill(self._will_message(will, cid), conn.info, conn.acl)
            if delay and session is not None and session.expiry_interval and not takeover:
                # [MQTT-3.1.2-8 (5.0)] publish after the Will Delay (or at session end).
                pending.handle = asyncio.get_running_loop().call_later(delay, self._fire_will, cid)
                self._wills[cid] = pending
            elif not (delay and takeover and not ends):
                # [MQTT-3.1.2-8 (3.1.1)] the connection closed without DISCONNECT; with a
                # Will Delay, a takeover that resumes the session sends none
                # [MQTT-3.1.3-9 (5.0)], one that ends it sends it now [MQTT-3.1.2-8 (5.0)].
                self._publish_will(pending)
        if takeover or session is None:
            return
        if session.expiry_interval == 0:
            # Session Expiry 0 (or 3.1.1 CleanSession=1): the session ends with the
            # connection [MQTT-3.1.2-6 (3.1.1) / MQTT-3.1.2-23 (5.0) for the opposite].
            self._end_session(cid)
            return
        session.disconnected_at = time.time()
        session.dirty = True
        shared = self._shared
        if shared is not None:
            # A store shared by several processes keeps the session (and a will
            # waiting for its Will Delay) while the client is away, not this process.
            waiting = self._wills.pop(cid, None)
            kept = None
            will_at = None
            if waiting is not None:
                if waiting.handle is not None:
                    waiting.handle.cancel()
                kept = waiting.as_json()
                will_at = session.disconnected_at + delay
            if shared.hand_off(session, kept, will_at):
                self._sessions.pop(cid, None)
                return
        if session.expiry_interval != NEVER_EXPIRES:
            self._expiry[cid] = asyncio.get_running_loop().call_later(
                session.expiry_interval, self._end_session, cid
            )

    def _will_message(self, will: Will, cid: str) -> Message:
        return Message.from_properties(
            will.topic,
            will.payload,
            min(will.qos, self.config.maximum_qos),
            will.retain and self.config.retain_available,
            will.properties,
            cid,
            time.time(),
        )

    def _fire_will(self, cid: str) -> None:
        pending = self._wills.pop(cid, None)
        if pending is not None:
            self._publish_will(pending)

    def _publish_will(self, pending: PendingWill) -> None:
        message, info = pending.message, pending.info
        acl = pending.acl
        if acl is not None and not acl.can_publish(info.username, info.client_id, message.topic):
            self.stats.denied_publish += 1
            logger.warning("denied will of %s to %r", info.client_id, message.topic)
            return
        hook = self.hook
        if hook is None or self._tg is None or not hook.selects(message.topic):
            self.route(message)
            return

        async def hooked() -> None:
            try:
                [code] = await hook(info, [Hooked(message, None, False)])
            except Exception:
                logger.exception("the publish hook failed for the will of %s", info.client_id)
                code = ReasonCode.UNSPECIFIED_ERROR
            if code is None or (code.code if isinstance(code, Refusal) else code) < 0x80:
                self.route(message)
            else:
                self.stats.hook_failures += 1

        self._tg.create_task(hooked())

    # -- routing ------------------------------------------------------------------------------

    def route(self, message: Message) -> None:
        """Store (if retained) and deliver one message to every matching session."""
        if message.retain:
            # [MQTT-3.3.1-5 (3.1.1) / 3.3.1-5 (5.0)] store it (an empty payload deletes).
            self._retained.set(message)
        # The router calls _deliver_routed for each receiver, during this call only.
        self._routed = message
        self._routed_parts = None
        self.router.route(message, self._deliver_routed, self._online.__contains__)

    def _deliver_routed(self, cid: str, granted: int, rap: bool, ids: tuple[int, ...]) -> None:
        message = self._routed
        assert message is not None
        # [MQTT-3.8.4-6 (3.1.1) / 3.8.4-8 (5.0)] delivered at min(published, granted).
        qos = message.qos if message.qos < granted else granted
        # [MQTT-3.3.1-9 (3.1.1)] live forwarding clears RETAIN; [MQTT-3.3.1-12/13 (5.0)]
        # unless the subscription asked for Retain As Published.
        retain = message.retain and rap
        conn = self._online.get(cid)
        if conn is not None:
            parts = self._routed_parts
            if parts is None:
                parts = self._routed_parts = PublishParts(message, time.time())
            conn.deliver(parts, qos, retain, ids)
            return
        if not qos:
            self.stats.dropped_offline_qos0 += 1
            return
        session = self._sessions.get(cid)
        if session is not None:
            # [MQTT-3.1.2-5 (3.1.1)] QoS 1/2 messages are stored for an offline session.
            session.enqueue(Delivery(message, qos, retain, ids))

    # -- persistence --------------------------------------------------------------------------

    async def _load(self) -> None:
        assert self._store is not None
        stored = await self._store.load(
            max_queued=self.config.max_queued_messages, overflow=self.config.overflow_policy
        )
        now = time.time()
        self._retained.load(m for m in stored.retained if not m.expired(now))
        loop = asyncio.get_running_loop()
        for session in stored.sessions:
            if session.disconnected_at is None:
                session.disconnected_at = now
            if session.is_expired(now) or session.expiry_interval == 0:
                self._deleted_sessions.add(session.client_id)
                continue
            self._sessions[session.client_id] = session
            for sub in session.subscriptions.values():
                self.router.subscribe(session.client_id, sub)
            deadline = session.expires_at()
            if deadline is not None:
                self._expiry[session.client_id] = loop.call_later(
                    max(0.0, deadline - now), self._end_session, session.client_id
                )
        logger.info(
            "restored %d sessions and %d retained messages",
            len(self._sessions),
            len(self._retained),
        )

    def _changes(self) -> StoreChanges:
        sessions: list[tuple[str, bytes]] = []
        deleted = set(self._deleted_sessions)
        self._deleted_sessions.clear()
        for cid, session in self._sessions.items():
            if not session.dirty:
                continue
            session.dirty = False
            if session.expiry_interval == 0:
                deleted.add(cid)  # ends with its connection: nothing to keep
            else:
                sessions.append((cid, dump(session.to_json())))
                deleted.discard(cid)
        upserts, removed = self._retained.take_changes()
        retained = [(m.topic, dump(m.to_json())) for m in upserts]
        return StoreChanges(sessions, sorted(deleted), retained, list(removed))

    async def save(self) -> None:
        """Persist changed sessions and retained messages now (also done on autosave)."""
        if self._store is None:
            return
        async with self._save_lock:
            await self._store.save(self._changes())

    async def _autosave_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.autosave_interval)
            try:
                await self.save()
            except Exception:
                logger.exception("saving MQTT sessions failed")
