"""Kademlia DHT for the p2p network, built on the ``kademlia`` package (extended, not forked).

This package is the only code that imports ``kademlia`` or ``rpcudp``. See ``docs/PROTOCOL.md`` (DHT section)
for the wire format, the records and the constants.
"""

from .config import DHTConfig
from .errors import (
    IdentityMismatch,
    InvalidContact,
    InvalidRecord,
    NoContacts,
    Overloaded,
    RPCTimeout,
    StaleSequence,
    StateFileError,
)
from .records import (
    CHANNEL_TTL,
    PEER_TTL,
    PROVIDER_TTL,
    REANNOUNCE_INTERVAL,
    ChannelRecord,
    PeerRecord,
    ProviderRecord,
    discovery_key,
)
from .server import DHT
from .stats import ContactInfo, DHTStats

__all__ = [
    "CHANNEL_TTL",
    "DHT",
    "PEER_TTL",
    "PROVIDER_TTL",
    "REANNOUNCE_INTERVAL",
    "ChannelRecord",
    "ContactInfo",
    "DHTConfig",
    "DHTStats",
    "IdentityMismatch",
    "InvalidContact",
    "InvalidRecord",
    "NoContacts",
    "Overloaded",
    "PeerRecord",
    "ProviderRecord",
    "RPCTimeout",
    "StaleSequence",
    "StateFileError",
    "discovery_key",
]
