"""``python -m ptrain.hetmem``."""

import sys

from ptrain.hetmem.cli import main

sys.exit(main())
