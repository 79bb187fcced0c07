"""Suite-wide test setup: this folder is on the import path, so every suite can use
:mod:`testbed` (one node configuration, one file maker)."""
