"""The one settings builder: options over environment variables over defaults.

The command line, the terminal app and the bootstrap daemon all build their
node's configuration here, so a flag means the same in each of them (host names
resolved, IPv6 in brackets, the DHT's per-IP cap lifted on loopback).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .address import Address, format_address, is_unspecified, parse_address
from .errors import BadInput
from .node import DEFAULT_PORT, DUAL_STACK, NodeConfig

__all__ = ["ENV_ANNOUNCE", "ENV_BOOTSTRAP", "ENV_DOWNLOAD_DIR", "ENV_LISTEN", "ENV_STATE_DIR",
           "Settings", "build_settings", "environment"]

ENV_STATE_DIR = "P2P_STATE_DIR"
ENV_LISTEN = "P2P_LISTEN"
ENV_BOOTSTRAP = "P2P_BOOTSTRAP"
ENV_ANNOUNCE = "P2P_ANNOUNCE_ADDR"
ENV_DOWNLOAD_DIR = "P2P_DOWNLOAD_DIR"


@dataclass(frozen=True)
class Settings:
    """What every command needs to build its node and its output."""

    state_dir: Path
    """Identity, database and control socket of this peer."""
    listen: Address
    """Where a long-running command listens (TCP and UDP); unless ``listen_given``, on
    every IPv4 and IPv6 address at this port."""
    listen_given: bool
    """Whether ``--listen``/``P2P_LISTEN`` was set (short-lived commands otherwise pick a free port)."""
    bootstrap: tuple[Address, ...]
    """DHT nodes to join through."""
    announce: tuple[Address, ...]
    """Addresses to announce instead of the learned ones (port forwarding)."""
    download_dir: Path
    """Where fetches go when no destination is given."""
    json: bool = False
    """Machine output (the command line's ``--json``)."""
    verbosity: int = 0
    """-1 with ``-q``, 0 by default, 1 and more with ``-v``."""

    def node_config(self, *, long_running: bool, download_dir: Path | None = None) -> NodeConfig:
        """The node configuration; short-lived commands take any free port unless told otherwise."""
        host, port = self.listen
        if not long_running and not self.listen_given:
            port = 0
        # Every peer on a loopback address shares one IP: the per-IP DHT cap would hide them.
        loopback = ipaddress.ip_address(host).is_loopback
        # Not told where: every address of both families (dual stack).
        hosts: str | tuple[str, ...] = host if self.listen_given else DUAL_STACK
        return NodeConfig(
            state_dir=self.state_dir, host=hosts, port=port, bootstrap=self.bootstrap,
            announce_addrs=self.announce,
            download_dir=download_dir if download_dir is not None else self.download_dir,
            max_contacts_per_ip=None if loopback else NodeConfig.max_contacts_per_ip,
        )


def build_settings(*, state_dir: str | Path | None = None, listen: str | None = None,
                   bootstrap: Sequence[str] = (), announce: Sequence[str] = (),
                   download_dir: str | Path | None = None, json: bool = False, verbose: int = 0,
                   quiet: bool = False, env: Mapping[str, str],
                   app_dir: str = "p2p") -> Settings:
    """Merge options over environment variables over defaults.

    ``app_dir`` names the default state directory (the daemon keeps its own).
    Raises :class:`BadInput` for malformed input and :class:`~p2p.errors.NetworkError`
    for a host name that does not resolve.
    """
    state = state_dir or env.get(ENV_STATE_DIR) or platformdirs.user_data_dir(app_dir)
    downloads = download_dir or env.get(ENV_DOWNLOAD_DIR) or Path.cwd()
    listen_text = listen or env.get(ENV_LISTEN)
    listen_addr = (parse_address(listen_text, what="listen address", default_port=DEFAULT_PORT)
                   if listen_text else ("0.0.0.0", DEFAULT_PORT))
    boot_texts = list(bootstrap) or _split(env.get(ENV_BOOTSTRAP, ""))
    announce_texts = list(announce) or _split(env.get(ENV_ANNOUNCE, ""))
    boots = tuple(parse_address(b, what="bootstrap address", default_port=DEFAULT_PORT)
                  for b in boot_texts)
    announces = tuple(parse_address(a, what="announce address", default_port=listen_addr[1] or None)
                      for a in announce_texts)
    for host, port in boots + announces:
        if port == 0 or is_unspecified(host):
            raise BadInput(f"{format_address((host, port))} is not an address a peer can be reached at")
    return Settings(state_dir=Path(state).expanduser(), listen=listen_addr,
                    listen_given=bool(listen_text), bootstrap=boots, announce=announces,
                    download_dir=Path(downloads).expanduser(), json=json, verbosity=-1 if quiet else verbose)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
