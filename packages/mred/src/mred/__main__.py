"""``python -m mred`` runs the ``mred`` command."""

from mred.cli import main

raise SystemExit(main())
