"""The command line's view of a running node's control socket (the protocol and its
client: :mod:`p2p.control`).

While a node of the state directory runs, the commands go through it: :func:`query`
sends one request and returns the node's answer, passing interim lines (events,
progress) on as they come.
"""

from __future__ import annotations

from pathlib import Path

from .. import (
    ControlError,
    Node,
    NoRunningNode,
    control_endpoint,
    control_socket,
    decode_event,
    library_rows,
    share_info,
)
from .. import control_query as query

__all__ = ["ControlError", "NoRunningNode", "control_endpoint", "decode_event", "library_rows",
           "query", "running", "share_info", "socket_path"]

socket_path = control_socket


def running(state_dir: Path) -> str | None:
    """Who runs a node of ``state_dir`` (``pid N, p2p serve``), or None: see :meth:`Node.running_holder`."""
    return Node.running_holder(state_dir)
