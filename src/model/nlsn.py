"""NLSN: Non-Local Sparse Network (Mei et al., "Image Super-Resolution with Non-Local Sparse
Attention", CVPR 2021): EDSR with Non-Local Sparse Attention (``model.blocks.nlsa``) before the first
residual block and after every eighth one, in the layout of the official code:

    sub_mean -> head -> body (NLSA, 8 x ResBlock, NLSA, ..., conv) -> (+ head output) -> tail -> add_mean

Every forward draws new random LSH rotations from torch's global generator, as the official code
does; seed it (``torch.manual_seed``; ``--seed`` in ``main.py``) for repeatable outputs.
"""

import argparse
import re

import torch
from torch import Tensor, nn

from model import spec
from model.blocks import common
from model.blocks.nlsa import NonLocalSparseAttention

# One NLSA after every ATTENTION_EVERY residual blocks (and one before the first), as published.
ATTENTION_EVERY = 8
# NLSA's matching embedding has n_feats // ATTENTION_REDUCTION channels (fixed in the official code).
ATTENTION_REDUCTION = 4


def make_model(args: argparse.Namespace) -> 'NLSN':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return NLSN(scale=args.scale[0], n_resblocks=args.n_resblocks, n_feats=args.n_feats, res_scale=args.res_scale,
                chunk_size=args.chunk_size, n_hashes=args.n_hashes, n_colors=args.n_colors, rgb_range=args.rgb_range)


def _check(args: argparse.Namespace) -> None:
    if args.n_feats % ATTENTION_REDUCTION:
        raise spec.bad_flag('n_feats', args.n_feats, f"NLSN's attention needs a multiple of {ATTENTION_REDUCTION}")


def _read_options(state: spec.StateDict) -> dict:
    n_resblocks = sum(1 for k in state if re.fullmatch(r'body\.\d+\.body\.0\.weight', k))
    return dict(spec.edsr_like_options(state), n_resblocks=n_resblocks)


def _shapes(*, scale: int, n_colors: int, n_feats: int, n_resblocks: int, **_) -> spec.Shapes:
    def attention(i: int) -> spec.Shapes:
        return {**spec.conv(f'body.{i}.conv_match.0.', n_feats // ATTENTION_REDUCTION, n_feats, 3),
                **spec.conv(f'body.{i}.conv_assembly.0.', n_feats, n_feats, 1)}

    body = attention(0)
    i = 1
    for b in range(n_resblocks):
        body.update(spec.resblock(f'body.{i}.', n_feats))
        i += 1
        if (b + 1) % ATTENTION_EVERY == 0:
            body.update(attention(i))
            i += 1
    body.update(spec.conv(f'body.{i}.', n_feats, n_feats, 3))
    return spec.edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)


# The paper's configuration (the official code's documented command line).
PAPER = dict(n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4)

ARCH = spec.Architecture(
    name='NLSN',
    description='Non-Local Sparse Network (Mei et al., CVPR 2021)',
    make_model=make_model,
    flags=(spec.ModelFlag('n_resblocks', int, 'residual blocks'), spec.N_FEATS, spec.RES_SCALE,
           spec.ModelFlag('chunk_size', int, 'positions per attention chunk'),
           spec.ModelFlag('n_hashes', int, 'LSH rounds')),
    defaults=PAPER,
    configurations={'paper': PAPER},
    scales=(2, 3, 4, 8),
    demo=dict(n_resblocks=4, n_feats=32, res_scale=0.1, chunk_size=64, n_hashes=4),
    tiny=dict(n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=2),
    local=False,
    check=_check,
    signature='body.0.conv_match.0.weight',
    key_pattern=rf'''{spec.EDSR_LIKE_KEYS} | body\.\d+\.(weight|bias) | body\.\d+\.body\.[02]\.(weight|bias)
        | body\.\d+\.(conv_match|conv_assembly)\.0\.(weight|bias)''',
    read_options=_read_options,
    shapes=_shapes,
)


class NLSN(nn.Module):
    """The NLSN network: LR (N, n_colors, h, w) in [0, rgb_range] -> SR (N, n_colors, scale*h, scale*w).

    Any input size works, also one with fewer pixels than ``chunk_size``.

    Args:
        scale: upscaling factor: 3 or a power of two (2, 4, 8).
        n_resblocks: residual blocks (published: 32).
        n_feats: feature channels (published: 256).
        res_scale: scale of the residual branches of blocks and attention (published: 0.1).
        chunk_size: positions per attention chunk (published: 144).
        n_hashes: LSH rounds (published: 4).
        n_colors: 3 (RGB) or 1.
        rgb_range: pixel values lie in [0, rgb_range].
    """

    def __init__(self, *, scale: int, n_resblocks: int = 32, n_feats: int = 256, res_scale: float = 0.1,
                 chunk_size: int = 144, n_hashes: int = 4, n_colors: int = 3, rgb_range: float = 255) -> None:
        super().__init__()
        self.sub_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=-1)
        head = nn.Sequential(common.default_conv(n_colors, n_feats, 3))

        def attention() -> NonLocalSparseAttention:
            return NonLocalSparseAttention(channels=n_feats, chunk_size=chunk_size, n_hashes=n_hashes,
                                           reduction=ATTENTION_REDUCTION, res_scale=res_scale)

        layers: list[nn.Module] = [attention()]
        for i in range(n_resblocks):
            layers.append(common.ResBlock(n_feats=n_feats, res_scale=res_scale))
            if (i + 1) % ATTENTION_EVERY == 0:
                layers.append(attention())
        body = nn.Sequential(*layers, common.default_conv(n_feats, n_feats, 3))
        tail = nn.Sequential(common.Upsampler(scale=scale, n_feats=n_feats), common.default_conv(n_feats, n_colors, 3))
        # Registered in the official state_dict order (add_mean before head).
        self.add_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=1)
        self.head = head
        self.body = body
        self.tail = tail
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x.contiguous(memory_format=torch.channels_last)))
        res = self.body(x).add_(x)
        return self.add_mean(self.tail(res))
