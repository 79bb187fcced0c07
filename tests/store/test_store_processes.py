"""Two or more processes using one state directory at the same time cooperate (WAL, busy timeout)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from p2p.store import Store

from .storeproc import Child

COUNT = 50


@pytest.mark.parametrize("round_", range(2))
def test_two_processes_add_shares_and_bans_at_once(tmp_path: Path, round_: int) -> None:
    state = tmp_path / "state"
    Store(state).close()  # an existing state directory (a fresh one: see the next test)
    with Child("populate", state, tmp_path / "work", "alpha", COUNT) as a, \
            Child("populate", state, tmp_path / "work", "beta", COUNT) as b:
        assert a.line() == "ready" and b.line() == "ready"
        a.send(b"go\n")
        b.send(b"go\n")
        results = []
        for child in (a, b):
            rc, out = child.finish(timeout=60)
            err = child.stderr()
            assert "locked" not in err, err
            assert rc == 0, err
            done, summary = out.splitlines()[-2:]
            assert done == "done"
            results.append(json.loads(summary))
    expected_shares = {cid for r in results for cid in r["shares"]}
    expected_bans = {peer for r in results for peer in r["bans"]}
    assert len(expected_shares) == len(expected_bans) == 2 * COUNT
    with Store(state) as store:
        assert {s.content_id.digest.hex() for s in store.shares()} == expected_shares
        assert {peer.key.hex() for peer, _, _, _ in store.bans()} == expected_bans
        assert all(store.is_banned(peer) for peer, _, _, _ in store.bans())
        for share in store.shares():  # and every share is servable
            count, _ = store.bitfield(share.content_id.digest)
            assert store.read_chunk(share.content_id.digest, count - 1)


def test_processes_opening_a_fresh_state_dir_at_once_all_succeed(tmp_path: Path) -> None:
    rounds, procs = 50, 4
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        children = [stack.enter_context(Child("open-many", tmp_path, rounds)) for _ in range(procs)]
        for _ in range(rounds):  # in lockstep: every child opens the same fresh directory at once
            for child in children:
                while (line := child.line()) != "ready":
                    errors.append(line)
            for child in children:
                child.send(b"go\n")
        for child in children:
            rc, out = child.finish()
            assert rc == 0, child.stderr()
            errors.extend(out.splitlines())
    assert errors == []
