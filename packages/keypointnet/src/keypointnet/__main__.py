"""``python -m keypointnet`` runs the ``keypointnet`` command."""

from keypointnet.cli import main

raise SystemExit(main())
