"""Training loop, evaluation, checkpoints and exact resumption.

One epoch is one pass over ``loader_train`` (``--test_every`` batches), followed by an evaluation
on every ``--data_test`` set and scale and a checkpoint. Every epoch starts by seeding torch, numpy,
Python's ``random`` and the loader's generator from (``--seed``, epoch, rank), so an epoch computes
the same thing whether the run went straight through or was resumed from the previous epoch's
checkpoint (``--load <run> --resume -1``).

Files (rank 0 only, each written atomically): ``model/model_latest.pt`` (bare network state_dict),
``model/model_best.pt`` (best PSNR on the first test set at the first scale),
``model/model_<epoch>.pt`` and ``state/training_state_<epoch>.pt`` with --save_models, and
``training_state.pt``: the network, optimizer, scheduler, grad scaler, logs, skip counter and RNG
states of the last finished epoch, all loadable with ``weights_only=True``.
"""

import argparse
import contextlib
import math

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_, get_total_norm
from tqdm import tqdm

import distributed
import utility
from data.imresize import bicubic_upscale
from errors import UserError
from lcoa_monitor import LCoAMonitor
from model import checkpoint_io
from tensorboard_log import TensorBoardLog

# Weight of the newest accepted batch in the running loss that --skip_threshold compares against.
RUNNING_LOSS_MOMENTUM = 0.1
STATE_FORMAT = 1


class Trainer:
    """EDSR-style trainer: ``while not t.terminate(): t.train(); t.test()``.

    Positional arguments, as main.py and EDSR pass them.

    Args:
        args: parsed options (``option.parse_args``).
        loader: ``data.Data``: ``loader_train`` (None with --test_only) and ``loader_test``.
        my_model: ``model.Model`` wrapper; ``get_model()`` gives the bare network (also under DDP).
        my_loss: ``loss.Loss``; None with --test_only.
        ckp: ``utility.checkpoint`` of the run.
    """

    def __init__(self, args: argparse.Namespace, loader, my_model: nn.Module, my_loss: nn.Module | None,
                 ckp: utility.checkpoint) -> None:
        self.args = args
        self.scale = list(args.scale)
        self.ckp = ckp
        self.loader_train = loader.loader_train
        self.loader_test = loader.loader_test
        self.model = my_model
        self.loss = my_loss
        self.device = torch.device(args.device)
        self.model.to(self.device)
        self.test_sets = [d.dataset.name for d in self.loader_test]
        shape = (0, len(self.test_sets), len(self.scale))
        self.psnr_log = torch.zeros(shape, dtype=torch.float64)
        self.ssim_log = torch.zeros(shape, dtype=torch.float64)
        self.epoch = 0  # finished epochs
        self.skipped = 0  # batches skipped over the whole run
        self.running_loss: float | None = None
        self.amp_dtype = {'single': None, 'half': torch.float16, 'bf16': torch.bfloat16}[args.precision]
        # Issue 16: LCoA statistics per epoch (log.txt, lcoa_stats.csv/png) and --tensorboard events.
        self.lcoa_monitor = LCoAMonitor(self.model.get_model())
        self.tb = TensorBoardLog(ckp.dir, args.tensorboard and ckp.is_main, args.rgb_range)

        if not args.test_only:
            if my_loss is None or self.loader_train is None:
                raise ValueError('training needs a loss and a training loader')
            self.loss.to(self.device)
            self.optimizer = utility.make_optimizer(args, self.model.parameters())
            self.scheduler = utility.make_scheduler(args, self.optimizer)
            # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range.
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if args.load and args.resume != 0:
            self._resume()

    # ------------------------------------------------------------------------------------------
    # training

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.loader_train, 'generator', None) if self.loader_train is not None else None

    def _seed_epoch(self, epoch: int) -> None:
        # The batches depend on (seed, epoch) alone (see data/__init__.py); these seeds cover the
        # randomness of the model and the loss.
        seed = utility.derive_seed(self.args.seed, epoch, distributed.rank())
        utility.seed_everything(seed, self._loader_generator())
        sampler = getattr(self.loader_train, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is set on any process (all processes must skip the same batches)."""
        if not distributed.is_initialized():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _skip(self, epoch: int, batch: int, reason: str, buffers: list, saved: list) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        # The forward pass may have moved buffers (the k-means centroids' moving average) with the bad batch.
        with torch.no_grad():
            for buffer, old in zip(buffers, saved, strict=True):
                buffer.copy_(old)
        self.skipped += 1
        self._skipped_epoch += 1
        self.ckp.write_log(f'[Epoch {epoch}, batch {batch + 1}] skipped: {reason} ({self.skipped} skipped in this run)')

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group['params']]

    def _train_step(self, lr: torch.Tensor, hr: torch.Tensor, epoch: int, batch: int) -> bool:
        """One optimisation step; False if the batch was skipped (no step, gradients cleared, buffers kept)."""
        self.optimizer.zero_grad(set_to_none=True)
        buffers = list(self.model.get_model().buffers())
        saved = [b.detach().clone() for b in buffers]
        with self._autocast():
            sr = self.model(lr, 0)
        loss = self.loss(sr, hr)
        value = loss.item()
        reason = None
        if not math.isfinite(value):
            reason = f'loss is {value}'
        elif self.running_loss is not None and value > self.args.skip_threshold * self.running_loss:
            reason = (f'loss {value:.4g} exceeds --skip_threshold {self.args.skip_threshold:g} '
                      f'x running loss {self.running_loss:.4g}')
        if self._any_rank(reason is not None):
            self._skip(epoch, batch, reason or 'skipped by another process', buffers, saved)
            return False

        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = self._params()
        if self.args.gclip > 0:
            norm = clip_grad_norm_(params, self.args.gclip)
        else:
            norm = get_total_norm([p.grad for p in params if p.grad is not None])
        if not torch.isfinite(norm):
            if self.scaler.is_enabled():
                self.scaler.update()  # lowers the loss scale for the next batch
            self._skip(epoch, batch, f'gradient norm is {norm.item()}', buffers, saved)
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss.accept()
        if self.running_loss is None:
            self.running_loss = value
        else:
            self.running_loss += RUNNING_LOSS_MOMENTUM * (value - self.running_loss)
        return True

    def train(self) -> None:
        epoch = self.epoch + 1
        self._seed_epoch(epoch)
        self._skipped_epoch = 0
        lr_now = self.optimizer.param_groups[0]['lr']
        self.ckp.write_log(f'[Epoch {epoch}]\tLearning rate: {lr_now:.2e}')
        self.loss.start_log()
        self.model.train()
        self.lcoa_monitor.start_epoch()  # issue 16

        n_batches = len(self.loader_train)
        timer_epoch, timer_data, timer_model = utility.timer(), utility.timer(), utility.timer()
        bar = tqdm(self.loader_train, total=n_batches, ncols=80, leave=False, desc=f'epoch {epoch}',
                   disable=None if self.ckp.is_main else True)
        for batch, (lr, hr, _) in enumerate(bar):
            lr, hr = self.prepare(lr, hr)
            timer_data.hold()
            timer_model.tic()
            self._train_step(lr, hr, epoch, batch)
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
        skipped = f', {self._skipped_epoch} of {n_batches} batches skipped' if self._skipped_epoch else ''
        self.ckp.write_log(f'[Epoch {epoch}] mean {self.loss.display_loss()} in {timer_epoch.toc():.1f}s{skipped}')
        # Issue 16: LCoA statistics of the epoch; loss terms and learning rate to TensorBoard.
        stats_line = self.lcoa_monitor.end_epoch(epoch)
        if stats_line:
            self.ckp.write_log(stats_line)
        self.tb.add_losses(epoch, self.loss.names, self.loss.log[-1].tolist(), lr_now)

    # ------------------------------------------------------------------------------------------
    # evaluation

    def _best(self, idx_data: int, idx_scale: int) -> tuple[float, int]:
        """Best PSNR so far and its epoch (1-based) for one set and scale."""
        column = torch.nan_to_num(self.psnr_log[:, idx_data, idx_scale], nan=-math.inf)
        idx = int(column.argmax())
        return float(column[idx]), idx + 1

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean PSNR and SSIM per (set, scale); NaN for sets without ground truth (Demo)."""
        args = self.args
        psnr = torch.full((len(self.test_sets), len(self.scale)), math.nan, dtype=torch.float64)
        ssim = psnr.clone()
        for idx_data, d in enumerate(self.loader_test):
            name, benchmark = d.dataset.name, d.dataset.benchmark
            for idx_scale, scale in enumerate(self.scale):
                d.dataset.set_scale(idx_scale)
                rows = []
                for lr, hr, filename in tqdm(d, ncols=80, leave=False, desc=f'{name} x{scale}', disable=None):
                    filename = filename[0] if isinstance(filename, (list, tuple)) else filename
                    lr, hr = self.prepare(lr, hr)
                    sr = utility.quantize(self.model(lr, idx_scale).float(), args.rgb_range)
                    if hr.numel() > 0:
                        row = [filename, utility.calc_psnr(sr, hr, scale, args.rgb_range, benchmark),
                               utility.calc_ssim(sr, hr, scale, args.rgb_range, benchmark)]
                        if args.compare_bicubic:
                            bicubic = utility.quantize(bicubic_upscale(lr.float(), scale), args.rgb_range)
                            row += [utility.calc_psnr(bicubic, hr, scale, args.rgb_range, benchmark),
                                    utility.calc_ssim(bicubic, hr, scale, args.rgb_range, benchmark)]
                        rows.append(row)
                        self.tb.add_result(self.epoch, name, filename, sr, hr)  # issue 16
                    if args.save_results:
                        images = {'SR': sr}
                        if args.save_gt:
                            images.update(LR=lr, HR=hr)
                        self.ckp.save_results(name, filename, images, scale)
                if rows:
                    psnr[idx_data, idx_scale] = sum(r[1] for r in rows) / len(rows)
                    ssim[idx_data, idx_scale] = sum(r[2] for r in rows) / len(rows)
                    header = ['image', 'psnr', 'ssim'] + ['bicubic_psnr', 'bicubic_ssim'] * args.compare_bicubic
                    self.ckp.write_csv(f'metrics_{name}_x{scale}.csv', header, rows)
                    if args.compare_bicubic and (args.test_only or self.epoch >= args.epochs):
                        self.ckp.write_log(self.comparison_table(name, scale, rows))
        return psnr, ssim

    def comparison_table(self, name: str, scale: int, rows: list) -> str:
        """Per-image PSNR/SSIM of bicubic upscaling and of the model, with their averages."""
        width = max(len('average'), *(len(r[0]) for r in rows))
        head = f'{"image":<{width}} | {"bicubic":^16} | {self.args.model:^16} | gain (dB)'
        lines = [f'\n{name} x{scale}: PSNR (dB) / SSIM', head, '-' * len(head)]
        mean = [sum(r[k] for r in rows) / len(rows) for k in range(1, 5)]
        for label, (p, s, bp, bs) in [(r[0], r[1:5]) for r in rows] + [('average', mean)]:
            lines.append(f'{label:<{width}} | {bp:7.2f} / {bs:.4f} | {p:7.2f} / {s:.4f} | {p - bp:+.2f}')
        return '\n'.join(lines)

    def test(self) -> None:
        """Evaluate on every test set and scale (rank 0; the others wait), log, and checkpoint."""
        if self.ckp.is_main:
            with torch.no_grad():
                self._test_main()
        distributed.barrier()

    def _test_main(self) -> None:
        args = self.args
        self.ckp.write_log('\nEvaluation:')
        self.model.eval()
        timer_test = utility.timer()
        if args.save_results:
            self.ckp.begin_background()
        try:
            with self.lcoa_monitor.probe():  # issue 16: self weight on the first validation image
                psnr, ssim = self._evaluate()
        finally:
            self.ckp.end_background()
        if not args.test_only:
            self.psnr_log = torch.cat([self.psnr_log, psnr[None]])
            self.ssim_log = torch.cat([self.ssim_log, ssim[None]])
        for idx_data, name in enumerate(self.test_sets):
            for idx_scale, scale in enumerate(self.scale):
                if math.isnan(psnr[idx_data, idx_scale]):
                    self.ckp.write_log(f'[{name} x{scale}]\tno ground truth: SR images only')
                    continue
                line = f'[{name} x{scale}]\tPSNR: {psnr[idx_data, idx_scale]:.3f} SSIM: {ssim[idx_data, idx_scale]:.4f}'
                if not args.test_only:
                    best, best_epoch = self._best(idx_data, idx_scale)
                    line += f' (Best: {best:.3f} @epoch {best_epoch})'
                self.ckp.write_log(line)
        # Issue 16: the evaluation's LCoA statistics; metrics and statistics to TensorBoard.
        stats_line = self.lcoa_monitor.end_evaluation(record=not args.test_only)
        if stats_line:
            self.ckp.write_log(stats_line)
        self.tb.add_metrics(self.epoch, self.test_sets, self.scale, psnr, ssim)
        if not args.test_only and self.lcoa_monitor.log.shape[0]:
            self.tb.add_statistics(self.epoch, self.lcoa_monitor.names, self.lcoa_monitor.log[-1].tolist())
        self.ckp.write_log(f'Forward: {timer_test.toc():.2f}s')
        if args.test_only:
            self.ckp.write_log(self.results_table(psnr, ssim))
        else:
            self.save(self.epoch, is_best=self._is_best())
        self.ckp.write_log(f'Total: {timer_test.toc():.2f}s\n', refresh=True)

    def _is_best(self) -> bool:
        for idx_data in range(len(self.test_sets)):
            if not torch.isnan(self.psnr_log[:, idx_data, 0]).all():
                return self._best(idx_data, 0)[1] == self.epoch
        return False

    def results_table(self, psnr: torch.Tensor, ssim: torch.Tensor) -> str:
        """Paper-style table: one row per test set, one 'PSNR / SSIM' column per scale."""
        width = max([len('Dataset')] + [len(n) for n in self.test_sets])
        head = f'{"Dataset":<{width}}' + ''.join(f' | {"x" + str(s):^16}' for s in self.scale)
        lines = ['PSNR (dB) / SSIM', head, '-' * len(head)]
        for idx_data, name in enumerate(self.test_sets):
            cells = []
            for idx_scale in range(len(self.scale)):
                p, s = float(psnr[idx_data, idx_scale]), float(ssim[idx_data, idx_scale])
                cells.append('       -        ' if math.isnan(p) else f'{p:7.2f} / {s:.4f}')
            lines.append(f'{name:<{width}}' + ''.join(f' | {c}' for c in cells))
        return '\n'.join(lines)

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def _training_state(self) -> dict:
        return {
            'format': STATE_FORMAT,
            'epoch': self.epoch,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else None,
            'loss_names': list(self.loss.names),
            'loss_log': self.loss.log.clone(),
            'test_sets': list(self.test_sets),
            'scales': list(self.scale),
            'psnr_log': self.psnr_log.clone(),
            'ssim_log': self.ssim_log.clone(),
            'skipped': self.skipped,
            'running_loss': self.running_loss,
            'rng': utility.get_rng_state(self._loader_generator()),
            'lcoa_stats': self.lcoa_monitor.state_dict(),  # issue 16
        }

    def save(self, epoch: int, is_best: bool) -> None:
        """Write the checkpoints of finished epoch ``epoch``, then the logs and plots (rank 0)."""
        if not self.ckp.is_main:
            return
        net_state = self.model.get_model().state_dict()
        utility.check_finite_state(net_state, 'the model')
        model_dir = self.ckp.get_path('model')
        utility.atomic_save(net_state, model_dir / 'model_latest.pt')
        if is_best:
            utility.atomic_save(net_state, model_dir / 'model_best.pt')
        state = self._training_state()
        if self.args.save_models:
            utility.atomic_save(net_state, model_dir / f'model_{epoch}.pt')
            self.ckp.get_path('state').mkdir(exist_ok=True)
            utility.atomic_save(state, self.ckp.get_path('state', f'training_state_{epoch}.pt'))
        # Written last and holding the network too: the one file that defines the resume point.
        utility.atomic_save({**state, 'model': net_state}, self.ckp.get_path(utility.TRAINING_STATE))

        self.ckp.write_csv('loss_log.csv', ['epoch'] + self.loss.names,
                           [[e + 1] + row for e, row in enumerate(self.loss.log.tolist())])
        rows = []
        for e in range(self.psnr_log.shape[0]):
            for idx_data, name in enumerate(self.test_sets):
                for idx_scale, scale in enumerate(self.scale):
                    rows.append([e + 1, name, scale, float(self.psnr_log[e, idx_data, idx_scale]),
                                 float(self.ssim_log[e, idx_data, idx_scale])])
        self.ckp.write_csv('psnr_log.csv', ['epoch', 'set', 'scale', 'psnr', 'ssim'], rows)
        self.loss.plot_loss(self.ckp)
        self.ckp.plot_psnr(self.psnr_log, self.test_sets, self.scale)
        self.lcoa_monitor.save(self.ckp)  # issue 16: lcoa_stats.csv and lcoa_stats.png
        self.ckp.write_log(f'Saved epoch {epoch} to {self.ckp.dir}' + (' (best)' if is_best else ''))

    def _load_network(self, net_state: dict, path) -> None:
        # A resumed run continues the same network: no upsampler swap, and mismatches name their keys.
        checkpoint_io.load_into(self.model.get_model(), net_state, source=f'--load {path}',
                                log=self.ckp.write_log, allow_new_upsampler=False)

    def _resume(self) -> None:
        args, ckp = self.args, self.ckp
        if args.resume == -1:
            model_path = ckp.get_path('model', 'model_latest.pt')
            state_path = ckp.get_path(utility.TRAINING_STATE)
        else:
            model_path = ckp.get_path('model', f'model_{args.resume}.pt')
            state_path = ckp.get_path('state', f'training_state_{args.resume}.pt')
        if args.test_only:
            self._load_network(utility.load_state(model_path), model_path)
            ckp.write_log(f'Loaded {model_path}')
            return

        state = utility.load_state(state_path)
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise UserError(f'{state_path}: not a training state of this program')
        if args.resume == -1:
            self._load_network(state['model'], state_path)
        else:
            self._load_network(utility.load_state(model_path), model_path)
        if state['loss_names'] != self.loss.names:
            raise UserError(f'--loss {args.loss!r}: the run in {ckp.dir} was trained with terms '
                            f'{"+".join(state["loss_names"])}; resume with the same --loss')
        if state['test_sets'] != self.test_sets or state['scales'] != self.scale:
            raise UserError(f'--data_test/--scale: the run in {ckp.dir} was evaluated on '
                            f'{"+".join(state["test_sets"])} x{"+".join(map(str, state["scales"]))}; '
                            'resume with the same sets and scale')
        try:
            self.optimizer.load_state_dict(state['optimizer'])
        except (ValueError, KeyError) as e:
            raise UserError(f'--optimizer {args.optimizer}: does not fit the state in {state_path} ({e})') from None
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler.is_enabled() and state['scaler'] is not None:
            self.scaler.load_state_dict(state['scaler'])
        self.epoch = state['epoch']
        self.loss.log = state['loss_log']
        self.psnr_log = state['psnr_log']
        self.ssim_log = state['ssim_log']
        self.skipped = state['skipped']
        self.running_loss = state['running_loss']
        self.lcoa_monitor.load_state_dict(state.get('lcoa_stats'), self.epoch)  # issue 16
        utility.set_rng_state(state['rng'], self._loader_generator())

        lr_now = self.optimizer.param_groups[0]['lr']
        ckp.write_log(f'Resumed {state_path} after epoch {self.epoch}: learning rate in use {lr_now:.2e} '
                      f'(milestones {sorted(self.scheduler.milestones)}, gamma {self.scheduler.gamma:g})')
        base_lr = self.scheduler.base_lrs[0]
        if (not math.isclose(base_lr, args.lr) or sorted(self.scheduler.milestones) != list(args.decay)
                or not math.isclose(self.scheduler.gamma, args.gamma)):
            ckp.write_log(f'Note: the resumed schedule (lr {base_lr:g}, decay {sorted(self.scheduler.milestones)}, '
                          f'gamma {self.scheduler.gamma:g}) is kept; --lr/--decay/--gamma given now are not used')
        if self.epoch >= args.epochs:
            ckp.write_log(f'The run has finished {self.epoch} epochs already (--epochs {args.epochs})')

    def terminate(self) -> bool:
        if self.args.test_only:
            self.test()
            return True
        return self.epoch >= self.args.epochs
