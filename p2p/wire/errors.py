"""Errors of the wire layer, typed by who is to blame (see ``p2p.errors``).

* :class:`~p2p.errors.RemoteProtocolError` -- the remote peer broke the protocol: a
  malformed frame or field, a record that fails authentication (tampered, replayed,
  reordered), a stream cut in the middle of a record. Drop that peer.
* :class:`WrongPeer` -- the peer proved an identity other than the one we dialled.
* :class:`ConnectionLost` -- the world ended the connection: the peer said Goodbye,
  the stream ended, the socket was reset. Retrying (elsewhere) may help.
* :class:`ClosedByUs` -- this side closed the connection (``aclose``, a limit, a
  shutdown) and something still tried to use it. Kept apart from
  :class:`ConnectionLost` as trio keeps ``ClosedResourceError`` apart from
  ``BrokenResourceError``: nobody should retry what we ended on purpose.
* :class:`~p2p.errors.LocalProtocolError` -- our own code misused a session (a bug).
"""

from __future__ import annotations

from ..errors import LocalProtocolError, NetworkError, P2PError, RemoteProtocolError

__all__ = ["ClosedByUs", "ConnectionLost", "LocalProtocolError", "RemoteProtocolError", "WrongPeer"]


class WrongPeer(RemoteProtocolError):
    """The peer at this address proved a different identity than the peer id we expected."""


class ConnectionLost(NetworkError):
    """The connection ended from the other side: a Goodbye, the end of the stream, or a reset."""

    def __init__(self, message: str = "connection lost", *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """The reason the peer gave in its Goodbye, if it sent one."""


class ClosedByUs(P2PError):
    """This side closed the connection (or aborted it for breaking a rule); it cannot be used now."""

    def __init__(self, message: str = "closed by us", *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """Why we closed it, as sent in our Goodbye (empty if none was sent)."""
