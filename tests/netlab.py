"""A NAT lab of network namespaces and nftables routers, for the tests that need one.

Importable as ``netlab`` from any test. The topology (docs: the research note's recipe): an
"internet" bridge in its own namespace; a public host ``boot`` at 203.0.113.10 (and .11);
and any number of sites, each either a public host on the bridge or a host behind a router
whose firewall drops unsolicited inbound traffic and which does nft ``masquerade`` (cone:
endpoint-independent, port-preserving), ``masquerade random`` (symmetric) or no NAT at all
(firewall-only); ``cone-rst`` is a cone whose router answers an unsolicited SYN with a reset
instead of dropping it. The 203.0.113.0/24 documentation range stands
for the internet. Every namespace carries a per-run prefix and is deleted on the way out,
failing or not. Needs root, ``ip netns`` and ``nft``: :func:`require` skips otherwise (fails
under CI).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from testbed import need_tools

BOOT, BOOT2 = "203.0.113.10", "203.0.113.11"

FIREWALL = """
table inet fw {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    iifname "lan" accept
    ct state established,related accept
  }
}
"""
"""A home router's firewall: inbound only as part of what the inside opened."""
NAT = ("add table ip nat; add chain ip nat post {{ type nat hook postrouting priority 100; }}; "
       "add rule ip nat post oifname \"wan\" masquerade {flags}")
"""Source NAT on the router's wan side; ``flags`` "" (cone), "random" or "fully-random"
(symmetric), "persistent"."""
RESET = 'insert rule inet fw input iifname "wan" meta l4proto tcp ct state new reject with tcp reset'
"""Makes a router answer an unsolicited SYN with a reset instead of dropping it."""
NAT_FLAGS = {"cone": "", "cone-rst": "", "symmetric": "random", "fully-random": "fully-random"}
KINDS = ("public", "firewall-only", *NAT_FLAGS)


def run(*args: str, stdin: str | None = None) -> None:
    """Run one setup command; raises CalledProcessError (with its stderr) when it fails."""
    subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=30,
                   input=stdin)


def require() -> None:
    """Skip the calling test unless network namespaces and nftables can be used here; under
    CI fail instead (:func:`testbed.need_tools`)."""
    need_tools("ip", "nft")


def on(name: str) -> list[str]:
    """The command prefix that runs a program in namespace ``name``."""
    return ["ip", "netns", "exec", name]


@dataclass(frozen=True)
class Site:
    """One host of the lab and how it reaches the internet."""

    kind: str
    """One of :data:`KINDS`."""
    host: str
    """Its namespace."""
    address: str
    """Its own address (on the bridge when public, else on its LAN)."""
    public: str
    """The address the internet sees it at (its router's, unless public)."""
    router: str | None = None
    """The router's namespace, if any."""


@dataclass
class Lab:
    """The namespaces made, by role: ``inet``, ``boot``, and the sites by name."""

    prefix: str
    boot: str = ""
    sites: dict[str, Site] = field(default_factory=dict)


@contextlib.contextmanager
def lab(tag: str, kinds: Sequence[str]) -> Iterator[Lab]:
    """The topology with one site per entry of ``kinds`` (site ``i`` is 10.0.i.2 behind
    203.0.113.i, or 203.0.113.(20+i) when public). ``tag`` (a few letters) and the process
    id make the namespace prefix."""
    require()
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown site kind {kind!r}")
    prefix = f"{tag}{os.getpid() % 100000}"
    made: list[str] = []
    names = Lab(prefix)

    def ns(name: str) -> str:
        full = f"{prefix}{name}"
        run("ip", "netns", "add", full)
        made.append(full)
        run("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def wan(name: str, index: int, addr: str) -> None:
        run("ip", "-n", name, "link", "add", "wan", "type", "veth", "peer", "name",
            f"v{index}", "netns", inet)
        run("ip", "-n", inet, "link", "set", f"v{index}", "master", "br0", "up")
        run("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "wan")
        run("ip", "-n", name, "link", "set", "wan", "up")

    try:
        try:
            inet = ns("i")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` does not work here: {exc.stderr.strip()}")
        run("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", inet, "link", "set", "br0", "up")
        names.boot = ns("b")
        wan(names.boot, 100, BOOT)
        run("ip", "-n", names.boot, "addr", "add", f"{BOOT2}/24", "dev", "wan")
        for i, kind in enumerate(kinds, start=1):
            host = ns(f"h{i}")
            if kind == "public":
                address = f"203.0.113.{20 + i}"
                wan(host, 20 + i, address)
                names.sites[f"h{i}"] = Site(kind, host, address, address)
                continue
            router = ns(f"r{i}")
            public, address = f"203.0.113.{i}", f"10.0.{i}.2"
            wan(router, i, public)
            run("ip", "-n", router, "link", "add", "lan", "type", "veth", "peer", "name",
                "eth0", "netns", host)
            run("ip", "-n", router, "addr", "add", f"10.0.{i}.1/24", "dev", "lan")
            run("ip", "-n", router, "link", "set", "lan", "up")
            run("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", host, "link", "set", "eth0", "up")
            run("ip", "-n", host, "route", "add", "default", "via", f"10.0.{i}.1")
            run(*on(router), "sysctl", "-qw", "net.ipv4.ip_forward=1")
            run(*on(router), "nft", "-f", "-", stdin=FIREWALL)
            if kind == "firewall-only":
                run("ip", "-n", names.boot, "route", "add", f"10.0.{i}.0/24", "via", public)
                public = address
            else:
                run(*on(router), "nft", NAT.format(flags=NAT_FLAGS[kind]))
            if kind == "cone-rst":
                run(*on(router), "nft", RESET)
            names.sites[f"h{i}"] = Site(kind, host, address, public, router)
        yield names
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)
