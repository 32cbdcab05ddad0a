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

What stops a run, each with one line (a :class:`errors.UserError`): a diverged run (every batch
skipped for ``min(100, batches per epoch)`` batches in a row), a write that fails for want of space
or permission (the last complete checkpoint stays intact). An evaluation that fails after a
training epoch is logged in one line and the epoch is saved without scores.
"""

import argparse
import contextlib
import math

import torch
from torch import nn
from tqdm import tqdm

from core import distributed
from core.errors import UserError
from core.io_utils import write_error_cause
from core.rng import derive_seed, get_rng_state, seed_everything, set_rng_state
from core.timing import timer
from model import checkpoint_io
from training import evaluation, interrupts, state, tables
from training.lcoa_monitor import LCoAMonitor
from training.optim import make_optimizer, make_scheduler
from training.run_folder import checkpoint
from training.step import MAX_CONSECUTIVE_SKIPS, Diverged, TrainStep
from training.tensorboard_log import TensorBoardLog


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
        self.saved_epoch = 0  # the epoch of the run's training_state.pt (what --resume -1 continues)
        # LCoA statistics per epoch (log.txt, lcoa_stats.csv/png; nothing for models without LCoA) and
        # --tensorboard events.
        self.lcoa_monitor = LCoAMonitor(self.model.get_model())
        self.tb = TensorBoardLog(ckp.dir, args.tensorboard and ckp.is_main, args.rgb_range)

        if not args.test_only:
            if my_loss is None or self.loader_train is None:
                raise ValueError('training needs a loss and a training loader')
            self.loss.to(self.device)
            self.optimizer = make_optimizer(args, self.model.parameters())
            self.scheduler = make_scheduler(args, self.optimizer)
            self.step = TrainStep(self.model, self.loss, self.optimizer, precision=args.precision,
                                  device=self.device, skip_threshold=args.skip_threshold, gclip=args.gclip,
                                  log=ckp.write_log,
                                  max_consecutive_skips=min(MAX_CONSECUTIVE_SKIPS, len(self.loader_train)))
        if args.load and (args.resume != 0 or args.test_only):
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
        with self._write_errors():
            self._train()

    def _train(self) -> None:
        epoch = self.epoch + 1
        self._seed_epoch(epoch)
        self.step.skipped_epoch = 0
        lr_now = self.optimizer.param_groups[0]['lr']
        self.ckp.write_log(f'[Epoch {epoch}]\tLearning rate: {lr_now:.2e}')
        self.loss.start_log()
        self.model.train()
        self.lcoa_monitor.start_epoch()

        n_batches = len(self.loader_train)
        timer_epoch, timer_data, timer_model = timer(), timer(), timer()
        bar = tqdm(self.loader_train, total=n_batches, ncols=80, leave=False, desc=f'epoch {epoch}',
                   disable=None if self.ckp.is_main else True)
        for batch, (lr, hr, _) in enumerate(interrupts.batches(bar)):
            lr, hr = self.prepare(lr, hr)
            timer_data.hold()
            timer_model.tic()
            try:
                self.step(lr, hr, epoch, batch)
            except Diverged as e:
                self._stop_diverged(e, epoch)
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
        stats_line = self.lcoa_monitor.end_epoch(epoch)
        if stats_line:
            self.ckp.write_log(stats_line)
        self.tb.add_losses(epoch, self.loss.names, self.loss.log[-1].tolist(), lr_now)

    def _stop_diverged(self, e: Diverged, epoch: int) -> None:
        args = self.args
        saved = (f'epoch {self.saved_epoch} is the last one saved' if self.saved_epoch
                 else 'nothing was saved')
        message = (f'training stopped in epoch {epoch}: it diverged, {e}; {saved}. Start over with --reset and '
                   f'try a lower --lr (now {self.optimizer.param_groups[0]["lr"]:g}), gradient clipping '
                   f'(--gclip, e.g. 1{"" if not args.gclip else f"; now {args.gclip:g}"}), or check the training '
                   'data')
        self.ckp.write_log(message)
        raise UserError(message) from None

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
            with torch.no_grad(), self._write_errors():
                self._test_main()
        distributed.barrier()

    @contextlib.contextmanager
    def _write_errors(self):
        """A write that fails for want of space or permission becomes one line naming the folder and the
        cause; the checkpoint files are written atomically, so the last complete one is intact."""
        try:
            yield
        except OSError as e:
            cause = write_error_cause(e)
            if cause is None:
                raise
            where = f'{e.filename}' if e.filename else str(self.ckp.dir)
            if self.args.test_only:
                after = 'make room or choose another --save_dir, then evaluate again'
            elif self.saved_epoch:
                name = self.args.load or self.args.save
                after = (f'the checkpoint of epoch {self.saved_epoch} is intact: make room (or make the folder '
                         f'writable), then resume with --load {name} --resume -1')
            else:
                after = 'nothing was saved yet: make room (or make the folder writable), then start over with --reset'
            raise UserError(f'cannot write {where}: {cause}; {after}') from None

    def _test_main(self) -> None:
        args = self.args
        self.ckp.write_log('\nEvaluation:')
        self.model.eval()
        timer_test = timer()
        if args.save_results:
            self.ckp.begin_background()
        try:
            with self.lcoa_monitor.probe():  # the self weight, from the first validation image's pattern
                psnr, ssim, n_scored = self._evaluate()
        except Exception as e:
            # A trained epoch is worth more than its scores: log the failure and save the epoch unscored.
            # A failed write is no evaluation problem: it stops the run (see _write_errors).
            if args.test_only or write_error_cause(e) is not None:
                raise
            self.ckp.write_log(f'Evaluation after epoch {self.epoch} failed, the epoch is saved without scores: '
                               f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}')
            psnr = torch.full((len(self.test_sets),), math.nan, dtype=torch.float64)
            ssim, n_scored = psnr.clone(), [None] * len(self.test_sets)
        finally:
            self.ckp.end_background()
        if not args.test_only:
            self.psnr_log = torch.cat([self.psnr_log, psnr[None]])
            self.ssim_log = torch.cat([self.ssim_log, ssim[None]])
        for i, name in enumerate(self.test_sets):
            self.ckp.write_log(self._score_line(i, name, psnr[i], ssim[i], n_scored[i]))
        stats_line = self.lcoa_monitor.end_evaluation(record=not args.test_only)
        if stats_line:
            self.ckp.write_log(stats_line)
        self.tb.add_metrics(self.epoch, self.test_sets, self.scale, psnr, ssim)
        if not args.test_only and self.lcoa_monitor.log.shape[0]:
            self.tb.add_statistics(self.epoch, self.lcoa_monitor.names, self.lcoa_monitor.log[-1].tolist())
        self.ckp.write_log(f'Forward: {timer_test.toc():.2f}s')
        if args.test_only:
            self.ckp.write_log(tables.results_table(self.test_sets, self.scale, psnr.tolist(), ssim.tolist()))
        else:
            self.save(self.epoch, is_best=self._is_best())
        self.ckp.write_log(f'Total: {timer_test.toc():.2f}s\n', refresh=True)

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
        """Mean PSNR and SSIM per test set (NaN without ground truth, or when no image could be scored) and
        the number of images with ground truth per set; writes each set's metrics CSV."""
        args = self.args
        psnr = torch.full((len(self.test_sets),), math.nan, dtype=torch.float64)
        ssim = psnr.clone()
        n_scored: list[int | None] = [0] * len(self.test_sets)
        for i, loader in enumerate(self.loader_test):
            name = loader.dataset.name

            def on_image(filename, lr, hr, sr, name=name):
                self.tb.add_result(self.epoch, name, filename, sr, hr)
                if args.save_results:
                    images = {'SR': sr, 'LR': lr, 'HR': hr} if args.save_gt else {'SR': sr}
                    self.ckp.save_results(name, filename, images, self.scale)

            rows = evaluation.score_set(self.model, loader, scale=self.scale, rgb_range=args.rgb_range,
                                        device=self.device, compare_bicubic=args.compare_bicubic,
                                        on_image=on_image if args.save_results or self.tb.enabled else None)
            n_scored[i] = len(rows)
            if not rows:
                continue
            psnr[i], ssim[i] = evaluation.set_means(rows)
            header = evaluation.HEADER + evaluation.BICUBIC_HEADER * args.compare_bicubic
            self.ckp.write_csv(f'metrics_{name}_x{self.scale}.csv', header, rows)
            if args.compare_bicubic and (args.test_only or self.epoch >= args.epochs):
                self.ckp.write_log(tables.comparison_table(name, self.scale, args.model, rows))
        return psnr, ssim, n_scored

    def _score_line(self, i: int, name: str, psnr: torch.Tensor, ssim: torch.Tensor, n_rows: int | None) -> str:
        if n_rows is None:
            return f'[{name} x{self.scale}]\tnot scored (the evaluation failed)'
        if n_rows == 0:
            return f'[{name} x{self.scale}]\tno ground truth: SR images only'
        if math.isnan(psnr):
            return f'[{name} x{self.scale}]\tno image large enough to score'
        ssim_text = 'n/a (images smaller than its window)' if math.isnan(ssim) else f'{ssim:.4f}'
        line = f'[{name} x{self.scale}]\tPSNR: {psnr:.3f} SSIM: {ssim_text}'
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
        self.saved_epoch = epoch
        self.ckp.write_csv('loss_log.csv', ['epoch'] + self.loss.names,
                           [[e + 1] + row for e, row in enumerate(self.loss.log.tolist())])
        self.loss.plot_loss(self.ckp)
        self.ckp.write_psnr_log(self.psnr_log, self.ssim_log, self.test_sets, self.scale)
        self.lcoa_monitor.save(self.ckp)  # lcoa_stats.csv and lcoa_stats.png
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
            'lcoa_stats': self.lcoa_monitor.state_dict(),
        }

    def _resume(self) -> None:
        args = self.args
        if args.test_only:
            self._load_for_test()
            return
        model_path, state_path = state.resume_paths(self.ckp, args.resume)
        saved = state.read_training_state(state_path)
        if args.resume == -1:
            checkpoint_io.check_finite(saved['model'], f'training state {state_path}')
            self._load_network(saved['model'], state_path)
        else:
            self._load_network(checkpoint_io.read_state_dict(model_path, what='model'), model_path)
        self._check_same_run(saved)
        self._restore(saved, state_path)
        self.saved_epoch = self.epoch
        self._log_resumed_schedule(state_path)

    def _load_for_test(self) -> None:
        """--test_only --load <run>: its latest model (--resume N: epoch N's); the log says which file."""
        args = self.args
        model_path, _ = state.resume_paths(self.ckp, args.resume if args.resume > 0 else -1)
        if args.resume <= 0 and not model_path.exists():
            raise UserError(f'--load {args.load} --test_only: {self.ckp.run_dir} has no finished epoch to evaluate '
                            f'({model_path} does not exist)')
        self._load_network(checkpoint_io.read_state_dict(model_path, what='model'), model_path)
        which = f'epoch {args.resume}' if args.resume > 0 else 'the latest epoch'
        self.ckp.write_log(f'--test_only: evaluating {model_path} ({which} of run {args.load}; --resume N evaluates '
                           f'epoch N with --save_models, --pre_train {model_path.parent / "model_best.pt"} the best)')

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
        self.lcoa_monitor.load_state_dict(saved.get('lcoa_stats'), self.epoch)  # absent from older states

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
