"""Training loop, evaluation, checkpoints and exact resumption.

One epoch is one pass over ``loader_train`` (``--test_every`` batches), followed by an evaluation
on every ``--data_test`` set and a checkpoint. Every epoch starts by seeding torch, numpy, Python's
``random`` and the loader's generator from (``--seed``, epoch, rank), so an epoch computes the same
thing whether the run went straight through or was resumed from the previous epoch's checkpoint
(``--load <run> --resume -1``).

The parts, each in its own module: the optimisation step and its skip rules (:mod:`training.step`),
scoring a test set (:mod:`training.evaluation`), the log tables (:mod:`training.tables`), and the
checkpoint files and training-state format (:mod:`training.state`). ``model/model_best.pt`` is the
best PSNR on the first test set with ground truth.
"""

import argparse
import math

import torch
from torch import nn
from tqdm import tqdm

import distributed
from errors import UserError
from model import checkpoint_io
from optim import make_optimizer, make_scheduler
from rng import derive_seed, get_rng_state, seed_everything, set_rng_state
from run_folder import checkpoint
from timing import timer
from training import evaluation, state, tables
from training.step import TrainStep


class Trainer:
    """EDSR-style trainer: ``while not t.terminate(): t.train(); t.test()``.

    Positional arguments, as main.py and EDSR pass them.

    Args:
        args: parsed options (``option.parse_args``).
        loader: ``data.Data``: ``loader_train`` (None with --test_only) and ``loader_test``.
        my_model: ``model.Model`` wrapper; ``get_model()`` gives the bare network (also under DDP).
        my_loss: ``loss.Loss``; None with --test_only.
        ckp: ``run_folder.checkpoint`` of the run.
    """

    def __init__(self, args: argparse.Namespace, loader, my_model: nn.Module, my_loss: nn.Module | None,
                 ckp: checkpoint) -> None:
        self.args = args
        self.scale = args.scale[0]
        self.ckp = ckp
        self.loader_train = loader.loader_train
        self.loader_test = loader.loader_test
        self.model = my_model
        self.loss = my_loss
        self.device = torch.device(args.device)
        self.model.to(self.device)
        self.test_sets = [d.dataset.name for d in self.loader_test]
        # Mean PSNR and SSIM of every finished epoch (rows) on every test set (columns).
        self.psnr_log = torch.zeros((0, len(self.test_sets)), dtype=torch.float64)
        self.ssim_log = self.psnr_log.clone()
        self.epoch = 0  # finished epochs

        if not args.test_only:
            if my_loss is None or self.loader_train is None:
                raise ValueError('training needs a loss and a training loader')
            self.loss.to(self.device)
            self.optimizer = make_optimizer(args, self.model.parameters())
            self.scheduler = make_scheduler(args, self.optimizer)
            self.step = TrainStep(self.model, self.loss, self.optimizer, precision=args.precision,
                                  device=self.device, skip_threshold=args.skip_threshold, gclip=args.gclip,
                                  log=ckp.write_log)
        if args.load and args.resume != 0:
            self._resume()

    def terminate(self) -> bool:
        if self.args.test_only:
            self.test()
            return True
        return self.epoch >= self.args.epochs

    # ------------------------------------------------------------------------------------------
    # training

    def prepare(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def train(self) -> None:
        epoch = self.epoch + 1
        self._seed_epoch(epoch)
        self.step.skipped_epoch = 0
        lr_now = self.optimizer.param_groups[0]['lr']
        self.ckp.write_log(f'[Epoch {epoch}]\tLearning rate: {lr_now:.2e}')
        self.loss.start_log()
        self.model.train()

        n_batches = len(self.loader_train)
        timer_epoch, timer_data, timer_model = timer(), timer(), timer()
        bar = tqdm(self.loader_train, total=n_batches, ncols=80, leave=False, desc=f'epoch {epoch}',
                   disable=None if self.ckp.is_main else True)
        for batch, (lr, hr, _) in enumerate(bar):
            lr, hr = self.prepare(lr, hr)
            timer_data.hold()
            timer_model.tic()
            self.step(lr, hr, epoch, batch)
            timer_model.hold()
            if (batch + 1) % self.args.print_every == 0:
                self.ckp.write_log(
                    f'[{(batch + 1) * self.args.batch_size}/{n_batches * self.args.batch_size}]\t'
                    f'{self.loss.display_loss()}\t{timer_model.release():.1f}+{timer_data.release():.1f}s')
            timer_data.tic()
        bar.close()

        self.loss.all_reduce(self.device)  # the logged epoch loss is the mean over all processes
        self.loss.end_log()
        self.scheduler.step()
        self.epoch = epoch
        skipped = self.step.skipped_epoch
        skipped = f', {skipped} of {n_batches} batches skipped' if skipped else ''
        self.ckp.write_log(f'[Epoch {epoch}] mean {self.loss.display_loss()} in {timer_epoch.toc():.1f}s{skipped}')

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.loader_train, 'generator', None) if self.loader_train is not None else None

    def _seed_epoch(self, epoch: int) -> None:
        # The batches depend on (seed, epoch) alone (see data/__init__.py); these seeds cover the
        # randomness of the model and the loss.
        seed_everything(derive_seed(self.args.seed, epoch, distributed.rank()), self._loader_generator())
        sampler = getattr(self.loader_train, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def test(self) -> None:
        """Evaluate on every test set (rank 0; the others wait), log, and checkpoint."""
        if self.ckp.is_main:
            with torch.no_grad():
                self._test_main()
        distributed.barrier()

    def _test_main(self) -> None:
        args = self.args
        self.ckp.write_log('\nEvaluation:')
        self.model.eval()
        timer_test = timer()
        if args.save_results:
            self.ckp.begin_background()
        try:
            psnr, ssim = self._evaluate()
        finally:
            self.ckp.end_background()
        if not args.test_only:
            self.psnr_log = torch.cat([self.psnr_log, psnr[None]])
            self.ssim_log = torch.cat([self.ssim_log, ssim[None]])
        for i, name in enumerate(self.test_sets):
            self.ckp.write_log(self._score_line(i, name, psnr[i], ssim[i]))
        self.ckp.write_log(f'Forward: {timer_test.toc():.2f}s')
        if args.test_only:
            self.ckp.write_log(tables.results_table(self.test_sets, self.scale, psnr.tolist(), ssim.tolist()))
        else:
            self.save(self.epoch, is_best=self._is_best())
        self.ckp.write_log(f'Total: {timer_test.toc():.2f}s\n', refresh=True)

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean PSNR and SSIM per test set (NaN without ground truth); writes each set's metrics CSV."""
        args = self.args
        psnr = torch.full((len(self.test_sets),), math.nan, dtype=torch.float64)
        ssim = psnr.clone()
        for i, loader in enumerate(self.loader_test):
            name = loader.dataset.name

            def save_images(filename, lr, hr, sr, name=name):
                images = {'SR': sr, 'LR': lr, 'HR': hr} if args.save_gt else {'SR': sr}
                self.ckp.save_results(name, filename, images, self.scale)

            rows = evaluation.score_set(self.model, loader, scale=self.scale, rgb_range=args.rgb_range,
                                        device=self.device, compare_bicubic=args.compare_bicubic,
                                        on_image=save_images if args.save_results else None)
            if not rows:
                continue
            psnr[i], ssim[i] = evaluation.set_means(rows)
            header = evaluation.HEADER + evaluation.BICUBIC_HEADER * args.compare_bicubic
            self.ckp.write_csv(f'metrics_{name}_x{self.scale}.csv', header, rows)
            if args.compare_bicubic and (args.test_only or self.epoch >= args.epochs):
                self.ckp.write_log(tables.comparison_table(name, self.scale, args.model, rows))
        return psnr, ssim

    def _score_line(self, i: int, name: str, psnr: torch.Tensor, ssim: torch.Tensor) -> str:
        if math.isnan(psnr):
            return f'[{name} x{self.scale}]\tno ground truth: SR images only'
        line = f'[{name} x{self.scale}]\tPSNR: {psnr:.3f} SSIM: {ssim:.4f}'
        if not self.args.test_only:
            best, best_epoch = evaluation.best_epoch(self.psnr_log[:, i])
            line += f' (Best: {best:.3f} @epoch {best_epoch})'
        return line

    def _is_best(self) -> bool:
        """Whether the last epoch is the best on the first test set with ground truth."""
        for i in range(len(self.test_sets)):
            if not torch.isnan(self.psnr_log[:, i]).all():
                return evaluation.best_epoch(self.psnr_log[:, i])[1] == self.epoch
        return False

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def save(self, epoch: int, is_best: bool) -> None:
        """Write the checkpoints of finished epoch ``epoch``, then the logs and plots (rank 0)."""
        if not self.ckp.is_main:
            return
        state.save_epoch(self.ckp, self.model.get_model().state_dict(), self._training_state(), epoch=epoch,
                         is_best=is_best, save_models=self.args.save_models)
        self.ckp.write_csv('loss_log.csv', ['epoch'] + self.loss.names,
                           [[e + 1] + row for e, row in enumerate(self.loss.log.tolist())])
        self.loss.plot_loss(self.ckp)
        self.ckp.write_psnr_log(self.psnr_log, self.ssim_log, self.test_sets, self.scale)
        self.ckp.write_log(f'Saved epoch {epoch} to {self.ckp.dir}' + (' (best)' if is_best else ''))

    def _training_state(self) -> dict:
        """What :meth:`_restore` reads back (see :mod:`training.state` for the files and the format)."""
        return {
            'epoch': self.epoch,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            **self.step.state_dict(),  # scaler, skipped, running_loss
            'loss_names': list(self.loss.names),
            'loss_log': self.loss.log.clone(),
            'test_sets': list(self.test_sets),
            'scale': self.scale,
            'psnr_log': self.psnr_log.clone(),
            'ssim_log': self.ssim_log.clone(),
            'rng': get_rng_state(self._loader_generator()),
        }

    def _resume(self) -> None:
        model_path, state_path = state.resume_paths(self.ckp, self.args.resume)
        if self.args.test_only:
            self._load_network(checkpoint_io.read_state_dict(model_path, what='model'), model_path)
            self.ckp.write_log(f'Loaded {model_path}')
            return
        saved = state.read_training_state(state_path)
        if self.args.resume == -1:
            self._load_network(saved['model'], state_path)
        else:
            self._load_network(checkpoint_io.read_state_dict(model_path, what='model'), model_path)
        self._check_same_run(saved)
        self._restore(saved, state_path)
        self._log_resumed_schedule(state_path)

    def _load_network(self, net_state: dict, path) -> None:
        # A resumed run continues the same network: no upsampler swap, and mismatches name their keys.
        checkpoint_io.load_into(self.model.get_model(), net_state, source=f'--load {path}',
                                log=self.ckp.write_log, allow_new_upsampler=False)

    def _check_same_run(self, saved: dict) -> None:
        args, run = self.args, self.ckp.dir
        if saved['loss_names'] != self.loss.names:
            raise UserError(f'--loss {args.loss!r}: the run in {run} was trained with terms '
                            f'{"+".join(saved["loss_names"])}; resume with the same --loss')
        if saved['test_sets'] != self.test_sets or saved['scale'] != self.scale:
            raise UserError(f'--data_test/--scale: the run in {run} was evaluated on '
                            f'{"+".join(saved["test_sets"])} x{saved["scale"]}; resume with the same sets and scale')

    def _restore(self, saved: dict, path) -> None:
        try:
            self.optimizer.load_state_dict(saved['optimizer'])
        except (ValueError, KeyError) as e:
            raise UserError(f'--optimizer {self.args.optimizer}: does not fit the state in {path} ({e})') from None
        self.scheduler.load_state_dict(saved['scheduler'])
        self.step.load_state_dict(saved)
        self.epoch = saved['epoch']
        self.loss.log = saved['loss_log']
        self.psnr_log = saved['psnr_log']
        self.ssim_log = saved['ssim_log']
        set_rng_state(saved['rng'], self._loader_generator())

    def _log_resumed_schedule(self, path) -> None:
        args, sched = self.args, self.scheduler
        lr_now = self.optimizer.param_groups[0]['lr']
        milestones = sorted(sched.milestones)
        self.ckp.write_log(f'Resumed {path} after epoch {self.epoch}: learning rate in use {lr_now:.2e} '
                           f'(milestones {milestones}, gamma {sched.gamma:g})')
        base_lr = sched.base_lrs[0]
        changed = (not math.isclose(base_lr, args.lr) or milestones != list(args.decay)
                   or not math.isclose(sched.gamma, args.gamma))
        if changed:
            self.ckp.write_log(f'Note: the resumed schedule (lr {base_lr:g}, decay {milestones}, '
                               f'gamma {sched.gamma:g}) is kept; --lr/--decay/--gamma given now are not used')
        if self.epoch >= args.epochs:
            self.ckp.write_log(f'The run has finished {self.epoch} epochs already (--epochs {args.epochs})')
