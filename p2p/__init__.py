"""p2p: a peer-to-peer, content-addressed file-sharing network.

The library behind the ``p2p`` command line, the ``p2p-tui`` terminal app and
the ``p2p-bootstrap`` daemon. Front ends drive it through one object, the
:class:`Node`, and use only the names listed in ``__all__`` below: the node, its
configuration and settings builder, the typed results and events it hands back,
the errors it raises and the one exit-code map. Everything else (the store, the
DHT, the wire, the swarm) is the node's business.

Test doubles for code built on this library live in :mod:`p2p.testing`.
"""

from .address import Address, format_address, parse_address
from .content import ContentId, Manifest, Ticket, make_ticket, parse_id_or_ticket
from .content.select import Selection
from .control import control_endpoint, decode_event, encode_event, library_rows, share_info
from .control import socket_address as control_socket_address
from .control import socket_path as control_socket
from .dht import ChannelRecord
from .errors import (
    AlreadyDownloading,
    BadInput,
    BadSignature,
    ContentChanged,
    ContentIdMismatch,
    DecodeError,
    DestinationExists,
    DiskFull,
    InsecureKeyFile,
    IntegrityError,
    LocalProtocolError,
    NetworkError,
    NotFound,
    P2PError,
    RemoteProtocolError,
    StateDirLocked,
    StoreError,
    UnsafePath,
    WrongPublisher,
)
from .events import (
    ChunkFailed,
    ChunkRequested,
    ChunkUploaded,
    ChunkVerified,
    DownloadCompleted,
    DownloadFailed,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    Event,
    EventBus,
    EventsDropped,
    LogMessage,
    PeerBanned,
    PeerConnected,
    PeerDropped,
    Shared,
    ShareWithdrawn,
    Subscription,
)
from .exitcodes import (
    EXIT_BUSY,
    EXIT_INTEGRITY,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    describe,
    exit_code_for,
)
from .identity import PeerId
from .library import Ban, DownloadInfo, Library, ShareInfo
from .node import DEFAULT_PORT, Node, NodeConfig
from .results import DHTSummary, FetchResult, PeerInfo, ShareResult, Verdict, VerifyReport
from .settings import Settings, build_settings, environment
from .units import human_bytes, human_rate, human_seconds, plural

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PORT",
    "EXIT_BUSY",
    "EXIT_INTEGRITY",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "Address",
    "AlreadyDownloading",
    "BadInput",
    "BadSignature",
    "Ban",
    "ChannelRecord",
    "ChunkFailed",
    "ChunkRequested",
    "ChunkUploaded",
    "ChunkVerified",
    "ContentChanged",
    "ContentId",
    "ContentIdMismatch",
    "DHTSummary",
    "DecodeError",
    "DestinationExists",
    "DiskFull",
    "DownloadCompleted",
    "DownloadFailed",
    "DownloadInfo",
    "DownloadPaused",
    "DownloadProgress",
    "DownloadStarted",
    "Event",
    "EventBus",
    "EventsDropped",
    "FetchResult",
    "InsecureKeyFile",
    "IntegrityError",
    "Library",
    "LocalProtocolError",
    "LogMessage",
    "Manifest",
    "NetworkError",
    "Node",
    "NodeConfig",
    "NotFound",
    "P2PError",
    "PeerBanned",
    "PeerConnected",
    "PeerDropped",
    "PeerId",
    "PeerInfo",
    "RemoteProtocolError",
    "Selection",
    "Settings",
    "ShareInfo",
    "ShareResult",
    "ShareWithdrawn",
    "Shared",
    "StateDirLocked",
    "StoreError",
    "Subscription",
    "Ticket",
    "UnsafePath",
    "Verdict",
    "VerifyReport",
    "WrongPublisher",
    "__version__",
    "build_settings",
    "control_endpoint",
    "control_socket",
    "control_socket_address",
    "decode_event",
    "describe",
    "encode_event",
    "environment",
    "exit_code_for",
    "format_address",
    "human_bytes",
    "human_rate",
    "human_seconds",
    "library_rows",
    "make_ticket",
    "parse_address",
    "parse_id_or_ticket",
    "plural",
    "share_info",
]
