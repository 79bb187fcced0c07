"""The front ends use only the library's public API: what ``p2p.__all__`` lists.

The command line (``p2p/cli``), the terminal app (``tui/``) and the daemon
(``bootstrap/``) import from the top-level ``p2p`` package and nothing deeper,
and never reach into the node's parts (its store, DHT, chunk server, identity).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2p

ROOT = Path(__file__).resolve().parents[2]
FRONT_ENDS = sorted([*(ROOT / "p2p" / "cli").glob("*.py"), *(ROOT / "tui").glob("*.py"),
                     *(ROOT / "bootstrap").glob("*.py")])
PRIVATE_PARTS = {"store", "dht", "server", "identity", "_downloads", "_store", "_dht", "_server"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import, with the CLI's relative ``..`` made absolute."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 2 and path.parent.name == "cli":
                module = "p2p" + (f".{module}" if module else "")
            elif node.level:
                continue  # a sibling inside the same front end
            out.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return out


def test_the_public_api_is_explicit() -> None:
    assert len(p2p.__all__) == len(set(p2p.__all__))
    missing = [name for name in p2p.__all__ if not hasattr(p2p, name)]
    assert not missing
    assert (ROOT / "p2p" / "py.typed").exists()


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_front_ends_import_only_the_public_api(path: Path) -> None:
    for line, module, names in _imports(path):
        if module == "p2p":
            hidden = [n for n in names if n not in p2p.__all__]
            assert not hidden, f"{path.name}:{line} imports non-public {hidden}"
        else:
            assert not module.startswith("p2p."), f"{path.name}:{line} imports {module}"


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_front_ends_do_not_reach_into_the_node(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_PARTS:
            base = node.value
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            assert "node" not in name.lower(), \
                f"{path.name}:{node.lineno} reaches into {name}.{node.attr}"
