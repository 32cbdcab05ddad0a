"""The checkpoint files of a finished epoch and the training-state format a run resumes from.

Files in the run folder (rank 0 writes them, each atomically):

- ``model/model_latest.pt``, ``model/model_best.pt`` and, with --save_models, ``model/model_<epoch>.pt``:
  the bare network's state_dict, as the official checkpoints are; with --save_safetensors each also
  as ``.safetensors`` beside it (contiguous tensors; for tools that read only safetensors), without it
  none (an older one beside the new ``.pt`` is removed);
- ``training_state.pt``: everything :class:`trainer.Trainer` needs to continue after the epoch, the
  network included; with --save_models also ``state/training_state_<epoch>.pt`` (without the network,
  which is ``model/model_<epoch>.pt``). All of it loads with ``weights_only=True``.

The training state is what :func:`collect` takes from the trainer and :func:`restore` puts back, key
for key. Format 2 holds ``psnr_log``/``ssim_log`` as (epochs, sets) and the run's ``scale``. Format 1
(the first release) held them as (epochs, sets, scales) with a list ``scales`` of one scale; it is
read by dropping that axis.
"""

from pathlib import Path

import torch

from core.errors import UserError
from core.io_utils import atomic_save, load_state, save_weights
from core.rng import get_rng_state, set_rng_state
from training import run_flags
from training.run_folder import TRAINING_STATE, RunFolder

STATE_FORMAT = 2
_READABLE_FORMATS = (1, STATE_FORMAT)


def collect(trainer) -> dict:
    """The training state after the trainer's last finished epoch, without the network and the format."""
    return {
        'epoch': trainer.epoch,
        'optimizer': trainer.optimizer.state_dict(),
        'scheduler': trainer.scheduler.state_dict(),
        **trainer.step.state_dict(),  # scaler, skipped, running_loss
        'loss_names': list(trainer.loss.names),
        'loss_log': trainer.loss.log.clone(),
        'test_sets': list(trainer.test_sets),
        'scale': trainer.scale,
        'psnr_log': trainer.psnr_log.clone(),
        'ssim_log': trainer.ssim_log.clone(),
        'rng': get_rng_state(trainer.generator),
        'lcoa_stats': trainer.lcoa_monitor.state_dict(),
    }


def restore(trainer, saved: dict, path: Path) -> None:
    """Put a training state back into the trainer, key for key as :func:`collect` took it.

    Args:
        trainer: built with the options of the resumed run (same optimizer, loss terms, test sets).
        saved: the state, from :func:`read_training_state`.
        path: its file, named in errors.

    Raises:
        UserError: naming ``--optimizer`` when the saved optimizer state is another optimizer's.
    """
    try:
        trainer.optimizer.load_state_dict(saved['optimizer'])
    except (ValueError, KeyError) as e:
        raise UserError(f'--optimizer {trainer.args.optimizer}: does not fit the state in {path} ({e})') from None
    trainer.scheduler.load_state_dict(saved['scheduler'])
    trainer.step.load_state_dict(saved)
    trainer.epoch = saved['epoch']
    trainer.loss.log = saved['loss_log']
    trainer.psnr_log = saved['psnr_log']
    trainer.ssim_log = saved['ssim_log']
    set_rng_state(saved['rng'], trainer.generator)
    trainer.lcoa_monitor.load_state_dict(saved.get('lcoa_stats'), trainer.epoch)  # absent from older states


def check_finite_state(state: dict, what: str) -> None:
    """Raise RuntimeError if any floating tensor in ``state`` holds NaN or inf (never save those)."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise RuntimeError(f'refusing to save {what}: {key} holds NaN or inf values')


def save_epoch(ckp: RunFolder, net_state: dict, state: dict, *, epoch: int, is_best: bool,
               save_models: bool) -> None:
    """Write the network and training state of finished epoch ``epoch`` (call on rank 0).

    Args:
        ckp: the run folder.
        net_state: the bare network's state_dict; RuntimeError before anything is written if it
            holds NaN or inf.
        state: the trainer's training state (without the network and the format number).
        epoch: the finished epoch (1-based).
        is_best: also write ``model_best.pt``.
        save_models: also keep this epoch's ``model_<epoch>.pt`` and ``state/training_state_<epoch>.pt``.
    """
    check_finite_state(net_state, 'the model')
    state = {'format': STATE_FORMAT, **state}
    model_dir = ckp.get_path('model')
    also_safetensors = getattr(getattr(ckp, 'args', None), 'save_safetensors', False)
    for name in ['model_latest'] + ['model_best'] * is_best + [f'model_{epoch}'] * save_models:
        atomic_save(net_state, model_dir / f'{name}.pt')
        if also_safetensors:
            save_weights(net_state, model_dir / f'{name}.safetensors')
        else:  # one of an earlier start of the run would now hold older weights than the .pt beside it
            (model_dir / f'{name}.safetensors').unlink(missing_ok=True)
    if save_models:
        ckp.get_path('state').mkdir(exist_ok=True)
        atomic_save(state, ckp.get_path('state', f'training_state_{epoch}.pt'))
    # Written last and holding the network too: the one file that defines the resume point.
    atomic_save({**state, 'model': net_state}, ckp.get_path(TRAINING_STATE))


def resume_paths(ckp: RunFolder, resume: int) -> tuple[Path, Path]:
    """The network and training-state files of ``--resume`` (-1: the latest epoch; N: epoch N) in the run."""
    run = ckp.run_dir
    if resume == -1:
        return run_flags.run_weights(run, resume), run / TRAINING_STATE
    return run_flags.run_weights(run, resume), run / 'state' / f'training_state_{resume}.pt'


def read_training_state(path: Path) -> dict:
    """A training state of format 2 (format 1 converted); UserError naming ``path`` if it is none."""
    state = load_state(path, what='training state')
    if not isinstance(state, dict) or state.get('format') not in _READABLE_FORMATS:
        raise UserError(f'{path}: not a training state of this program')
    if state['format'] == 1:
        state = _from_format_1(state, path)
    return state


def _from_format_1(state: dict, path: Path) -> dict:
    scales = state['scales']
    if len(scales) != 1:
        raise UserError(f'{path}: evaluated at scales {scales}; this program trains and resumes one scale')
    upgraded = {k: v for k, v in state.items() if k != 'scales'}
    upgraded.update(format=STATE_FORMAT, scale=scales[0], psnr_log=state['psnr_log'][:, :, 0],
                    ssim_log=state['ssim_log'][:, :, 0])
    return upgraded
