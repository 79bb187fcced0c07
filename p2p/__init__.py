"""p2p: a peer-to-peer, content-addressed file-sharing network.

The library behind the ``p2p`` command line, the ``p2p-tui`` terminal app and
the ``p2p-bootstrap`` daemon. Front ends drive it through one object, the node.
"""

__version__ = "0.1.0"
