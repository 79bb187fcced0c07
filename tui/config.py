"""Settings for the terminal app: the command line's own builder, so flags mean the same."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from p2p import DEFAULT_PORT, NodeConfig, build_settings, environment

RATE_HELP = "e.g. 5MiB/s, 500KiB/s; K, M, G are powers of 1024; 0 = no limit"
"""How a rate is written (the command line's ``p2p limit`` reads the same)."""


def parser() -> argparse.ArgumentParser:
    """The ``p2p-tui`` argument parser."""
    p = argparse.ArgumentParser(prog="p2p-tui",
                                description="Terminal app: share, fetch and watch the swarm.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="identity, database and partial files (env P2P_STATE_DIR; "
                        "default: the platform's user data folder)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help=f"TCP and UDP address (env P2P_LISTEN; default 0.0.0.0:{DEFAULT_PORT}; "
                        "[V6]:PORT)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="DHT node to join through; repeatable (env P2P_BOOTSTRAP, comma-separated)")
    p.add_argument("--announce-addr", action="append", default=[], metavar="HOST:PORT",
                   help="address to announce instead of the learned one; repeatable "
                        "(env P2P_ANNOUNCE_ADDR)")
    p.add_argument("--download-dir", type=Path, default=None,
                   help="where fetches go (env P2P_DOWNLOAD_DIR; default: the current folder)")
    limits = p.add_argument_group("bandwidth limits (change them live with b in the app)")
    limits.add_argument("--max-upload-rate", metavar="RATE", default=None,
                        help="what this node sends to all peers together (env "
                             f"P2P_MAX_UPLOAD_RATE; {RATE_HELP})")
    limits.add_argument("--max-download-rate", metavar="RATE", default=None,
                        help="what this node receives from all peers together (env "
                             "P2P_MAX_DOWNLOAD_RATE)")
    p.add_argument("--no-lan", action="store_true",
                   help="do not advertise or look for peers on this network with mDNS "
                        "(env P2P_LAN=off; config key lan)")
    p.add_argument("--no-hole-punch", action="store_true",
                   help="keep peers reached through a relay relayed (env P2P_HOLE_PUNCH=off; "
                        "config key hole_punch)")
    return p


def config_from_args(argv: Sequence[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Build the node's configuration with the one settings builder: flags over the
    environment over the config file over defaults, as the command line does.

    Raises :class:`~p2p.BadInput` for malformed input and :class:`~p2p.NetworkError` for a
    host name that does not resolve.
    """
    args = parser().parse_args(argv)
    settings = build_settings(state_dir=args.state_dir, listen=args.listen,
                              bootstrap=[b for b in args.bootstrap if b.strip()],
                              announce=args.announce_addr, download_dir=args.download_dir,
                              max_upload_rate=args.max_upload_rate,
                              max_download_rate=args.max_download_rate, no_lan=args.no_lan,
                              no_hole_punch=args.no_hole_punch,
                              env=environment() if environ is None else environ)
    # A long-running node: it resumes the downloads its last run left running.
    return dataclasses.replace(settings.node_config(long_running=True), resume_downloads=True)
