"""``python -m infjesp`` runs the ``infjesp`` command."""

from infjesp.cli import main

raise SystemExit(main())
