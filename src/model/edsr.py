"""EDSR: Enhanced Deep Residual Network (Lim et al., "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPRW 2017), in the layout of EDSR-PyTorch, whose checkpoints
(``edsr_baseline_x2-1bc95232.pt``, ``edsr_x2-0edfb8a3.pt``, ...) load with ``strict=True``:

    sub_mean -> head -> body (n_resblocks x ResBlock, conv) -> (+ head output) -> tail -> add_mean
"""

import argparse

import torch
from torch import Tensor, nn

from model import spec
from model.blocks import common


def make_model(args: argparse.Namespace) -> 'EDSR':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return EDSR(scale=args.scale[0], n_resblocks=args.n_resblocks, n_feats=args.n_feats, res_scale=args.res_scale,
                n_colors=args.n_colors, rgb_range=args.rgb_range)


# EDSR-PyTorch's two published sizes; only the large (paper) one scales its residuals.
BASELINE = dict(n_resblocks=16, n_feats=64, res_scale=1.0)
PAPER = dict(n_resblocks=32, n_feats=256, res_scale=0.1)


def _read_options(state: spec.StateDict) -> dict:
    return dict(spec.edsr_like_options(state), n_resblocks=spec.count(state, 'body.{i}.body.0.weight'))


def _shapes(*, scale: int, n_colors: int, n_feats: int, n_resblocks: int, **_) -> spec.Shapes:
    body: spec.Shapes = {}
    for b in range(n_resblocks):
        body.update(spec.resblock(f'body.{b}.', n_feats))
    body.update(spec.conv(f'body.{n_resblocks}.', n_feats, n_feats, 3))
    return spec.edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)


def _assume(read: dict) -> dict:
    paper = all(read.get(k) == PAPER[k] for k in ('n_resblocks', 'n_feats'))
    return {'res_scale': PAPER['res_scale'] if paper else 1.0}


def _from_basicsr(state: spec.StateDict, rgb_range: float) -> dict:
    """BasicSR's EDSR (``conv_first``, ``body.N.conv1/conv2``, ``conv_after_body``, ``upsample``, ``conv_last``)."""
    n = spec.count(state, 'body.{i}.conv1.weight')
    rules = [(r'body\.(\d+)\.conv1\.(.+)', r'body.\1.body.0.\2'), (r'body\.(\d+)\.conv2\.(.+)', r'body.\1.body.2.\2'),
             *spec.basicsr_to_ours(n)]
    return spec.with_mean_shift(spec.renamed(state, rules), rgb_range)


def _to_basicsr(state: spec.StateDict, options: dict) -> dict:
    n = options['n_resblocks']
    rules = [*spec.ours_to_basicsr(n), (r'body\.(\d+)\.body\.0\.(.+)', r'body.\1.conv1.\2'),
             (r'body\.(\d+)\.body\.2\.(.+)', r'body.\1.conv2.\2')]
    return spec.renamed(state, rules)


def _basicsr_options(o: dict) -> str:
    return (f"network_g: {{type: EDSR, num_in_ch: 3, num_out_ch: 3, num_feat: {o['n_feats']}, "
            f"num_block: {o['n_resblocks']}, upscale: {o['scale']}, res_scale: {o['res_scale']}, "
            f"img_range: {o['rgb_range']}}}")


BASICSR = spec.Layout(
    name='basicsr', source="BasicSR's EDSR (basicsr/archs/edsr_arch.py)", signature='body.0.conv1.weight',
    to_ours=_from_basicsr, from_ours=_to_basicsr, mean_outside=True, load_there=_basicsr_options)


def _from_super_image(state: spec.StateDict, rgb_range: float) -> dict:
    """super-image's ``EdsrModel``: our keys, but its forward (on [0, 1] images) never applies the mean shift."""
    return spec.unit_range(state, rgb_range, applies_mean=False)


SUPER_IMAGE = spec.Layout(
    name='super-image', source="super-image's EdsrModel (no mean shift in its forward)", signature='',
    to_ours=_from_super_image, mean_outside=True)


ARCH = spec.Architecture(
    name='EDSR',
    description='Enhanced Deep Residual Network (Lim et al., CVPRW 2017)',
    make_model=make_model,
    flags=(spec.ModelFlag('n_resblocks', int, 'residual blocks'), spec.N_FEATS, spec.RES_SCALE),
    defaults=BASELINE,
    configurations={'baseline': BASELINE, 'paper': PAPER},
    scales=(2, 3, 4, 8),
    demo=dict(n_resblocks=4, n_feats=32, res_scale=0.1),
    tiny=dict(n_resblocks=1, n_feats=8),
    local=True,
    signature='body.0.body.0.weight',
    key_pattern=rf'''{spec.EDSR_LIKE_KEYS} | body\.\d+\.(weight|bias) | body\.\d+\.body\.[02]\.(weight|bias)''',
    read_options=_read_options,
    shapes=_shapes,
    assume=_assume,
    layouts=(BASICSR, SUPER_IMAGE),
)


class EDSR(nn.Module):
    """The EDSR network: LR (N, n_colors, h, w) in [0, rgb_range] -> SR (N, n_colors, scale*h, scale*w).

    Args:
        scale: upscaling factor: 3 or a power of two (2, 4, 8).
        n_resblocks: residual blocks (baseline 16, paper 32).
        n_feats: feature channels (baseline 64, paper 256).
        res_scale: scale of each block's residual branch (baseline 1, paper 0.1).
        n_colors: 3 (RGB) or 1.
        rgb_range: pixel values lie in [0, rgb_range].
    """

    def __init__(self, *, scale: int, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 n_colors: int = 3, rgb_range: float = 255) -> None:
        super().__init__()
        # Built in the official order (same seed, same initial weights), registered in the official
        # state_dict order (add_mean before head).
        self.sub_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=-1)
        head = nn.Sequential(common.default_conv(n_colors, n_feats, 3))
        body = nn.Sequential(
            *[common.ResBlock(n_feats=n_feats, res_scale=res_scale) for _ in range(n_resblocks)],
            common.default_conv(n_feats, n_feats, 3))
        tail = nn.Sequential(common.Upsampler(scale=scale, n_feats=n_feats), common.default_conv(n_feats, n_colors, 3))
        self.add_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=1)
        self.head = head
        self.body = body
        self.tail = tail
        # Channels-last features: faster 3x3 convolutions on CPU and GPU; the state_dict is unchanged.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x.contiguous(memory_format=torch.channels_last)))
        res = self.body(x).add_(x)
        return self.add_mean(self.tail(res))
