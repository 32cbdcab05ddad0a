"""Pixel losses that ``--loss`` can combine, e.g. ``1*L1+0.5*MSE`` or ``1*Charbonnier``."""

import torch
from torch import nn


class CharbonnierLoss(nn.Module):
    """mean(sqrt((sr - hr)^2 + eps^2)), a differentiable L1 (Lai et al., LapSRN).

    Args:
        eps: smoothing constant on the scale of the pixel values (1e-3 for rgb_range 1).
    """

    def __init__(self, *, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((sr - hr).pow(2) + self.eps ** 2).mean()


def make_term(name: str, *, rgb_range: float) -> nn.Module:
    """The loss module for canonical term ``name`` (one of :data:`TERMS`)."""
    if name == 'L1':
        return nn.L1Loss()
    if name == 'MSE':
        return nn.MSELoss()
    if name == 'Charbonnier':
        return CharbonnierLoss(eps=1e-3 * rgb_range)
    raise KeyError(name)


TERMS = ('L1', 'MSE', 'Charbonnier')
