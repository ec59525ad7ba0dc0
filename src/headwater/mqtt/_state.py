"""The states of one MQTT connection and the moves between them, as data.

How this works (h11's ``_state.py``): a connection is in one :class:`State`.
Every packet it receives or sends is an :class:`Event`; the tables below say,
for each role and state, which events are allowed and which state each leads
to. :class:`ConnectionStateMachine` looks the move up: an event the table does
not allow raises (``ProtocolError`` for what the peer sent, with the reason
code to answer; ``LocalProtocolError`` for what we tried to send) and leaves
the state unchanged. Nothing here knows about bytes, sessions or time.

The lifecycle, both roles (MQTT 5.0 §3.1 - §3.2, §3.14, §4.13)::

    server:  AWAIT_CONNECT --CONNECT--> CONNECTING --CONNACK ok--> CONNECTED
                                                    --CONNACK refused--> CLOSED
    client:  AWAIT_CONNECT --CONNECT--> CONNECTING --CONNACK ok--> CONNECTED
                                                    --CONNACK refused--> CLOSED
    CONNECTED --DISCONNECT (either way)--> CLOSED
    any state --CLOSE (network gone, protocol error)--> CLOSED

A server holds what a client sends after its CONNECT until it has answered
(``CONNECTING``): "Clients are allowed to send further MQTT Control Packets
immediately after sending a CONNECT packet" (5.0 §3.1.4), and "if the Server
rejects the CONNECT, it MUST NOT process any data sent by the Client after the
CONNECT packet" [MQTT-3.1.4-5 (5.0)]: those bytes are read only once accepted.
"""

from __future__ import annotations

import enum
from typing import Final

from headwater.mqtt.errors import LocalProtocolError, ProtocolError

__all__ = ["ConnectionStateMachine", "Event", "Role", "State"]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Event(enum.Enum):
    """What moves a connection: a packet (by kind and outcome), or the end of it."""

    CONNECT = "CONNECT"
    CONNACK_OK = "CONNACK (success)"
    CONNACK_REFUSED = "CONNACK (refused)"
    PUBLISH = "PUBLISH"
    ACK = "PUBACK/PUBREC/PUBREL/PUBCOMP"
    SUBSCRIBE = "SUBSCRIBE"
    SUBACK = "SUBACK"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    UNSUBACK = "UNSUBACK"
    PINGREQ = "PINGREQ"
    PINGRESP = "PINGRESP"
    DISCONNECT = "DISCONNECT"
    AUTH = "AUTH"
    CLOSE = "connection closed"


_C, _S = Role.CLIENT, Role.SERVER
_AWAIT, _CONNECTING, _CONNECTED, _CLOSED = State

#: Traffic in both directions once connected (AUTH is absent: enhanced
#: authentication is not offered, so an AUTH is a protocol error, §4.12).
_SESSION: Final = {
    Event.PUBLISH: _CONNECTED,
    Event.ACK: _CONNECTED,
    Event.DISCONNECT: _CLOSED,
}

#: (role, state) -> {event received from the peer: next state}
RECEIVE: Final[dict[tuple[Role, State], dict[Event, State]]] = {
    # [MQTT-3.1.0-1] the first packet from the client MUST be CONNECT.
    (_S, _AWAIT): {Event.CONNECT: _CONNECTING},
    (_S, _CONNECTED): {
        **_SESSION,
        Event.SUBSCRIBE: _CONNECTED,
        Event.UNSUBSCRIBE: _CONNECTED,
        Event.PINGREQ: _CONNECTED,
    },
    # [MQTT-3.2.0-1] the first packet from the server MUST be CONNACK.
    (_C, _CONNECTING): {Event.CONNACK_OK: _CONNECTED, Event.CONNACK_REFUSED: _CLOSED},
    (_C, _CONNECTED): {
        **_SESSION,
        Event.SUBACK: _CONNECTED,
        Event.UNSUBACK: _CONNECTED,
        Event.PINGRESP: _CONNECTED,
    },
}

#: (role, state) -> {event we send: next state}
SEND: Final[dict[tuple[Role, State], dict[Event, State]]] = {
    (_S, _CONNECTING): {Event.CONNACK_OK: _CONNECTED, Event.CONNACK_REFUSED: _CLOSED},
    (_S, _CONNECTED): {
        **_SESSION,
        Event.SUBACK: _CONNECTED,
        Event.UNSUBACK: _CONNECTED,
        Event.PINGRESP: _CONNECTED,
    },
    (_C, _AWAIT): {Event.CONNECT: _CONNECTING},
    (_C, _CONNECTED): {
        **_SESSION,
        Event.SUBSCRIBE: _CONNECTED,
        Event.UNSUBSCRIBE: _CONNECTED,
        Event.PINGREQ: _CONNECTED,
    },
}


class ConnectionStateMachine:
    """The state of one side of one connection; moves only as the tables allow."""

    __slots__ = ("_receive", "_send", "role", "state")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.AWAIT_CONNECT
        self._receive = RECEIVE.get((role, self.state), {})
        self._send = SEND.get((role, self.state), {})

    def _move(self, state: State) -> None:
        self.state = state
        self._receive = RECEIVE.get((self.role, state), {})
        self._send = SEND.get((self.role, state), {})

    def received(self, event: Event) -> None:
        """The peer sent ``event``; raises :class:`ProtocolError` if it may not."""
        if event is Event.CLOSE:
            self._move(State.CLOSED)
            return
        nxt = self._receive.get(event)
        if nxt is None:
            raise ProtocolError(f"{event.value} received in state {self.state.value}")
        if nxt is not self.state:
            self._move(nxt)

    def sending(self, event: Event) -> None:
        """We are about to send ``event``; raises :class:`LocalProtocolError` if we may not."""
        if event is Event.CLOSE:
            self._move(State.CLOSED)
            return
        nxt = self._send.get(event)
        if nxt is None:
            raise LocalProtocolError(f"cannot send {event.value} in state {self.state.value}")
        if nxt is not self.state:
            self._move(nxt)

    def may_receive(self, event: Event) -> bool:
        return event in self._receive

    def may_send(self, event: Event) -> bool:
        return event in self._send
