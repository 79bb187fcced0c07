"""LAN discovery across hosts: three network namespaces on one bridge, no bootstrap, no ticket.

A sharer on one host, a fetch by content id on another, a third host idle on the same
segment: the fetch finds the sharer by mDNS and the bytes arrive identical. With multicast
dropped on the bridge (nftables, as Wi-Fi client isolation does), the fetch fails and says
why: LAN discovery found no peers. Needs root, ``ip netns`` and ``nft``.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import CLI, make_file
from testbed import need_tools

pytestmark = [pytest.mark.netns]

SUBNET = "10.78.0"
PORT = 7473
LAN_ON = {"P2P_LAN": "on"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def lan(tag: str, hosts: int, *, block_multicast: bool) -> Iterator[list[str]]:
    """``hosts`` namespaces at 10.78.0.N/24 on one bridge (in a namespace of its own), each
    with a default route (multicast needs one); with ``block_multicast`` the bridge drops
    mDNS (224.0.0.251, UDP 5353). Always removed."""
    need_tools("ip", *(["nft"] if block_multicast else []))
    bridge_ns = f"{tag}br"
    names = [f"{tag}h{i}" for i in range(1, hosts + 1)]
    made: list[str] = []
    try:
        ip("netns", "add", bridge_ns)
        made.append(bridge_ns)
        ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(names, start=1):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
               "netns", bridge_ns)
            ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "default", "dev", "eth0")
        if block_multicast:
            subprocess.run(
                ["ip", "netns", "exec", bridge_ns, "nft",
                 "add table bridge f; add chain bridge f fwdchain { type filter hook forward "
                 "priority 0; }; add rule bridge f fwdchain ip daddr 224.0.0.251 drop; "
                 "add rule bridge f fwdchain udp dport 5353 drop"],
                check=True, capture_output=True, text=True, timeout=30)
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def _tag(kind: str) -> str:
    return f"p2pl{kind}{os.getpid() % 100000}"


def test_fetch_by_id_finds_the_lan_sharer(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "lan.bin", 4 << 20)
    with lan(_tag("a"), 3, block_multicast=False) as names:
        def on(host: int) -> list[str]:
            return ["ip", "netns", "exec", names[host - 1]]

        idle = cli.start("serve", "--json", "--state-dir", str(tmp_path / "s" / "idle"),
                         prefix=on(3), env=LAN_ON)
        idle.json()
        # The default listen (every address): what a person runs, no --listen, no bootstrap.
        share = cli.start("share", str(src), "--json", "--state-dir", str(tmp_path / "s" / "sharer"),
                          prefix=on(1), env=LAN_ON)
        info = share.json()
        dest = tmp_path / "fetched.bin"
        fetch = cli.start("fetch", str(info["content_id"]), "-o", str(dest), "--json",
                          "--timeout", "20", "--state-dir", str(tmp_path / "s" / "fetcher"),
                          prefix=on(2), env=LAN_ON)
        assert fetch.wait() == 0, fetch.err()
        assert filecmp.cmp(src, dest, shallow=False)
        result = fetch.last_json()
        suppliers = {peer for peer, n in result["chunks_by_peer"].items() if n}
        assert suppliers == {info["peer_id"]}, result["chunks_by_peer"]
        # The sharer lists the others as LAN peers (the fetcher may have left already).
        peers = cli.run("peers", "--json", "--state-dir", str(tmp_path / "s" / "sharer"),
                        prefix=on(1), env=LAN_ON)
        assert peers.returncode == 0, peers.stderr
        shown = __import__("json").loads(peers.stdout)
        assert shown["lan_status"] == "running"
        idle_id = __import__("json").loads(
            cli.run("id", "--json", "--state-dir", str(tmp_path / "s" / "idle")).stdout)["peer_id"]
        lan_peers = {p["peer_id"]: p for p in shown["lan"]}
        assert idle_id in lan_peers
        assert lan_peers[idle_id]["addresses"] == [f"{SUBNET}.3:{PORT}"]
        assert lan_peers[idle_id]["dht_contact"] is True


def test_no_lan_flag_and_blocked_multicast_say_why(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "blocked.bin", 1 << 20)
    with lan(_tag("b"), 3, block_multicast=True) as names:
        def on(host: int) -> list[str]:
            return ["ip", "netns", "exec", names[host - 1]]

        share = cli.start("share", str(src), "--json", "--state-dir", str(tmp_path / "s" / "sharer"),
                          prefix=on(1), env=LAN_ON)
        cid = str(share.json()["content_id"])
        blocked = cli.run("fetch", cid, "-o", str(tmp_path / "x.bin"), "--timeout", "3",
                          "--state-dir", str(tmp_path / "s" / "f1"), prefix=on(2), env=LAN_ON)
        assert blocked.returncode == 3, blocked.stderr
        assert "LAN discovery found no peers" in blocked.stderr, blocked.stderr
        assert "multicast may be blocked" in blocked.stderr
        off = cli.run("fetch", cid, "-o", str(tmp_path / "y.bin"), "--timeout", "2", "--no-lan",
                      "--state-dir", str(tmp_path / "s" / "f2"), prefix=on(3), env=LAN_ON)
        assert off.returncode == 3, off.stderr
        assert "LAN discovery is off (--no-lan)" in off.stderr, off.stderr
        assert not (tmp_path / "x.bin").exists()
