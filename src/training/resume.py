"""Loading a run back: ``--load <run> --resume -1|N`` continues its training, ``--load <run> --test_only``
evaluates its network.

A resumed run continues the same network (no upsampler swap; a mismatch names its keys) on the same
problem: the loss terms, test sets and scale must be those the run was trained with. The training state
goes back into the trainer as :mod:`training.state` reads it. The schedule is the run's own: the log
gives the learning rate in use and says when ``--lr/--decay/--gamma`` given now differ from it.
"""

import argparse
import math
from pathlib import Path

from torch import nn, optim

from core.errors import UserError
from model.checkpoint import files, loading
from training import state
from training.run_folder import RunFolder


def load_for_test(net: nn.Module, ckp: RunFolder, args: argparse.Namespace) -> None:
    """--test_only --load <run>: its latest model (--resume N: epoch N's) into ``net``; the log says which file."""
    model_path, _ = state.resume_paths(ckp, args.resume if args.resume > 0 else -1)
    if args.resume <= 0 and not model_path.exists():
        raise UserError(f'--load {args.load} --test_only: {ckp.run_dir} has no finished epoch to evaluate '
                        f'({model_path} does not exist)')
    _load_network(net, _network_state(model_path, args), model_path, ckp)
    which = f'epoch {args.resume}' if args.resume > 0 else 'the latest epoch'
    ckp.write_log(f'--test_only: evaluating {model_path} ({which} of run {args.load}; --resume N evaluates '
                  f'epoch N with --save_models, --pre_train {model_path.parent / "model_best.pt"} the best)')


def resume_training(trainer) -> None:
    """--load <run> --resume -1|N: the network of the epoch, then its training state, into ``trainer``."""
    args, ckp = trainer.args, trainer.ckp
    saved, path = _load_resume_point(trainer.model.get_model(), ckp, args)
    _check_same_run(saved, args, ckp.dir, loss_names=trainer.loss.names, test_sets=trainer.test_sets,
                    scale=trainer.scale)
    state.restore(trainer, saved, path)
    trainer.saved_epoch = trainer.epoch
    _log_schedule(ckp, args, trainer.optimizer, trainer.scheduler, trainer.epoch, path)


def _network_state(path: Path, args: argparse.Namespace) -> dict:
    """The state_dict of the network file ``path``: as parsing read it to take the run's architecture
    (``args.checkpoint``), else read now."""
    ckpt = getattr(args, 'checkpoint', None)
    if ckpt is not None and ckpt.path == path:
        return ckpt.state
    return files.read_state_dict(path, what='model')


def _load_network(net: nn.Module, net_state: dict, path: Path, ckp: RunFolder) -> None:
    loading.load_into(net, net_state, source=f'--load {path}', log=ckp.write_log, allow_new_upsampler=False)


def _load_resume_point(net: nn.Module, ckp: RunFolder, args: argparse.Namespace) -> tuple[dict, Path]:
    """The training state of ``--resume`` (-1: the latest epoch; N: epoch N) and its path, with the network
    of the same epoch loaded into ``net``."""
    model_path, state_path = state.resume_paths(ckp, args.resume)
    saved = state.read_training_state(state_path)
    if args.resume == -1:  # training_state.pt holds the network itself
        files.check_finite(saved['model'], f'training state {state_path}')
        _load_network(net, saved['model'], state_path, ckp)
    else:
        _load_network(net, _network_state(model_path, args), model_path, ckp)
    return saved, state_path


def _check_same_run(saved: dict, args: argparse.Namespace, run: Path, *, loss_names: list[str],
                    test_sets: list[str], scale: int) -> None:
    # The logs of the run have a column per loss term and per test set.
    if saved['loss_names'] != loss_names:
        raise UserError(f'--loss {args.loss!r}: the run in {run} was trained with terms '
                        f'{"+".join(saved["loss_names"])}; resume with the same --loss')
    if saved['test_sets'] != test_sets or saved['scale'] != scale:
        raise UserError(f'--data_test/--scale: the run in {run} was evaluated on '
                        f'{"+".join(saved["test_sets"])} x{saved["scale"]}; resume with the same sets and scale')


def _log_schedule(ckp: RunFolder, args: argparse.Namespace, optimizer: optim.Optimizer,
                  scheduler: optim.lr_scheduler.MultiStepLR, epoch: int, path: Path) -> None:
    """Log the resumed point and its learning rate, and say when flags given now do not change the schedule
    or the run has finished its ``--epochs`` already.

    Args:
        ckp: the run folder (its log).
        args: the options given now (``lr, decay, gamma, epochs``).
        optimizer, scheduler: restored from the run.
        epoch: the last finished epoch of the run.
        path: the training state resumed from.
    """
    lr_now = optimizer.param_groups[0]['lr']
    milestones = sorted(scheduler.milestones)
    ckp.write_log(f'Resumed {path} after epoch {epoch}: learning rate in use {lr_now:.2e} '
                  f'(milestones {milestones}, gamma {scheduler.gamma:g})')
    base_lr = scheduler.base_lrs[0]
    changed = (not math.isclose(base_lr, args.lr) or milestones != list(args.decay)
               or not math.isclose(scheduler.gamma, args.gamma))
    if changed:
        ckp.write_log(f'Note: the resumed schedule (lr {base_lr:g}, decay {milestones}, '
                      f'gamma {scheduler.gamma:g}) is kept; --lr/--decay/--gamma given now are not used')
    if epoch >= args.epochs:
        ckp.write_log(f'The run has finished {epoch} epochs already (--epochs {args.epochs})')
