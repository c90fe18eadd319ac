"""Where the source checkout is (tests run from it; the installed code never looks for it)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
