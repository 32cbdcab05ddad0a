"""``python entry_points.py COMMANDS_JSON``, run from a ``src/`` folder: the command-line programs of that
folder one after the other in this one process (one interpreter and torch import for all), each as
``<program>.main(argv)``. COMMANDS_JSON is a list of ``[program, [arg, ...]]``; prints a JSON list of
``{"status", "stdout", "stderr"}``, one for each.

For tests of a copy of ``src/`` (another import root than the test process's): what a sequence of
``python <program>.py ARGS`` gives, without a process for each.
"""

import contextlib
import importlib
import io
import json
import os
import sys
import traceback


def run(program: str, argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = importlib.import_module(program).main(argv)
        except SystemExit as e:  # argparse: --help, usage errors
            status = e.code if isinstance(e.code, int) else 1
        except Exception:  # as Python reports it, with status 1
            traceback.print_exc()
            status = 1
    return {'status': status, 'stdout': out.getvalue(), 'stderr': err.getvalue()}


if __name__ == '__main__':
    sys.path.insert(0, os.getcwd())
    print(json.dumps([run(program, argv) for program, argv in json.loads(sys.argv[1])]))
