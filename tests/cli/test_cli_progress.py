"""The fetch view's rendering of node events (pure: an Output on string buffers)."""

from __future__ import annotations

import io
import json

from p2p.cli.output import Output
from p2p.cli.progress import FetchView, describe_paths
from p2p.content import ContentId
from p2p.events import DownloadProgress

CID = ContentId(bytes(range(32)))


def test_all_direct_peers_are_a_plain_count() -> None:
    assert describe_paths(0, {}) == "0"
    assert describe_paths(2, {"a": "direct", "b": "direct"}) == "2"


def test_other_paths_are_counted_in_order() -> None:
    paths = {"a": "relayed", "b": "direct", "c": "punched", "d": "relayed"}
    assert describe_paths(4, paths) == "4 (1 direct, 1 punched, 2 relayed)"
    assert describe_paths(1, {"a": "relayed"}) == "1 (1 relayed)"


def test_json_progress_records_carry_each_peers_path() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(json_mode=True, verbosity=0, stdout=stdout, stderr=stderr)
    view = FetchView(out, CID)
    with view:
        view.handle(DownloadProgress(CID, 1, 4, 10, 40, 5.0, 6.0, 2,
                                     {"p1": "punched", "p2": "relayed"}))
    (line,) = stdout.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "progress" and record["peers"] == 2
    assert record["paths"] == {"p1": "punched", "p2": "relayed"}
