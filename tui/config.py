"""Settings for the terminal app, shared with the command line: flags win over environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import platformdirs

from p2p.errors import BadInput
from p2p.node import DEFAULT_PORT, NodeConfig


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port). Raises :class:`BadInput`."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise BadInput(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise BadInput(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise BadInput(f"bad port in {text!r}")
    return host, number


def parser() -> argparse.ArgumentParser:
    """The ``p2p-tui`` argument parser."""
    p = argparse.ArgumentParser(prog="p2p-tui",
                                description="Terminal app: share, fetch and watch the swarm.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="identity, database and partial files (env P2P_STATE_DIR; "
                        "default: the platform's user data folder)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help=f"TCP and UDP address (env P2P_LISTEN; default 0.0.0.0:{DEFAULT_PORT})")
    p.add_argument("--bootstrap", action="append", default=None, metavar="HOST:PORT",
                   help="DHT node to join through; repeatable (env P2P_BOOTSTRAP, comma-separated)")
    p.add_argument("--download-dir", type=Path, default=None,
                   help="where fetches go (env P2P_DOWNLOAD_DIR; default: the current folder)")
    return p


def config_from_args(argv: Sequence[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Build a :class:`NodeConfig` from flags, then environment, then defaults.

    Raises :class:`BadInput` for a malformed address.
    """
    env = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    state_dir = args.state_dir or (Path(env["P2P_STATE_DIR"]) if env.get("P2P_STATE_DIR")
                                   else Path(platformdirs.user_data_dir("p2p")))
    listen = args.listen or env.get("P2P_LISTEN") or f"0.0.0.0:{DEFAULT_PORT}"
    host, port = parse_address(listen)
    if args.bootstrap is not None:
        boot = [b for b in args.bootstrap if b.strip()]
    else:
        boot = [b for b in env.get("P2P_BOOTSTRAP", "").split(",") if b.strip()]
    download_dir = args.download_dir or (Path(env["P2P_DOWNLOAD_DIR"])
                                         if env.get("P2P_DOWNLOAD_DIR") else Path.cwd())
    return NodeConfig(state_dir=state_dir.expanduser(), host=host, port=port,
                      bootstrap=tuple(parse_address(b) for b in boot),
                      download_dir=download_dir.expanduser())
