"""The wire: frames and messages (sans-IO), the secure session (sans-IO), and the asyncio shell.

Public names are re-exported here; see docs/PROTOCOL.md for the conversation.
"""

from .errors import ClosedByUs, ConnectionLost, LocalProtocolError, RemoteProtocolError, WrongPeer
from .messages import (
    MAX_CHUNK,
    MAX_FRAME,
    MAX_MANIFEST,
    PROTOCOL_VERSION,
    Bitfield,
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    Goodbye,
    Have,
    Hello,
    HolePunchConnect,
    HolePunchSync,
    Manifest,
    Message,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from .session import Session

__all__ = [
    "MAX_CHUNK",
    "MAX_FRAME",
    "MAX_MANIFEST",
    "PROTOCOL_VERSION",
    "Bitfield",
    "Cancel",
    "ClosedByUs",
    "ConnectionLost",
    "Data",
    "GetBitfield",
    "GetManifest",
    "Goodbye",
    "Have",
    "Hello",
    "HolePunchConnect",
    "HolePunchSync",
    "LocalProtocolError",
    "Manifest",
    "Message",
    "Ping",
    "Pong",
    "Reject",
    "RejectReason",
    "RemoteProtocolError",
    "Request",
    "Session",
    "WrongPeer",
]
