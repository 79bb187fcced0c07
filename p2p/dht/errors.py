"""DHT errors, each deriving from the family in :mod:`p2p.errors` that says who is to blame."""

from __future__ import annotations

from ..errors import BadInput, NetworkError, RemoteProtocolError, StoreError


class RPCTimeout(NetworkError):
    """A DHT peer did not answer a request within ``rpc_timeout``; it may be gone or overloaded."""


class Overloaded(NetworkError):
    """Too many DHT requests are already waiting for answers; this one was not sent."""


class NoContacts(NetworkError):
    """The routing table is empty: bootstrap the DHT (or restore its saved table) first."""


class InvalidContact(RemoteProtocolError):
    """A contact (node id, address, port) is malformed: a hostname, a bad port, a wrong id length."""


class InvalidRecord(RemoteProtocolError):
    """A DHT record is malformed, expired, too far in the future or stored under the wrong key.

    Forged signatures raise :class:`p2p.errors.BadSignature` instead.
    """


class IdentityMismatch(RemoteProtocolError):
    """A node's Ed25519 key does not hash to the node id it claimed (or it answered for another id)."""


class StaleSequence(BadInput):
    """The DHT already holds a channel record with a higher sequence number (or the same number
    with a different content id); publish again with a higher ``seq``."""


class StateFileError(StoreError):
    """The saved routing table file is unreadable or malformed; it is ignored and rewritten."""
