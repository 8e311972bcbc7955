"""Sub-commands of the ``predec`` CLI (see :mod:`predec.cli`)."""
