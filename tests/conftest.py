"""Test set-up: ``src/`` is importable as in ``python main.py`` run from ``src/``, and the shared test
code as ``helpers`` (tests/helpers)."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for folder in (TESTS.parent / 'src', TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
