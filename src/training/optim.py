"""Optimizer and learning-rate schedule from the options (EDSR's ``--optimizer``, ``--decay``, ``--gamma``)."""

import torch

from core.errors import UserError


def make_optimizer(args, params) -> torch.optim.Optimizer:
    """--optimizer ADAM (--betas, --epsilon) | SGD (--momentum) | RMSprop (--epsilon), --lr, --weight_decay."""
    params = [p for p in params if p.requires_grad]
    common = {'lr': args.lr, 'weight_decay': args.weight_decay}
    if args.optimizer == 'ADAM':
        return torch.optim.Adam(params, betas=tuple(args.betas), eps=args.epsilon, **common)
    if args.optimizer == 'SGD':
        return torch.optim.SGD(params, momentum=args.momentum, **common)
    if args.optimizer == 'RMSprop':
        return torch.optim.RMSprop(params, eps=args.epsilon, **common)
    raise UserError(f'--optimizer {args.optimizer!r}: allowed: ADAM, SGD, RMSprop')


def make_scheduler(args, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    """The lr is multiplied by --gamma at each epoch of --decay (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.decay), gamma=args.gamma)
