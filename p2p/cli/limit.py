"""Bandwidth limits on the command line: ``--max-upload-rate``/``--max-download-rate`` on the
long-running commands, and ``p2p limit`` on the running node.

The flags go through the one settings builder (:func:`p2p.build_settings`: flag over
``P2P_MAX_UPLOAD_RATE``/``P2P_MAX_DOWNLOAD_RATE`` over the config file's
``max_upload_rate``/``max_download_rate``) into the node a command starts. A ``fetch``
that goes through the running node instead gives its ``--max-download-rate`` to that
download alone; ``p2p limit`` changes the running node's limits (or one download's) live.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import BadInput, Library, format_rate, human_bytes, parse_rate
from . import control

if TYPE_CHECKING:
    from .commands import Run

RATE_HELP = "e.g. 5MiB/s, 500KiB/s, 1.5M; K, M, G are powers of 1024; 0 = no limit"


def add_commands(command: Callable[..., Any], long_running: Sequence[argparse.ArgumentParser]) -> None:
    """``p2p limit``, and the rate flags of ``share``, ``serve`` and ``fetch``."""
    for p in long_running:
        group = p.add_argument_group("bandwidth limits (see also `p2p limit`)")
        group.add_argument("--max-upload-rate", metavar="RATE", default=None,
                           help="what this node sends to all peers together, encryption "
                                f"included (env P2P_MAX_UPLOAD_RATE; {RATE_HELP})")
        group.add_argument("--max-download-rate", metavar="RATE", default=None,
                           help="what this node receives from all peers together (env "
                                "P2P_MAX_DOWNLOAD_RATE); for a fetch through a running node, "
                                "that download's own limit")
    p = command("limit", cmd_limit, "show or change the running node's bandwidth limits",
                "Without options: the limits of the running node of this state directory (and of "
                "its downloads that have their own). --up and --down change them at once, for "
                "every connection; with ID, --down changes that running download's own limit. "
                f"Rates: {RATE_HELP}. The limits count every byte on the wire to and from peers "
                "(encryption and handshakes included); a limit set here lasts while the node runs "
                "(`p2p config set max_upload_rate RATE` keeps one for the next start).")
    p.add_argument("id", metavar="ID", nargs="?",
                   help="a running download (content id or an unambiguous prefix)")
    p.add_argument("--up", metavar="RATE", help="the node's upload limit")
    p.add_argument("--down", metavar="RATE", help="the node's (with ID: that download's) download limit")


async def cmd_limit(run: Run, args: argparse.Namespace) -> int:
    """Show, or change then show, the running node's limits."""
    state = run.settings.state_dir
    request: dict[str, Any] = {"cmd": "limit"}
    if args.up is not None:
        request["up"] = parse_rate(args.up, "--up")
    if args.down is not None:
        request["down"] = parse_rate(args.down, "--down")
    if args.id is not None:
        if args.up is not None:
            raise BadInput("a download has no upload limit of its own: give --up without an ID")
        with Library.open(state) as library:
            request["content_id"] = str(library.resolve(args.id))
    try:
        limits = await control.query(state, request)
    except control.NoRunningNode:
        raise control.NoRunningNode(
            f"no node is running for the state directory {state}: limits apply to a running "
            "node (start one with --max-upload-rate/--max-download-rate, or keep them with "
            "`p2p config set max_upload_rate RATE`)") from None
    run.out.result(limits, describe(limits))
    return 0


def describe(limits: dict[str, Any]) -> str:
    """The limits as lines a person reads."""
    lines = []
    for label, key, moved in (("upload", "up", "sent"), ("download", "down", "received")):
        row = limits[key]
        text = f"{label:<9} {format_rate(float(row['rate']))}"
        if row["rate"]:
            text += f"  ({human_bytes(int(row['bytes']))} {moved} under it)"
        lines.append(text)
    for cid, row in limits.get("downloads", {}).items():
        if row["rate"]:
            lines.append(f"download {cid}  {format_rate(float(row['rate']))}")
    return "\n".join(lines)


def through_running_node(run: Run, *, every: bool = False) -> dict[str, Any]:
    """The fields a ``fetch`` request to a running node gets from the rate flags: its
    ``--max-download-rate`` becomes that download's own limit. A flag that would set the
    running node's limits (``--max-upload-rate``; with ``every``, as for ``share``, both)
    is refused (exit 2) while one runs: that is ``p2p limit``'s job, and a share or fetch
    must not change it in passing."""
    sources = run.settings.sources
    given = [name for name in ("max_upload_rate", "max_download_rate")
             if sources.get(name) == "flag"]
    refused = given if every else [n for n in given if n == "max_upload_rate"]
    if refused and control.running(run.settings.state_dir) is not None:
        flag = "--" + refused[0].replace("_", "-")
        raise BadInput(f"{flag} sets the limit of a node this command starts, but a node of "
                       f"{run.settings.state_dir} is running already: change its limits with "
                       "`p2p limit --up RATE --down RATE`")
    if "max_download_rate" in given and not every:
        return {"max_download_rate": run.settings.max_download_rate}
    return {}
