"""``python -m shared.loadgen``: see ``shared/loadgen/__init__.py`` for usage."""

import sys

from shared.loadgen.cli import main

sys.exit(main())
