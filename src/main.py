"""Entry point: ``python main.py [flags]``, run from ``src/`` (see README)."""

import sys

import torch

import data
import loss
import model
import option
from core import distributed, rng
from core.errors import UserError, show_warnings_plainly
from core.io_utils import write_error_cause
from trainer import Trainer
from training import run_folder


def run(args) -> None:
    """Train and/or evaluate in this process (one of several under torch.distributed)."""
    show_warnings_plainly()  # again: a spawned process starts with Python's default
    torch.manual_seed(args.seed)
    rng.set_deterministic(args.deterministic)
    # Every start-up check runs before the run folder is written, or deleted by --reset: the folder itself,
    # the data, the weights (--pre_train, --load), the loss, what --resume loads.
    ckp = run_folder.RunFolder(args, open_now=False)
    if getattr(args, 'pre_train_detected', ''):
        ckp.write_log(args.pre_train_detected)
    try:
        loader = data.Data(args)
        net = model.Model(args, ckp)
        criterion = loss.Loss(args, ckp) if not args.test_only else None
        trainer = Trainer(args, loader, net, criterion, ckp)
        args.checkpoint = None  # its tensors are in the network now: holding them would double the weights' memory
        ckp.open()
        while not trainer.terminate():
            trainer.train()
            trainer.test()
        trainer.tb.close()
    except BaseException:
        ckp.abort()
        raise
    ckp.done()


def main(argv=None) -> int:
    show_warnings_plainly()
    args = None
    try:
        args = option.parse_main_args(argv)
        device_note = distributed.select_device(args)
        if device_note:
            print(device_note)
        distributed.launch(args, run)
    except distributed.PeerFailed:  # under torchrun: the process that failed prints why
        return 2
    except distributed.ProcessFailed as e:
        print(f'error: {e}; {run_folder.how_to_go_on(args)}', file=sys.stderr)
        return 2
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's status for SIGINT
        print(run_folder.interrupted_message(args), file=sys.stderr)
        return 130
    except OSError as e:  # a write outside the trainer's own handling (the run folder at start-up, ...)
        cause = write_error_cause(e)
        if cause is None:
            raise
        print(f'error: cannot write {e.filename or "the run folder"}: {cause}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
