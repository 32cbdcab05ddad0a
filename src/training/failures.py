"""What stops a run, or an evaluation, and the one line each gets: what happened, what is kept, what to do.

- A diverged run (:class:`training.step.Diverged`): the last epoch saved, and the flags that usually
  help (a lower ``--lr``, ``--gclip``).
- A write that fails for want of space or permission: the file and the cause; the checkpoint files are
  written atomically, so the last complete one is intact and the run resumes from it.
- An evaluation that fails after a training epoch: logged, and the epoch is saved without scores.
"""

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from core.errors import UserError
from core.io_utils import write_error_cause
from training.step import Diverged


def diverged_message(e: Diverged, args: argparse.Namespace, *, epoch: int, saved_epoch: int, lr: float) -> str:
    """The line that stops a diverged run.

    Args:
        e: says why the last batch was skipped.
        args: the options (``gclip``).
        epoch: the epoch that diverged.
        saved_epoch: the last epoch saved (0: none).
        lr: the learning rate in use.
    """
    saved = f'epoch {saved_epoch} is the last one saved' if saved_epoch else 'nothing was saved'
    return (f'training stopped in epoch {epoch}: it diverged, {e}; {saved}. Start over with --reset and '
            f'try a lower --lr (now {lr:g}), gradient clipping '
            f'(--gclip, e.g. 1{"" if not args.gclip else f"; now {args.gclip:g}"}), or check the training '
            'data')


@contextlib.contextmanager
def write_errors(args: argparse.Namespace, folder: Path, saved_epoch: Callable[[], int]) -> Iterator[None]:
    """Turn a write that fails for want of space or permission into one UserError; other errors pass.

    Args:
        args: the options (``test_only``, ``load``, ``save``: how to go on).
        folder: named when the error names no file.
        saved_epoch: the last epoch saved (0: none), asked when the write fails, so that an epoch saved
            inside the block counts.
    """
    try:
        yield
    except OSError as e:
        cause = write_error_cause(e)
        if cause is None:
            raise
        where = f'{e.filename}' if e.filename else str(folder)
        if args.test_only:
            after = 'make room or choose another --save_dir, then evaluate again'
        elif saved_epoch():
            name = args.load or args.save
            after = (f'the checkpoint of epoch {saved_epoch()} is intact: make room (or make the folder '
                     f'writable), then resume with --load {name} --resume -1')
        else:
            after = 'nothing was saved yet: make room (or make the folder writable), then start over with --reset'
        raise UserError(f'cannot write {where}: {cause}; {after}') from None


def evaluation_failed(e: Exception, epoch: int) -> str:
    """The log line of an evaluation that failed after training epoch ``epoch``: the error's first line."""
    text = str(e).strip()
    return (f'Evaluation after epoch {epoch} failed, the epoch is saved without scores: '
            f'{type(e).__name__}: {text.splitlines()[0] if text else ""}')
