"""Reachability across a NAT lab: ``p2p netcheck --json`` behind real nftables routers.

Topology (per test, under a unique namespace prefix, always removed): an "internet" bridge;
the bootstrap daemon on it at 203.0.113.10 with its observer endpoint at 203.0.113.11; and
one host, either on the bridge itself (public, 203.0.113.20) or at 10.0.1.2 behind a router
(203.0.113.1) whose firewall drops unsolicited inbound traffic and which does nft
``masquerade`` (endpoint-independent mapping), ``masquerade fully-random`` (symmetric), or
no NAT at all (firewall-only). The documentation range stands for the internet: nothing
here may judge by address class. Needs root, ``ip netns`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cliproc import CLI, Proc, clean_env
from netlab import FIREWALL, NAT, on, run
from testbed import need_tools

from p2p.identity import PeerId, node_id_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 7473
BOOT, BOOT2 = "203.0.113.10", "203.0.113.11"
ROUTER, PUBLIC_HOST, LAN_HOST = "203.0.113.1", "203.0.113.20", "10.0.1.2"


@contextlib.contextmanager
def lab(kind: str) -> Iterator[dict[str, str]]:
    """The topology for ``kind`` (public, cone, symmetric, firewall-only): namespace names
    by role (``boot``, ``host``); everything is deleted on the way out, failing or not."""
    need_tools("ip", "nft")
    tag = f"rch{os.getpid() % 100000}{kind[:2]}"
    names = {"inet": f"{tag}i", "boot": f"{tag}b", "host": f"{tag}h", "rtr": f"{tag}r"}
    made: list[str] = []

    def ns(role: str) -> None:
        run("ip", "netns", "add", names[role])
        made.append(names[role])
        run("ip", "-n", names[role], "link", "set", "lo", "up")

    def wan(role: str, index: int, addr: str) -> None:
        run("ip", "-n", names[role], "link", "add", "wan", "type", "veth", "peer", "name",
            f"v{index}", "netns", names["inet"])
        run("ip", "-n", names["inet"], "link", "set", f"v{index}", "master", "br0", "up")
        run("ip", "-n", names[role], "addr", "add", f"{addr}/24", "dev", "wan")
        run("ip", "-n", names[role], "link", "set", "wan", "up")

    try:
        try:
            ns("inet")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` does not work here: {exc.stderr.strip()}")
        run("ip", "-n", names["inet"], "link", "add", "br0", "type", "bridge")
        run("ip", "-n", names["inet"], "link", "set", "br0", "up")
        ns("boot")
        wan("boot", 1, BOOT)
        run("ip", "-n", names["boot"], "addr", "add", f"{BOOT2}/24", "dev", "wan")
        ns("host")
        if kind == "public":
            wan("host", 2, PUBLIC_HOST)
        else:
            ns("rtr")
            wan("rtr", 3, ROUTER)
            run("ip", "-n", names["rtr"], "link", "add", "lan", "type", "veth", "peer", "name",
                "eth0", "netns", names["host"])
            run("ip", "-n", names["rtr"], "addr", "add", "10.0.1.1/24", "dev", "lan")
            run("ip", "-n", names["rtr"], "link", "set", "lan", "up")
            run("ip", "-n", names["host"], "addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
            run("ip", "-n", names["host"], "link", "set", "eth0", "up")
            run("ip", "-n", names["host"], "route", "add", "default", "via", "10.0.1.1")
            run("ip", "netns", "exec", names["rtr"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
            run("ip", "netns", "exec", names["rtr"], "nft", "-f", "-", stdin=FIREWALL)
            if kind == "firewall-only":
                run("ip", "-n", names["boot"], "route", "add", "10.0.1.0/24", "via", ROUTER)
            else:
                flags = "fully-random" if kind == "symmetric" else ""
                run("ip", "netns", "exec", names["rtr"], "nft", NAT.format(flags=flags))
        yield names
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)


@contextlib.contextmanager
def daemon(cli: CLI, names: dict[str, str]) -> Iterator[Proc]:
    """The bootstrap daemon in ``boot``, ready; killed at the end if still running."""
    argv = [*on(names["boot"]), sys.executable, "-m", "bootstrap", "--listen", f"{BOOT}:{PORT}",
            "--observer", f"{BOOT2}:{PORT}", "--state-dir", str(cli.tmp / "boot"),
            "--log-format", "json"]
    proc = Proc(argv, clean_env(), cli.tmp)
    cli.procs.append(proc)
    assert proc.json()["event"] == "listening"
    yield proc


def netcheck(cli: CLI, names: dict[str, str], state: str) -> dict[str, object]:
    """``p2p netcheck --json`` on the host: exactly one JSON object."""
    done = cli.run("--state-dir", str(cli.tmp / state), "--listen", f"0.0.0.0:{PORT}",
                   "--bootstrap", f"{BOOT}:{PORT}", "netcheck", "--json",
                   prefix=on(names["host"]), timeout=40)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    obj = json.loads(lines[0])
    assert set(obj) == {"reachability", "nat", "evidence"}, obj
    return obj


def saved_contacts(cli: CLI, boot: Proc) -> set[str]:
    """Node ids (hex) in the bootstrap's routing table, as it saves it when stopped."""
    boot.send(signal.SIGTERM)
    assert boot.wait() == 0, boot.err()
    state = json.loads((cli.tmp / "boot" / "routing.json").read_text())
    return {entry[0] for entry in state["contacts"]}


def node_id_of(cli: CLI, state: str) -> str:
    done = cli.run("--state-dir", str(cli.tmp / state), "id", "--json")
    assert done.returncode == 0, done.stderr
    return node_id_for(PeerId.parse(json.loads(done.stdout)["peer_id"]).key).hex()


def serve(cli: CLI, names: dict[str, str], state: str) -> Proc:
    """A long-running ``p2p serve`` on the host (an ``auto`` DHT node), ready."""
    proc = cli.start("serve", "--json", "--state-dir", str(cli.tmp / state), "--listen",
                     f"0.0.0.0:{PORT}", "--bootstrap", f"{BOOT}:{PORT}",
                     prefix=on(names["host"]))
    proc.json()
    return proc


def test_public_host_is_public_and_joins_the_table(cli: CLI) -> None:
    with lab("public") as names, daemon(cli, names) as boot:
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "public", verdict
        assert verdict["nat"]["present"] is False, verdict  # type: ignore[index]
        # A running node answers through its control socket, and, reachable, becomes a
        # DHT server that the bootstrap keeps (the control for the NAT test below).
        node = serve(cli, names, "node")
        ran = cli.run("--state-dir", str(cli.tmp / "node"), "netcheck", "--json", timeout=40)
        assert ran.returncode == 0, ran.stderr
        live = json.loads(ran.stdout)
        assert live["reachability"] == "public", live
        assert "running node" in live["evidence"][0]
        node.stop()
        assert node_id_of(cli, "node") in saved_contacts(cli, boot)


def test_cone_nat_is_nat_with_endpoint_independent_mapping_and_stays_out(cli: CLI) -> None:
    with lab("cone") as names, daemon(cli, names) as boot:
        node = serve(cli, names, "node")
        ran = cli.run("--state-dir", str(cli.tmp / "node"), "netcheck", "--json", timeout=40)
        assert ran.returncode == 0, ran.stderr
        verdict = json.loads(ran.stdout)
        assert verdict["reachability"] == "nat", verdict
        nat = verdict["nat"]
        assert nat["present"] is True and nat["mapping"] == "endpoint-independent", verdict
        assert nat["external"] == f"{ROUTER}:{PORT}", verdict  # masquerade keeps the port
        node.stop()
        # It queried and was answered, yet never entered the bootstrap's routing table.
        assert node_id_of(cli, "node") not in saved_contacts(cli, boot)


def test_symmetric_nat_is_nat_with_endpoint_dependent_mapping(cli: CLI) -> None:
    with lab("symmetric") as names, daemon(cli, names):
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "nat", verdict
        assert verdict["nat"]["mapping"] == "endpoint-dependent", verdict  # type: ignore[index]


def test_firewall_only_host(cli: CLI) -> None:
    with lab("firewall-only") as names, daemon(cli, names):
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "firewall-only", verdict
        assert verdict["nat"]["present"] is False, verdict  # type: ignore[index]
