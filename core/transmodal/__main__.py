"""``python -m transmodal``: the same command as ``transmodal``."""

import sys

from transmodal.cli import main

sys.exit(main())
