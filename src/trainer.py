"""Training loop, evaluation, checkpoints and exact resumption.

One epoch is one pass over ``loader_train`` (``--test_every`` batches), followed by an evaluation
on every ``--data_test`` set and a checkpoint. Every epoch starts by seeding torch, numpy, Python's
``random`` and the loader's generator from (``--seed``, epoch, rank), so an epoch computes the same
thing whether the run went straight through or was resumed from the previous epoch's checkpoint
(``--load <run> --resume -1``).

The parts, each in its own module: the optimisation step and its skip rules (:mod:`training.step`),
scoring a test set (:mod:`training.evaluation`), the log lines and tables (:mod:`training.tables`),
the checkpoint files and training-state format (:mod:`training.state`), loading a run back for
``--resume`` or ``--test_only`` (:mod:`training.resume`). ``model/model_best.pt`` is the best PSNR on
the first test set with ground truth.

What stops a run, each with one line (a :class:`errors.UserError`, see :mod:`training.failures`): a
diverged run (every batch skipped for ``min(100, batches per epoch)`` batches in a row), a write that
fails for want of space or permission (the last complete checkpoint stays intact). An evaluation that
fails after a training epoch is logged in one line and the epoch is saved without scores.
"""

import argparse
import contextlib

import torch
from torch import nn
from tqdm import tqdm

from core import distributed
from core.errors import UserError
from core.io_utils import write_error_cause
from core.rng import derive_seed, seed_everything
from core.timing import timer
from training import evaluation, failures, interrupts, resume, state, tables
from training.lcoa_monitor import LCoAMonitor
from training.optim import make_optimizer, make_scheduler
from training.run_folder import RunFolder
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
        ckp: ``run_folder.RunFolder`` of the run.
    """

    def __init__(self, args: argparse.Namespace, loader, my_model: nn.Module, my_loss: nn.Module | None,
                 ckp: RunFolder) -> None:
        self.args = args
        self.scale = args.scale[0]
        self.ckp = ckp
        self.loader_train = loader.loader_train
        self.loader_test = loader.loader_test
        self.generator = getattr(self.loader_train, 'generator', None)  # seeded every epoch, saved with the run
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
        if args.load and args.test_only:
            resume.load_for_test(self.model.get_model(), ckp, args)
        elif args.load and args.resume != 0:
            resume.resume_training(self)

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
                message = failures.diverged_message(e, self.args, epoch=epoch, saved_epoch=self.saved_epoch,
                                                    lr=self.optimizer.param_groups[0]['lr'])
                self.ckp.write_log(message)
                raise UserError(message) from None
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

    def _seed_epoch(self, epoch: int) -> None:
        # The batches depend on (seed, epoch) alone (see data/__init__.py); these seeds cover the
        # randomness of the model and the loss.
        seed_everything(derive_seed(self.args.seed, epoch, distributed.rank()), self.generator)
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

    def _write_errors(self) -> contextlib.AbstractContextManager:
        """A write that fails for want of space or permission stops the run with one line."""
        return failures.write_errors(self.args, self.ckp.dir, lambda: self.saved_epoch)

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
            # A failed write is no evaluation problem: it stops the run (see failures.write_errors).
            if args.test_only or write_error_cause(e) is not None:
                raise
            self.ckp.write_log(failures.evaluation_failed(e, self.epoch))
            psnr, ssim, n_scored = evaluation.unscored(len(self.test_sets))
        finally:
            self.ckp.end_background()
        if not args.test_only:
            self.psnr_log = torch.cat([self.psnr_log, psnr[None]])
            self.ssim_log = torch.cat([self.ssim_log, ssim[None]])
        for i, name in enumerate(self.test_sets):
            best = None if args.test_only else evaluation.best_epoch(self.psnr_log[:, i])
            self.ckp.write_log(tables.score_line(name, self.scale, psnr[i], ssim[i], n_scored[i], best=best))
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
            self.save(self.epoch, is_best=evaluation.is_best(self.psnr_log, self.epoch))
        self.ckp.write_log(f'Total: {timer_test.toc():.2f}s\n', refresh=True)

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
        """Mean PSNR and SSIM per test set (NaN without ground truth, or when no image could be scored) and
        the number of images with ground truth per set; writes each set's metrics CSV."""
        args = self.args
        psnr, ssim, n_scored = evaluation.unscored(len(self.test_sets))
        for i, loader in enumerate(self.loader_test):
            name = loader.dataset.name

            def on_image(filename, lr, hr, sr, name=name):
                self.tb.add_result(self.epoch, name, filename, sr, hr)
                if args.save_results:
                    images = {'SR': sr, 'LR': lr, 'HR': hr} if args.save_gt else {'SR': sr}
                    self.ckp.save_results(name, filename, images, self.scale)

            rows = evaluation.score_set(self.model, loader, scale=self.scale, rgb_range=args.rgb_range,
                                        device=self.device, compare_bicubic=args.compare_bicubic, seed=args.seed,
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

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def save(self, epoch: int, is_best: bool) -> None:
        """Write the checkpoints of finished epoch ``epoch``, then the logs and plots (rank 0)."""
        if not self.ckp.is_main:
            return
        state.save_epoch(self.ckp, self.model.get_model().state_dict(), state.collect(self), epoch=epoch,
                         is_best=is_best, save_models=self.args.save_models)
        self.saved_epoch = epoch
        self.ckp.write_csv('loss_log.csv', ['epoch'] + self.loss.names,
                           [[e + 1] + row for e, row in enumerate(self.loss.log.tolist())])
        self.loss.plot_loss(self.ckp)
        self.ckp.write_psnr_log(self.psnr_log, self.ssim_log, self.test_sets, self.scale)
        self.lcoa_monitor.save(self.ckp)  # lcoa_stats.csv and lcoa_stats.png
        self.ckp.write_log(f'Saved epoch {epoch} to {self.ckp.dir}' + (' (best)' if is_best else ''))
