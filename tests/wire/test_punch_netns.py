"""Hole punching across real nftables NATs (the lab in :mod:`netlab`).

Two hosts, each behind a router that silently drops unsolicited inbound traffic, and a
public host in between that pairs them and splices their bytes (a stand-in for the relay:
the two peers run Noise XX end to end through it and punch over that session). With
endpoint-independent NATs (nft ``masquerade``) both sides' SYNs cross and the punched
connection carries a Noise session between the right peer ids, from one NAT's public address
and listen port to the other's; with one side public the NATed side dials it (reversal); with
symmetric NATs (``masquerade random``) the punch fails cleanly, with its reason, within the
protocol's bound. Needs root, ``ip netns`` and ``nft``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import BOOT, Lab, lab, on

from p2p.identity import Identity
from p2p.wire.punch import DEFAULT_CONFIG

pytestmark = [pytest.mark.netns, pytest.mark.slow]

AGENT = str(Path(__file__).with_name("punch_agent.py"))
HUB_PORT = 7000
PORT = 7473
SEEDS = {"dialler": bytes([1]) * 32, "target": bytes([2]) * 32}


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started in the lab; killed (if still running) and reaped on the way out."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def start_hub(names: Lab, procs: list[subprocess.Popen[str]], delay: float) -> None:
    hub = subprocess.Popen([*on(names.boot), sys.executable, AGENT, "hub", BOOT, str(HUB_PORT),
                            str(delay)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(hub)
    assert hub.stdout is not None
    line = hub.stdout.readline()  # "up" once listening, "" if it died
    assert line.strip() == "up", hub.stderr.read() if hub.stderr else line


def punch_pair(names: Lab, timeout: float, delay: float = 0.0) -> dict[str, dict[str, object]]:
    """Run the dialler on site h1 and the target on h2 (a public site says so); each one's
    JSON result by role. ``delay``: the hub's one-way latency, seconds."""
    with processes() as procs:
        start_hub(names, procs, delay)
        peers = {}
        for role, site, other in (("dialler", "h1", "target"), ("target", "h2", "dialler")):
            where = names.sites[site]
            peers[role] = subprocess.Popen(
                [*on(where.host), sys.executable, AGENT, "peer", role, SEEDS[role].hex(),
                 SEEDS[other].hex(), where.address, BOOT, str(HUB_PORT),
                 *(["public"] if where.kind == "public" else [])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(peers[role])
        results = {}
        for role, proc in peers.items():
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
            lines = out.splitlines()
            assert len(lines) == 1, (out, err)
            results[role] = json.loads(lines[0])
        return results


def peer_id(role: str) -> str:
    return str(Identity.from_seed(SEEDS[role]).peer_id)


def assert_punched(names: Lab, results: dict[str, dict[str, object]]) -> None:
    """Both ends hold one direct Noise session between the right peer ids."""
    dialler, target = results["dialler"], results["target"]
    assert dialler["event"] == "punched", dialler
    assert target["event"] == "punched", target
    # Each end proved the identity the other expected, over the direct connection...
    assert dialler["peer"] == peer_id("target") and target["peer"] == peer_id("dialler")
    assert dialler["echoed"] is True and target["echoed"] is True
    # ... which runs from one listen port to the other's NAT mapping of it, not via the hub.
    a, b = names.sites["h1"], names.sites["h2"]
    assert dialler["local"] == f"{a.address}:{PORT}" and dialler["remote"] == f"{b.public}:{PORT}"
    assert target["local"] == f"{b.address}:{PORT}" and target["remote"] == f"{a.public}:{PORT}"


def test_two_cone_nats_punch_a_direct_noise_session() -> None:
    with lab("hpc", ["cone", "cone"]) as names:
        results = punch_pair(names, timeout=60)
    assert_punched(names, results)
    # Routers that drop the early SYN: both SYNs cross at once, in the first round.
    assert float(results["dialler"]["seconds"]) < 1.0, results  # type: ignore[arg-type]


@pytest.mark.parametrize("kinds", [["cone", "public"], ["public", "cone"]])
def test_one_public_side_the_natted_side_dials_it(kinds: list[str]) -> None:
    with lab("hpr", kinds) as names:
        results = punch_pair(names, timeout=60)
    assert_punched(names, results)


def test_routers_that_reset_early_syns_punch_or_fail_cleanly() -> None:
    # A router that answers the first SYN with a reset also makes its own conntrack forget
    # the other side's mapping ("RST answering SYN" kills the entry), so the SYNs must cross
    # within one router-to-router round trip: microseconds here (netem is not available to
    # add more), tens of milliseconds on the internet. Through a hub with 60 ms each way the
    # timing is right to the millisecond, and each refused SYN is retried every 200 ms; what
    # this lab can show is that the punch then ends one of two clean ways.
    with lab("hpt", ["cone-rst", "cone-rst"]) as names:
        results = punch_pair(names, timeout=DEFAULT_CONFIG.bound() + 30, delay=0.06)
    if results["dialler"]["event"] == "punched":
        assert_punched(names, results)
        return
    for role, result in results.items():
        assert result["event"] == "failed", (role, result)
        reason = str(result["reason"])
        assert reason.startswith("no direct connection after 3 rounds of 5 s: "), reason
        assert "refused (25 attempts)" in reason, reason  # retried at the full pace
        assert float(result["seconds"]) < DEFAULT_CONFIG.bound(), result  # type: ignore[arg-type]


@pytest.mark.parametrize("kinds", [["symmetric", "symmetric"], ["cone", "symmetric"]])
def test_a_symmetric_nat_fails_cleanly_within_the_bound(kinds: list[str]) -> None:
    bound = DEFAULT_CONFIG.bound()
    with lab("hps", kinds) as names:
        results = punch_pair(names, timeout=bound + 30)
    for role, result in results.items():
        assert result["event"] == "failed", (role, result)
        reason = str(result["reason"])
        assert reason.startswith(f"no direct connection after {DEFAULT_CONFIG.rounds} rounds "
                                 f"of {DEFAULT_CONFIG.dial_window:g} s: "), reason
        # It names what it dialled: the peer's NAT as the hub saw it, and its LAN address.
        assert "203.0.113." in reason and "10.0." in reason, reason
        assert float(result["seconds"]) < bound, result  # type: ignore[arg-type]
        assert int(result["attempts"]) <= DEFAULT_CONFIG.max_attempts  # type: ignore[call-overload]
        assert result["rounds"] == DEFAULT_CONFIG.rounds
