"""The ``p2p`` command line: a thin front end that drives :class:`p2p.node.Node` and renders its events."""

from .app import main

__all__ = ["main"]
