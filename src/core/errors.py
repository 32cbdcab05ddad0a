"""The one exception type for bad input from the user.

Anything the user can fix (a flag out of range, a missing folder, a corrupt image, a checkpoint for
another configuration) raises :class:`UserError` with a message that names the flag or the file.
Every entry point (:func:`run_entry_point`) prints that message on one line and exits with status 2,
without a traceback.
Warnings are shown the same way, as ``warning: <message>`` (see :func:`show_warnings_plainly`).
"""

import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """Bad input that the user can fix; the message names the flag or file at fault."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f'warning: {message}', file=file or sys.stderr, flush=True)


def show_warnings_plainly() -> None:
    """Print warnings as one line, ``warning: <message>``, instead of Python's default format (which adds
    the file, line and source line of the code that warned). Entry points call this, never imports."""
    warnings.showwarning = _show_warning


def run_entry_point(run: Callable[[], int | None]) -> int:
    """Run a command-line program's body: warnings as one line, a :class:`UserError` as one line
    ``error: <message>`` on stderr and exit status 2; otherwise ``run()``'s status (None: 0)."""
    show_warnings_plainly()
    try:
        return run() or 0
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
