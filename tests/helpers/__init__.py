"""Code the tests share (imported as ``helpers`` and ``helpers.<module>``; tests never import each other
or ``conftest``): the repository's folders and ``main.py`` in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
SRC = ROOT / 'src'
# Data written by the official code bases (weights, inputs, outputs) and their state_dict key listings.
FIXTURES = TESTS / 'fixtures'
# Read-only material beside the checkout (real Set5/Set14, T91..., official key listings); tests skip without it.
SHARED = ROOT.parent / 'shared'

# main.py in a subprocess: one thread per process (tests run several), unbuffered output to read live.
MAIN_ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


def main_command(base: Path, *flags) -> list[str]:
    """``python main.py FLAGS`` with data under ``base/data`` and runs under ``base/exp`` (run from src/)."""
    return [sys.executable, 'main.py', *map(str, flags), '--dir_data', str(base / 'data'),
            '--save_dir', str(base / 'exp')]


def run_main(base: Path, *flags, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(base, *flags), cwd=SRC, env=MAIN_ENV, capture_output=True, text=True,
                          timeout=timeout)
