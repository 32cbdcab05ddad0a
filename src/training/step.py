"""One optimisation step, and the batches it skips instead of stepping.

A batch is skipped (no optimizer step, gradients cleared, buffers such as the k-means centroids
restored) when its loss is not finite, when its loss exceeds ``--skip_threshold`` times the running
loss of the accepted batches, or when its gradient norm is not finite. Under torch.distributed all
processes skip a batch if any of them would.

A run whose last ``max_consecutive_skips`` batches were all skipped has diverged (every batch after
a bad step is skipped: the running loss never moves again): the step raises :class:`Diverged`.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_, get_total_norm

from core import distributed
from core.precision import autocast, scales_the_loss

# Weight of the newest accepted batch in the running loss that --skip_threshold compares against.
RUNNING_LOSS_MOMENTUM = 0.1
# Consecutive skipped batches after which training stops as diverged (at most one epoch's batches, see
# Trainer). A healthy run skips an odd batch; a hundred in a row do not recover.
MAX_CONSECUTIVE_SKIPS = 100


class Diverged(Exception):
    """The last ``max_consecutive_skips`` batches were all skipped; the message says why the last one was."""


class TrainStep:
    """``step(lr, hr, epoch, batch)``: forward, loss, backward and optimizer step, or a logged skip.

    Args:
        model: the ``model.Model`` wrapper in training mode; ``get_model()`` gives the bare network.
        loss: ``loss.Loss``; ``accept()`` is called for the batches that are kept.
        optimizer: steps the network's parameters.
        precision: ``--precision``; 'half' also scales the loss (fp16 gradients underflow without it).
        device: where the batches are.
        skip_threshold: ``--skip_threshold``.
        gclip: ``--gclip``; 0 for no clipping (the norm is still checked).
        log: receives one line per skipped batch.
        max_consecutive_skips: raise :class:`Diverged` when this many batches in a row were skipped.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer, *, precision: str,
                 device: torch.device, skip_threshold: float, gclip: float, log: Callable[[str], None],
                 max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.precision = precision
        self.device = device
        self.skip_threshold = skip_threshold
        self.gclip = gclip
        self.log = log
        # bf16 has float32's exponent range and needs no loss scaling.
        self.scaler = torch.amp.GradScaler(device.type, enabled=scales_the_loss(precision))
        self.skipped = 0  # over the whole run
        self.skipped_epoch = 0  # reset by the trainer at the start of an epoch
        self.running_loss: float | None = None
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_skips = 0  # across epochs; saved, so that a resumed run stops where this one would

    def __call__(self, lr: torch.Tensor, hr: torch.Tensor, epoch: int, batch: int) -> bool:
        """One step on a batch; False if it was skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        buffers = list(self.model.get_model().buffers())
        saved = [b.detach().clone() for b in buffers]
        with autocast(self.precision, self.device.type):
            sr = self.model(lr)
        loss = self.loss(sr, hr)
        value = loss.item()
        reason = self._loss_problem(value)
        if self._any_rank(reason is not None):
            self._skip(epoch, batch, reason or 'skipped by another process', buffers, saved)
            return False

        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = self._gradient_norm()
        if not torch.isfinite(norm):
            if self.scaler.is_enabled():
                self.scaler.update()  # lowers the loss scale for the next batch
            self._skip(epoch, batch, f'gradient norm is {norm.item()}', buffers, saved)
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss.accept()
        self.consecutive_skips = 0
        if self.running_loss is None:
            self.running_loss = value
        else:
            self.running_loss += RUNNING_LOSS_MOMENTUM * (value - self.running_loss)
        return True

    def _loss_problem(self, value: float) -> str | None:
        if not math.isfinite(value):
            return f'loss is {value}'
        if self.running_loss is not None and value > self.skip_threshold * self.running_loss:
            return (f'loss {value:.4g} exceeds --skip_threshold {self.skip_threshold:g} '
                    f'x running loss {self.running_loss:.4g}')
        return None

    def _gradient_norm(self) -> torch.Tensor:
        """The total gradient norm, after clipping it to ``gclip`` if that is set."""
        params = [p for group in self.optimizer.param_groups for p in group['params']]
        if self.gclip > 0:
            return clip_grad_norm_(params, self.gclip)
        return get_total_norm([p.grad for p in params if p.grad is not None])

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
        self.skipped_epoch += 1
        self.consecutive_skips += 1
        self.log(f'[Epoch {epoch}, batch {batch + 1}] skipped: {reason} ({self.skipped} skipped in this run)')
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise Diverged(f'the last {self.consecutive_skips} batches were all skipped (the last one: {reason})')

    def state_dict(self) -> dict:
        """What a resumed run needs to skip the same batches: counters, running loss, loss scale."""
        return {'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else None,
                'skipped': self.skipped, 'running_loss': self.running_loss,
                'consecutive_skips': self.consecutive_skips}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler.is_enabled() and state['scaler'] is not None:
            self.scaler.load_state_dict(state['scaler'])
        self.skipped = state['skipped']
        self.running_loss = state['running_loss']
        self.consecutive_skips = state.get('consecutive_skips', 0)  # absent from states of earlier releases
