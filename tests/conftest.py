"""Shared test set-up: ``src/`` is importable as in ``python main.py`` run from ``src/``."""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / 'src'
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
