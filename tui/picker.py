"""The file tree of a folder download, with a tick per file: the pure index
(:class:`FileIndex`) and the widget that shows it (:class:`FileTree`).

The index is built once, in one pass over the sorted paths; the widget adds tree nodes
only when a folder is opened, and at most :data:`PAGE` at a time, so a listing of
100,000 files opens as fast as one of ten.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from p2p import human_bytes

from .model import counted

PAGE = 500
"""Children a folder shows at a time when opened; a "more" line adds the next page.
Enough to scroll through by hand, few enough that opening a flat folder of 100,000
files costs what opening one of 500 does."""

Tick = Literal["all", "some", "none"]
"""A folder's state: every file under it ticked, some, or none."""

_BOXES: dict[Tick, str] = {"all": "[x] ", "some": "[-] ", "none": "[ ] "}


@dataclass(eq=False)
class Folder:
    """A folder of the listing: the files under it are the index range ``lo:hi``."""

    name: str
    path: str
    """Relative ``/``-separated path ("" for the top)."""
    lo: int = 0
    hi: int = 0
    folders: list[Folder] = field(default_factory=list)
    """Sub-folders, by name."""
    files: list[int] = field(default_factory=list)
    """Indexes of the files directly in it, by name."""

    @property
    def count(self) -> int:
        """Files under it, at any depth."""
        return self.hi - self.lo


class FileIndex:
    """Files (relative path, size) in tree order, and which are ticked.

    Tree order sorts paths by their components, so the files under any folder are one
    contiguous range: ticking a folder is one slice assignment, counting its ticks one
    ``bytearray.count``.
    """

    def __init__(self, files: Iterable[tuple[str, int]], ticked: Iterable[str] | None = None) -> None:
        pairs = sorted(((path.split("/"), size) for path, size in files), key=lambda p: p[0])
        self.paths = ["/".join(parts) for parts, _ in pairs]
        self.sizes = [size for _, size in pairs]
        self._total = list(itertools.accumulate(self.sizes, initial=0))
        self.ticked = bytearray(b"\x01" * len(pairs)) if ticked is None else bytearray(len(pairs))
        if ticked is not None:
            wanted = set(ticked)
            for i, path in enumerate(self.paths):
                if path in wanted:
                    self.ticked[i] = 1
        self.root = Folder("", "")
        self._version = 0
        self._cache: dict[int, tuple[int, int, int]] = {}
        stack = [self.root]
        for i, (parts, _) in enumerate(pairs):
            dirs = parts[:-1]
            depth = 0  # how many of the open folders this file is still inside
            while depth < len(dirs) and depth + 1 < len(stack) and stack[depth + 1].name == dirs[depth]:
                depth += 1
            for done in stack[depth + 1:]:
                done.hi = i
            del stack[depth + 1:]
            for name in dirs[depth:]:
                parent = stack[-1]
                child = Folder(name, f"{parent.path}/{name}" if parent.path else name, lo=i)
                parent.folders.append(child)
                stack.append(child)
            stack[-1].files.append(i)
        for done in stack:
            done.hi = len(pairs)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        """The file's own name (its last path component)."""
        return self.paths[index].rsplit("/", 1)[-1]

    def size_of(self, folder: Folder) -> int:
        """Bytes under ``folder``."""
        return self._total[folder.hi] - self._total[folder.lo]

    def ticks(self, folder: Folder) -> tuple[int, int]:
        """(files ticked, bytes ticked) under ``folder`` (cached until the next change)."""
        cached = self._cache.get(id(folder))
        if cached is not None and cached[0] == self._version:
            return cached[1], cached[2]
        count = self.ticked.count(1, folder.lo, folder.hi)
        if count == folder.count:
            size = self.size_of(folder)
        elif count == 0:
            size = 0
        else:
            size = sum(itertools.compress(self.sizes[folder.lo:folder.hi],
                                          self.ticked[folder.lo:folder.hi]))
        self._cache[id(folder)] = (self._version, count, size)
        return count, size

    def state(self, folder: Folder) -> Tick:
        """Whether all, some or none of the files under ``folder`` are ticked."""
        count, _ = self.ticks(folder)
        return "all" if count == folder.count and count else "some" if count else "none"

    def toggle(self, item: Folder | int) -> None:
        """Tick a file, or every file under a folder; untick when all already are."""
        lo, hi = (item, item + 1) if isinstance(item, int) else (item.lo, item.hi)
        whole = self.ticked.count(1, lo, hi) == hi - lo
        self.ticked[lo:hi] = (b"\x00" if whole else b"\x01") * (hi - lo)
        self._version += 1

    def set_all(self, ticked: bool) -> None:
        """Tick (or untick) every file."""
        self.ticked[:] = (b"\x01" if ticked else b"\x00") * len(self.paths)
        self._version += 1

    def chosen(self) -> frozenset[str]:
        """The paths ticked now."""
        return frozenset(itertools.compress(self.paths, self.ticked))


@dataclass(frozen=True)
class More:
    """The "more" line of a folder shown a page at a time: the next child to show."""

    folder: Folder
    start: int


NodeData = Folder | int | More
"""What a tree node stands for: a folder, a file (its index), or a folder's next page."""


def children(folder: Folder) -> Sequence[Folder | int]:
    """What ``folder`` shows when opened: its folders, then its files."""
    return [*folder.folders, *folder.files]


class FileTree(Tree[NodeData]):
    """The files of a listing as a tree with a tick box per line. Space ticks a file or
    a whole folder, enter opens and closes a folder, left goes to the parent."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "tick", "Tick", show=False),
        Binding("right", "open", "Open", show=False),
        Binding("left", "close", "Close", show=False),
    ]

    class Changed(Message):
        """What is ticked changed."""

    def __init__(self, index: FileIndex, *, id: str | None = None) -> None:
        super().__init__("files", data=index.root, id=id)
        self.index = index
        self.show_root = False
        self.guide_depth = 2

    def on_mount(self) -> None:
        self.root.expand()
        self._fill(self.root)
        self.cursor_line = 0

    def _fill(self, node: TreeNode[NodeData], start: int = 0) -> None:
        data = node.data
        if not isinstance(data, Folder):
            return
        shown = children(data)
        for item in shown[start:start + PAGE]:
            if isinstance(item, Folder):
                node.add(item.name, data=item)
            else:
                node.add_leaf(self.index.name(item), data=item)
        if start + PAGE < len(shown):
            node.add_leaf(f"… {len(shown) - start - PAGE:,} more", data=More(data, start + PAGE))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[NodeData]) -> None:
        event.stop()
        if not event.node.children:
            self._fill(event.node)

    def on_tree_node_selected(self, event: Tree.NodeSelected[NodeData]) -> None:
        event.stop()
        node = event.node
        if isinstance(node.data, More) and node.parent is not None:
            parent, start = node.parent, node.data.start
            node.remove()
            self._fill(parent, start)

    def action_tick(self) -> None:
        """Tick or untick the line under the cursor (a folder: everything under it)."""
        node = self.cursor_node
        if node is None or isinstance(node.data, More) or node.data is None:
            return
        self.index.toggle(node.data)
        self.changed()

    def action_open(self) -> None:
        """Open the folder under the cursor."""
        node = self.cursor_node
        if node is not None and node.allow_expand and not node.is_expanded:
            node.expand()

    def action_close(self) -> None:
        """Close the folder under the cursor, or go to its parent."""
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded:
            node.collapse()
        elif node.parent is not None and node.parent is not self.root:
            self.move_cursor(node.parent)

    def changed(self) -> None:
        """Repaint every line (ticks under and above a folder changed) and say so."""
        # A top-level node is on the path of every line below it, and a line is drawn anew
        # when a node on its path was refreshed: every line is drawn anew.
        for child in self.root.children:
            child.refresh()
        self.refresh()
        self.post_message(self.Changed())

    def render_label(self, node: TreeNode[NodeData], base_style: Style, style: Style) -> Text:
        data = node.data
        if isinstance(data, More) or data is None:
            return Text.assemble(("    ", base_style), (str(node.label), base_style + Style(dim=True)))
        index = self.index
        if isinstance(data, Folder):
            count, size = index.ticks(data)
            box = _BOXES[index.state(data)]
            icon = "▼ " if node.is_expanded else "▶ "
            stats = f"  {count:,}/{counted(data.count, 'file')} · {human_bytes(size)} of {human_bytes(index.size_of(data))}"
            return Text.assemble((box, base_style + Style(bold=True)), (icon, base_style),
                                 (f"{data.name}/", style), (stats, base_style + Style(dim=True)))
        box = _BOXES["all" if index.ticked[data] else "none"]
        return Text.assemble((box, base_style + Style(bold=True)), (index.name(data), style),
                             (f"  {human_bytes(index.sizes[data])}", base_style + Style(dim=True)))

    def get_label_width(self, node: TreeNode[NodeData]) -> int:
        # Called for every open line when the tree is laid out: a bound from the name alone,
        # not a count of the ticks under each folder.
        return len(str(node.label)) + 48
