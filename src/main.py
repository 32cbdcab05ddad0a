"""Entry point: ``python main.py [flags]``, run from ``src/`` (see README)."""

import sys

import torch

import data
import distributed
import loss
import model
import option
import utility
from errors import UserError
from trainer import Trainer


def run(args) -> None:
    """Train and/or evaluate in this process (one of several under torch.distributed)."""
    torch.manual_seed(args.seed)
    ckp = utility.checkpoint(args)
    if getattr(args, 'pre_train_detected', ''):
        ckp.write_log(args.pre_train_detected)
    loader = data.Data(args)
    net = model.Model(args, ckp)
    criterion = loss.Loss(args, ckp) if not args.test_only else None
    trainer = Trainer(args, loader, net, criterion, ckp)
    while not trainer.terminate():
        trainer.train()
        trainer.test()
    ckp.done()


def main(argv=None) -> int:
    try:
        args = option.parse_args(argv)
        if not args.cuda_available and not args.cpu_requested:
            print('CUDA is not available: running on the CPU.')
        distributed.launch(args, run)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
