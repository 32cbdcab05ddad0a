"""Test set-up: ``src/`` is importable as in ``python main.py`` run from ``src/``, and the shared test code
as ``helpers`` (tests/helpers), by pytest.ini's ``pythonpath``; the fixtures that share expensive runs."""

import pytest

import helpers
from helpers.architectures import tiny_flags

# One epoch of an architecture's tiny configuration on the Sample data, evaluated with --save_results.
TINY_RUN = ['--template', 'demo', '--cpu', '--patch_size', '32', '--batch_size', '2', '--test_every', '2',
            '--print_every', '1', '--n_threads', '0', '--seed', '7']


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """``tiny_run(name)``: the run folder ``<base>/exp/<name>`` of ``main.py`` (:data:`TINY_RUN`, the tiny
    flags of architecture ``name``, ``--epochs 1``), trained once a session; ``tiny_run.flags(name)`` are
    its flags. Tests read it; a test that continues or changes it copies it first."""
    base = tmp_path_factory.mktemp('tiny_runs')
    runs = {}

    def run(name: str):
        if name not in runs:
            done = helpers.main_here(base, *run.flags(name), '--epochs', '1', '--save', name)
            assert done.returncode == 0, done.stdout + done.stderr
            runs[name] = base / 'exp' / name
        return runs[name]

    run.flags = lambda name: [*TINY_RUN, *tiny_flags(name)]
    return run
