"""``python -m contrastive_crop``."""

from contrastive_crop.cli import main

raise SystemExit(main())
