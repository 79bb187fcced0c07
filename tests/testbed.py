"""What every suite builds its nodes and files with: one node configuration, one file maker.

Importable as ``testbed`` from any test (the top-level ``tests/conftest.py`` puts this
folder on the import path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blake3

from p2p import Address, NodeConfig

MiB = 1 << 20


def node_config(base: Path, name: str, bootstrap: Sequence[Address] = (),
                **changes: Any) -> NodeConfig:
    """A node on 127.0.0.1, any free port, with state and downloads under ``base / name``.

    The DHT's per-IP cap is lifted (every test peer shares 127.0.0.1); ``changes``
    override any other field (``host=("127.0.0.1", "::1")``, ``clock=...``).
    """
    config = NodeConfig(state_dir=base / name / "state", host="127.0.0.1", port=0,
                        bootstrap=tuple(bootstrap), download_dir=base / name / "downloads",
                        max_contacts_per_ip=None)
    return dataclasses.replace(config, **changes) if changes else config


def make_file(path: Path, size: int, seed: int | bytes = 1) -> Path:
    """``size`` pseudo-random, incompressible bytes at ``path`` (a BLAKE3 stream of ``seed``:
    fast at any size and the same bytes for the same seed); parent folders are made."""
    key = seed if isinstance(seed, bytes) else seed.to_bytes(8, "big")
    stream = blake3.blake3(key)
    piece = 8 << 20
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for offset in range(0, size, piece):
            f.write(stream.digest(length=min(piece, size - offset), seek=offset))
    return path


def need_tools(*tools: str) -> None:
    """Skip the test when a system tool it drives (``ip``, ``nft``) is missing, or when it is
    not run as root; under CI (``CI`` set, where ``.ci/run`` installs them) fail instead, so
    the network-namespace cases are never skipped unseen."""
    import os
    import shutil

    import pytest

    missing = [tool for tool in tools if shutil.which(tool) is None]
    reason = (f"`{'`, `'.join(missing)}` not installed" if missing
              else "network namespaces need root" if os.geteuid() != 0 else None)
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the network-namespace tests", pytrace=False)
    pytest.skip(reason)
