"""``python -m bench.loadgen``: see ``bench/loadgen/__init__.py`` for usage."""

import sys

from bench.loadgen.cli import main

sys.exit(main())
