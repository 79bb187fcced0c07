"""Suite-wide test setup: this folder is on the import path, so every suite can use
:mod:`testbed` (one node configuration, one file maker)."""

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_personal_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every process it starts, reads an empty config folder: the config file
    of the person running the suite (``~/.config/p2p/config.toml``) must not change results."""
    folder: Path = tmp_path_factory.mktemp("xdg-config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(folder))
        patch.delenv("P2P_CONFIG", raising=False)
        yield
