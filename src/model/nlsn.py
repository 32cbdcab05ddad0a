"""NLSN: Non-Local Sparse Network (Mei et al., "Image Super-Resolution with Non-Local Sparse
Attention", CVPR 2021): EDSR with Non-Local Sparse Attention (``model.nlsa``) before the first
residual block and after every eighth one, in the layout of the official code:

    sub_mean -> head -> body (NLSA, 8 x ResBlock, NLSA, ..., conv) -> (+ head output) -> tail -> add_mean

Every forward draws new random LSH rotations from torch's global generator, as the official code
does; seed it (``torch.manual_seed``; ``--seed`` in ``main.py``) for repeatable outputs.
"""

import argparse

import torch
from torch import Tensor, nn

from model import common
from model.nlsa import NonLocalSparseAttention

# One NLSA after every ATTENTION_EVERY residual blocks (and one before the first), as published.
ATTENTION_EVERY = 8
# NLSA's matching embedding has n_feats // ATTENTION_REDUCTION channels (fixed in the official code).
ATTENTION_REDUCTION = 4


def make_model(args: argparse.Namespace) -> 'NLSN':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return NLSN(scale=args.scale[0], n_resblocks=args.n_resblocks, n_feats=args.n_feats, res_scale=args.res_scale,
                chunk_size=args.chunk_size, n_hashes=args.n_hashes, n_colors=args.n_colors, rgb_range=args.rgb_range)


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
