"""The reachability verdict, fed observations by hand (pure: no sockets)."""

from __future__ import annotations

from p2p.reachability import (
    CONFIRMATIONS,
    FIREWALL_ONLY,
    NAT,
    PUBLIC,
    UNKNOWN,
    DialBack,
    Mapping,
    Outcome,
    Reachability,
    judge,
)

LOCAL = ("10.0.1.2", 7473)
BOOT, BOOT2, OTHER = ("203.0.113.10", 7473), ("203.0.113.11", 7473), ("198.51.100.7", 7473)
EXTERNAL = ("203.0.113.1", 7473)


def reached(*sources: tuple[str, int], server: tuple[str, int] = BOOT) -> DialBack:
    return DialBack("p2pkserver", server, Outcome.REACHED, len(sources), tuple(sources))


def failed(attempts: int = 2, server: tuple[str, int] = BOOT) -> DialBack:
    return DialBack("p2pkserver", server, Outcome.NOT_REACHED, attempts)


def test_two_dialback_sources_make_public_even_in_a_documentation_range() -> None:
    seen = [Mapping(BOOT, ("203.0.113.20", 7473), ("203.0.113.20", 7473))]
    verdict = judge(["203.0.113.20"], seen, [reached(("203.0.113.10", 40001),
                                                     ("203.0.113.11", 40002))])
    assert verdict.reachability == PUBLIC and verdict.reachable
    assert verdict.nat["present"] is False


def test_one_source_is_not_enough() -> None:
    verdict = judge(["203.0.113.20"], [], [reached(("203.0.113.10", 40001))])
    assert verdict.reachability == UNKNOWN
    assert any(f"{CONFIRMATIONS} needed" in e for e in verdict.evidence)


def test_observed_addresses_alone_never_prove_reachability() -> None:
    # Many observers agreeing on our own address is still no dial-back.
    seen = [Mapping(o, ("203.0.113.20", 7473), ("203.0.113.20", 7473)) for o in (BOOT, OTHER)]
    assert judge(["203.0.113.20"], seen, []).reachability == UNKNOWN


def test_cone_nat() -> None:
    seen = [Mapping(BOOT, EXTERNAL, LOCAL), Mapping(BOOT2, EXTERNAL, LOCAL)]
    verdict = judge([LOCAL[0]], seen, [failed()])
    assert verdict.reachability == NAT
    assert verdict.nat["mapping"] == "endpoint-independent"
    assert verdict.nat["filtering"] == "endpoint-dependent"
    assert verdict.nat["external"] == "203.0.113.1:7473"
    assert verdict.nat["port_preserved"] is True


def test_symmetric_nat() -> None:
    seen = [Mapping(BOOT, ("203.0.113.1", 40000), LOCAL),
            Mapping(BOOT2, ("203.0.113.1", 51234), LOCAL)]
    verdict = judge([LOCAL[0]], seen, [failed()])
    assert verdict.reachability == NAT
    assert verdict.nat["mapping"] == "endpoint-dependent"


def test_firewall_only() -> None:
    seen = [Mapping(BOOT, LOCAL, LOCAL), Mapping(BOOT2, LOCAL, LOCAL)]
    verdict = judge([LOCAL[0]], seen, [failed()])
    assert verdict.reachability == FIREWALL_ONLY
    assert verdict.nat["present"] is False


def test_one_failed_attempt_decides_nothing() -> None:
    seen = [Mapping(BOOT, EXTERNAL, LOCAL)]
    assert judge([LOCAL[0]], seen, [failed(attempts=1)]).reachability == UNKNOWN


def test_two_servers_one_attempt_each_decide() -> None:
    seen = [Mapping(BOOT, EXTERNAL, LOCAL), Mapping(OTHER, EXTERNAL, LOCAL)]
    verdict = judge([LOCAL[0]], seen, [failed(1), failed(1, OTHER)])
    assert verdict.reachability == NAT


def test_refused_and_unanswered_dialbacks_count_for_nothing() -> None:
    seen = [Mapping(BOOT, EXTERNAL, LOCAL)]
    refused = DialBack("p2pk", BOOT, Outcome.REFUSED, 0)
    silent = DialBack("?", OTHER, Outcome.NO_ANSWER, 0)
    verdict = judge([LOCAL[0]], seen, [refused, silent])
    assert verdict.reachability == UNKNOWN
    assert any("refused" in e for e in verdict.evidence)


def test_no_observer_is_unknown_even_if_dialbacks_fail() -> None:
    assert judge([LOCAL[0]], [], [failed(), failed()]).reachability == UNKNOWN


def test_reachable_behind_a_forwarded_port_is_public() -> None:
    seen = [Mapping(BOOT, EXTERNAL, LOCAL)]
    verdict = judge([LOCAL[0]], seen, [reached(("203.0.113.10", 40001), ("203.0.113.11", 1))])
    assert verdict.reachability == PUBLIC and verdict.nat["present"] is True
    assert verdict.nat["filtering"] == "endpoint-independent"


def test_json_round_trip() -> None:
    verdict = judge([LOCAL[0]], [Mapping(BOOT, EXTERNAL, LOCAL)], [failed()])
    obj = verdict.to_json()
    assert set(obj) == {"reachability", "nat", "evidence"}
    assert Reachability.from_json(obj) == verdict
