"""RCAN: Residual Channel Attention Network (Zhang et al., "Image Super-Resolution Using Very Deep
Residual Channel Attention Networks", ECCV 2018), in the layout of the EDSR-PyTorch/NLSN code:

    sub_mean -> head -> body (n_resgroups x ResidualGroup, conv) -> (+ head output) -> tail -> add_mean

A ResidualGroup is ``x + conv(RCAB(...RCAB(x)))``; an RCAB is
``x + res_scale * CA(conv(relu(conv(x))))`` with squeeze-and-excitation channel attention CA.
"""

import argparse

import torch
from torch import Tensor, nn

from model import spec
from model.blocks import common


def make_model(args: argparse.Namespace) -> 'RCAN':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return RCAN(scale=args.scale[0], n_resgroups=args.n_resgroups, n_resblocks=args.n_resblocks,
                n_feats=args.n_feats, reduction=args.reduction, res_scale=args.res_scale, n_colors=args.n_colors,
                rgb_range=args.rgb_range)


def _check(args: argparse.Namespace) -> None:
    if args.reduction > args.n_feats:
        raise spec.bad_flag('reduction', args.reduction, f'must be at most --n_feats ({args.n_feats})')


def _read_options(state: spec.StateDict) -> dict:
    options = spec.edsr_like_options(state)
    squeeze = spec.shape(state, 'body.0.body.0.body.3.conv_du.0.weight')[0]
    return dict(options, n_resgroups=spec.count(state, 'body.{i}.body.0.body.0.weight'),
                n_resblocks=spec.count(state, 'body.0.body.{i}.body.3.conv_du.0.weight'),
                reduction=spec.ratio(options['n_feats'], squeeze))


def _shapes(*, scale: int, n_colors: int, n_feats: int, n_resgroups: int, n_resblocks: int, reduction: int,
            **_) -> spec.Shapes:
    body: spec.Shapes = {}
    for g in range(n_resgroups):
        for b in range(n_resblocks):
            p = f'body.{g}.body.{b}.'
            body.update(spec.resblock(p, n_feats))
            body.update(spec.conv(p + 'body.3.conv_du.0.', n_feats // reduction, n_feats, 1))
            body.update(spec.conv(p + 'body.3.conv_du.2.', n_feats, n_feats // reduction, 1))
        body.update(spec.conv(f'body.{g}.body.{n_resblocks}.', n_feats, n_feats, 3))
    body.update(spec.conv(f'body.{n_resgroups}.', n_feats, n_feats, 3))
    return {'a': (1,), **spec.edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)}


def _from_basicsr(state: spec.StateDict, rgb_range: float) -> dict:
    """BasicSR's RCAN: ``body.G.residual_group.B.rcab.{0,2}``, ``rcab.3.attention.{1,3}`` and ``body.G.conv``."""
    blocks = spec.count(state, 'body.0.residual_group.{i}.rcab.0.weight')
    rcab = r'body\.(\d+)\.residual_group\.(\d+)\.rcab\.'
    rules = [(rcab + r'([02])\.(.+)', r'body.\1.body.\2.body.\3.\4'),
             (rcab + r'3\.attention\.1\.(.+)', r'body.\1.body.\2.body.3.conv_du.0.\3'),
             (rcab + r'3\.attention\.3\.(.+)', r'body.\1.body.\2.body.3.conv_du.2.\3'),
             (r'body\.(\d+)\.conv\.(.+)', rf'body.\1.body.{blocks}.\2'),
             *spec.basicsr_to_ours(spec.count(state, 'body.{i}.conv.weight'))]
    return spec.with_mean_shift(spec.renamed(state, rules), rgb_range)


def _attention_key(match) -> str:
    group, block, conv, rest = match.groups()
    return f'body.{group}.residual_group.{block}.rcab.3.attention.{int(conv) + 1}.{rest}'


def _to_basicsr(state: spec.StateDict, options: dict) -> dict:
    groups, blocks = options['n_resgroups'], options['n_resblocks']
    rules = [(r'a', None), *spec.ours_to_basicsr(groups),
             (rf'body\.(\d+)\.body\.{blocks}\.(.+)', r'body.\1.conv.\2'),
             (r'body\.(\d+)\.body\.(\d+)\.body\.([02])\.(.+)', r'body.\1.residual_group.\2.rcab.\3.\4'),
             (r'body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.([02])\.(.+)', _attention_key)]
    return spec.renamed(state, rules)


def _basicsr_options(o: dict) -> str:
    return (f"network_g: {{type: RCAN, num_in_ch: 3, num_out_ch: 3, num_feat: {o['n_feats']}, "
            f"num_group: {o['n_resgroups']}, num_block: {o['n_resblocks']}, squeeze_factor: {o['reduction']}, "
            f"upscale: {o['scale']}, res_scale: {o['res_scale']}, img_range: {o['rgb_range']}}}")


BASICSR = spec.Layout(
    name='basicsr', source="BasicSR's RCAN (basicsr/archs/rcan_arch.py)",
    signature='body.0.residual_group.0.rcab.0.weight', to_ours=_from_basicsr, from_ours=_to_basicsr,
    mean_outside=True, load_there=_basicsr_options)


def _from_super_image(state: spec.StateDict, rgb_range: float) -> dict:
    """super-image's ``RcanModel``: RCAN's keys without ``a``, run on [0, 1] images with the mean shift of 255."""
    return spec.unit_range(state, rgb_range, applies_mean=True)


SUPER_IMAGE = spec.Layout(
    name='super-image', source="super-image's RcanModel ([0, 1] images, the mean shift of range 255)", signature='',
    to_ours=_from_super_image, mean_outside=True)


# The paper's configuration (10 groups of 20 blocks, 64 channels, channel attention squeezing by 16).
PAPER = dict(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16)

ARCH = spec.Architecture(
    name='RCAN',
    description='Residual Channel Attention Network (Zhang et al., ECCV 2018)',
    make_model=make_model,
    flags=(spec.N_RESGROUPS, spec.ModelFlag('n_resblocks', int, 'residual blocks per group'), spec.N_FEATS,
           spec.ModelFlag('reduction', int, 'channel attention squeezes n_feats to n_feats // reduction'),
           spec.RES_SCALE),
    defaults=dict(PAPER, res_scale=1.0),
    configurations={'paper': PAPER},
    scales=(2, 3, 4, 8),
    demo=dict(n_resgroups=2, n_resblocks=2, n_feats=32, reduction=4),
    tiny=dict(n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2),
    local=False,  # channel attention pools over the whole image
    check=_check,
    signature='body.0.body.0.body.3.conv_du.0.weight',
    key_pattern=rf'''a | {spec.EDSR_LIKE_KEYS} | body\.\d+\.(weight|bias) | body\.\d+\.body\.\d+\.(weight|bias)
        | body\.\d+\.body\.\d+\.body\.([02]|3\.conv_du\.[02])\.(weight|bias)''',
    read_options=_read_options,
    shapes=_shapes,
    layouts=(BASICSR, SUPER_IMAGE),
)


class ChannelAttention(nn.Module):
    """``x * sigmoid(conv(relu(conv(mean over H, W of x))))``: per-channel gates from global statistics.

    Args:
        channels: feature channels.
        reduction: the bottleneck has ``channels // reduction`` channels.
    """

    def __init__(self, *, channels: int, reduction: int) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(x.mean(dim=(-2, -1), keepdim=True))


class RCAB(nn.Module):
    """Residual channel attention block: ``x + res_scale * CA(conv(relu(conv(x))))``.

    The official code takes ``res_scale`` but never applies it; the published models use 1, which
    is the same network. Here it is applied, so that a value other than 1 means what it says.

    Args:
        n_feats: feature channels.
        reduction: channel attention bottleneck factor.
        res_scale: scale of the residual branch.
    """

    def __init__(self, *, n_feats: int, reduction: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(
            common.default_conv(n_feats, n_feats, 3), nn.ReLU(inplace=True), common.default_conv(n_feats, n_feats, 3),
            ChannelAttention(channels=n_feats, reduction=reduction))

    def forward(self, x: Tensor) -> Tensor:
        res = self.body(x)
        if self.res_scale != 1:
            res = res * self.res_scale
        return res + x


class ResidualGroup(nn.Module):
    """``x + conv(RCAB_n(...RCAB_1(x)))``.

    Args:
        n_feats: feature channels.
        n_resblocks: RCABs in the group.
        reduction: channel attention bottleneck factor.
        res_scale: scale of each RCAB's residual branch.
    """

    def __init__(self, *, n_feats: int, n_resblocks: int, reduction: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(n_feats=n_feats, reduction=reduction, res_scale=res_scale) for _ in range(n_resblocks)],
            common.default_conv(n_feats, n_feats, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class RCAN(nn.Module):
    """The RCAN network: LR (N, n_colors, h, w) in [0, rgb_range] -> SR (N, n_colors, scale*h, scale*w).

    Args:
        scale: upscaling factor: 3 or a power of two (2, 4, 8).
        n_resgroups: residual groups (published: 10).
        n_resblocks: RCABs per group (published: 20).
        n_feats: feature channels (published: 64).
        reduction: channel attention bottleneck factor (published: 16).
        res_scale: scale of each RCAB's residual branch (published: 1).
        n_colors: 3 (RGB) or 1.
        rgb_range: pixel values lie in [0, rgb_range].
    """

    def __init__(self, *, scale: int, n_resgroups: int = 10, n_resblocks: int = 20, n_feats: int = 64,
                 reduction: int = 16, res_scale: float = 1.0, n_colors: int = 3, rgb_range: float = 255) -> None:
        super().__init__()
        # Unused by forward: the NLSN/LCoAN versions of RCAN hold it, so their checkpoints have it.
        # Frozen, so that DistributedDataParallel finds no unused trainable parameter. A checkpoint
        # without it (RCAN's own RCAN_BIX2.pt) loads too (see model.checkpoint.loading).
        self.a = nn.Parameter(torch.zeros(1), requires_grad=False)
        # Built in the official order (same seed, same initial weights), registered in the official
        # state_dict order (add_mean before head).
        self.sub_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=-1)
        head = nn.Sequential(common.default_conv(n_colors, n_feats, 3))
        body = nn.Sequential(
            *[ResidualGroup(n_feats=n_feats, n_resblocks=n_resblocks, reduction=reduction, res_scale=res_scale)
              for _ in range(n_resgroups)],
            common.default_conv(n_feats, n_feats, 3))
        tail = nn.Sequential(common.Upsampler(scale=scale, n_feats=n_feats), common.default_conv(n_feats, n_colors, 3))
        self.add_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=1)
        self.head = head
        self.body = body
        self.tail = tail
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x.contiguous(memory_format=torch.channels_last)))
        res = self.body(x) + x
        return self.add_mean(self.tail(res))
