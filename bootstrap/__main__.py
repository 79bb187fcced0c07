"""``python -m bootstrap``: the same as the ``p2p-bootstrap`` command."""

import sys

from .daemon import main

sys.exit(main())
