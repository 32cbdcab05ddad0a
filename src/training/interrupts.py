"""Ctrl-C between batches: a batch being handed over by a loader worker is received whole first.

A DataLoader worker passes each batch's tensors to the main process as file descriptors, served by a
thread of the worker. A KeyboardInterrupt in the middle of that hand-over breaks the connection and
the worker prints a traceback of its own beside the one line ``main.py`` prints. :func:`batches`
holds a Ctrl-C that arrives while the next batch is fetched until the fetch is complete (at most
one batch's loading time); a Ctrl-C at any other moment interrupts at once.

Test-only: with the environment variable ``LCOAN_TEST_HOLD_AT_BATCH=N`` (:data:`HOLD_ENV`), the
process stops when it has fetched its N-th training batch (counted from 1 over all epochs), before training it,
prints :data:`HOLD_LINE` and the number on stdout, and waits there until a signal ends it (Ctrl-C, a
kill). A test that interrupts a run waits for that line, so the run is at the chosen batch whatever
the load of the machine. Nothing else reads it; never set it for real runs.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator

HOLD_ENV = 'LCOAN_TEST_HOLD_AT_BATCH'
HOLD_LINE = 'test hold: waiting for a signal at batch'
HOLD_LIMIT_S = 300  # a test that never sends the signal fails instead of hanging
_fetched = 0  # batches fetched by this process, over all epochs


@contextlib.contextmanager
def _sigint_held():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _test_hold() -> None:
    """Count a batch; at the one :data:`HOLD_ENV` names, wait for a signal (test-only, see the module)."""
    global _fetched
    _fetched += 1
    if os.environ.get(HOLD_ENV) != str(_fetched):
        return
    # One write of the whole line (print writes the newline apart): other processes' lines stay apart.
    sys.stdout.flush()
    sys.stdout.write(f'{HOLD_LINE} {_fetched}\n')
    sys.stdout.flush()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a signal's handler runs here (Ctrl-C raises KeyboardInterrupt)
    raise RuntimeError(f'{HOLD_ENV}: no signal came within {HOLD_LIMIT_S} s')


def batches(iterable: Iterable, *, training: bool = True) -> Iterator:
    """The items of ``iterable``; a Ctrl-C while one is fetched is raised once it has arrived. ``training``:
    the items are training batches, which the test-only hold counts (evaluation images are not)."""
    iterator = iter(iterable)
    while True:
        with _sigint_held():
            try:
                item = next(iterator)
            except StopIteration:
                return
        if training:
            _test_hold()
        yield item
