"""``python -m ones_distill`` runs the ``ones-distill`` command."""

from ones_distill.cli import main

raise SystemExit(main())
