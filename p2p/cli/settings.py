"""Settings shared by every command, from options and environment variables (the option wins)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import BadInput, NetworkError
from ..node import DEFAULT_PORT, NodeConfig

Address = tuple[str, int]

ENV_STATE_DIR = "P2P_STATE_DIR"
ENV_LISTEN = "P2P_LISTEN"
ENV_BOOTSTRAP = "P2P_BOOTSTRAP"
ENV_ANNOUNCE = "P2P_ANNOUNCE_ADDR"


def parse_address(text: str, *, what: str = "address", default_port: int | None = None) -> Address:
    """``HOST:PORT`` or ``[V6]:PORT`` (a host name is resolved). Raises :class:`BadInput`."""
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (text[close + 1:] and not text[close + 1:].startswith(":")):
            raise BadInput(f"bad {what} {text!r}: expected [V6]:PORT")
        host = text[1:close]
        port_text = text[close + 2:] or None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host = text
    else:
        raise BadInput(f"bad {what} {text!r}: write an IPv6 address in brackets, [V6]:PORT")
    if port_text is None:
        if default_port is None:
            raise BadInput(f"bad {what} {text!r}: expected HOST:PORT")
        port_text = str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise BadInput(f"bad {what} {text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise BadInput(f"bad {what} {text!r}: the port must be between 0 and 65535")
    if not host:
        raise BadInput(f"bad {what} {text!r}: no host")
    return _resolve(host, what), port


def _resolve(host: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise NetworkError(f"cannot resolve the {what} host {host!r}: {exc}") from None
    return str(infos[0][4][0])


def format_address(addr: Sequence[object]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Settings:
    """What every command needs to build its node and its output."""

    state_dir: Path
    """Identity, database and control socket of this peer."""
    listen: Address
    """Where a long-running command listens (TCP and UDP)."""
    listen_given: bool
    """Whether ``--listen``/``P2P_LISTEN`` was set (short-lived commands otherwise pick a free port)."""
    bootstrap: tuple[Address, ...]
    announce: tuple[Address, ...]
    json: bool
    verbosity: int
    """-1 with ``-q``, 0 by default, 1 and more with ``-v``."""

    def node_config(self, *, long_running: bool, download_dir: Path | None = None) -> NodeConfig:
        """The node configuration; short-lived commands take any free port unless told otherwise."""
        host, port = self.listen
        if not long_running and not self.listen_given:
            port = 0
        # Every peer on a loopback address shares one IP: the per-IP DHT cap would hide them.
        loopback = ipaddress.ip_address(host).is_loopback
        return NodeConfig(
            state_dir=self.state_dir, host=host, port=port, bootstrap=self.bootstrap,
            announce_addrs=self.announce,
            download_dir=download_dir if download_dir is not None else Path.cwd(),
            max_contacts_per_ip=None if loopback else NodeConfig.max_contacts_per_ip,
        )


def build_settings(*, state_dir: str | None, listen: str | None, bootstrap: Sequence[str],
                   announce: Sequence[str], json: bool, verbose: int, quiet: bool,
                   env: Mapping[str, str]) -> Settings:
    """Merge options over environment variables over defaults. Raises :class:`BadInput`."""
    state = state_dir or env.get(ENV_STATE_DIR) or platformdirs.user_data_dir("p2p")
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
        if port == 0 or ipaddress.ip_address(host).is_unspecified:
            raise BadInput(f"{format_address((host, port))} is not an address a peer can be reached at")
    return Settings(state_dir=Path(state).expanduser(), listen=listen_addr,
                    listen_given=bool(listen_text), bootstrap=boots, announce=announces,
                    json=json, verbosity=-1 if quiet else verbose)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
