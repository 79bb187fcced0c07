"""Errors of the wire layer, typed by who is to blame (see ``p2p.errors``).

* :class:`ProtocolError` -- the remote peer broke the protocol: a malformed
  frame or field, a record that fails authentication (tampered, replayed,
  reordered), a stream cut in the middle of a record. Drop that peer.
* :class:`WrongPeer` -- the peer proved an identity other than the one we dialled.
* :class:`ConnectionClosed` -- the connection ended (Goodbye, EOF, or closed by us).
* :class:`LocalProtocolError` -- our own code misused a session (a bug).
"""

from __future__ import annotations

from ..errors import NetworkError, P2PError, PeerMisbehaved


class ProtocolError(PeerMisbehaved):
    """The remote peer sent bytes the wire protocol forbids; the connection to it is closed."""


class WrongPeer(ProtocolError):
    """The peer at this address proved a different identity than the peer id we expected."""


class ConnectionClosed(NetworkError):
    """The connection is closed: the peer said Goodbye, the stream ended, or we closed it."""

    def __init__(self, message: str = "connection closed", *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """The reason the peer gave in its Goodbye, if it sent one."""


class LocalProtocolError(P2PError, RuntimeError):
    """This program used a session wrongly (for example, sent before the handshake). A bug."""
