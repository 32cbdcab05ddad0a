"""Ctrl-C between batches: a batch being handed over by a loader worker is received whole first.

A DataLoader worker passes each batch's tensors to the main process as file descriptors, served by a
thread of the worker. A KeyboardInterrupt in the middle of that hand-over breaks the connection and
the worker prints a traceback of its own beside the one line ``main.py`` prints. :func:`batches`
holds a Ctrl-C that arrives while the next batch is fetched until the fetch is complete (at most
one batch's loading time); a Ctrl-C at any other moment interrupts at once.
"""

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator


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


def batches(iterable: Iterable) -> Iterator:
    """The items of ``iterable``; a Ctrl-C while one is fetched is raised once it has arrived."""
    iterator = iter(iterable)
    while True:
        with _sigint_held():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
