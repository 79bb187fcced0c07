"""``python -m p2p.cli``: the same as the ``p2p`` command."""

from .app import main

raise SystemExit(main())
