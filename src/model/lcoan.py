"""LCoAN: Learnable Collaborative Attention Network for single-image super-resolution.

Layout (module names and order) follows the official implementation, so that its published
checkpoints load with ``strict=True``:

    sub_mean -> head -> body (n_resgroups x ResidualGroup) -> m_conv -> (+ head output) -> tail -> add_mean

Each ResidualGroup is ``x + res_scale * m_conv(LCoA(local_body(x)))``. The first group's LCoA
builds the learnable sparse pattern; every later group reuses it (collaborative attention).
"""

import argparse

import torch
from torch import Tensor, nn

from model import spec
from model.blocks import common
from model.blocks.attention_interface import Pattern
from model.blocks.lcoa import IMPLEMENTATIONS, LearnableCollaborativeAttention

# Inference computes the upsampler tail in strips of this many LR rows (see LCoAN._tail_in_strips).
TAIL_STRIP_ROWS = 32
TAIL_HALO = 3


def make_model(args: argparse.Namespace) -> 'LCoAN':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return LCoAN(
        scale=args.scale[0], n_resgroups=args.n_resgroups, n_resblocks=args.n_resblocks, n_feats=args.n_feats,
        reduction=args.reduction, res_scale=args.res_scale, n_clusters=args.n_clusters,
        window_size=args.window_size, n_hashes=args.n_hashes, ema_decay=args.ema_decay, n_colors=args.n_colors,
        rgb_range=args.rgb_range, attention_impl=args.attention_impl,
    )


def _check(args: argparse.Namespace) -> None:
    if args.n_feats % args.reduction:
        raise spec.bad_flag('reduction', args.reduction, f'must divide --n_feats ({args.n_feats})')
    if not 0 <= args.ema_decay <= 1:
        raise spec.bad_flag('ema_decay', args.ema_decay, 'must be in [0, 1] (1 freezes the centroids)')


def _read_options(state: spec.StateDict) -> dict:
    options = spec.edsr_like_options(state)
    n_hashes, n_clusters, dim = spec.shape(state, 'body.0.attention.0.kmeans.means')
    return dict(options, n_resgroups=spec.count(state, 'body.{i}.m_conv.0.weight'),
                n_resblocks=spec.count(state, 'body.0.local_body.{i}.body.0.weight'),
                reduction=spec.ratio(options['n_feats'], dim), n_clusters=n_clusters, n_hashes=n_hashes)


def _shapes(*, scale: int, n_colors: int, n_feats: int, n_resgroups: int, n_resblocks: int, reduction: int,
            n_clusters: int, n_hashes: int, **_) -> spec.Shapes:
    body: spec.Shapes = {}
    for g in range(n_resgroups):
        p = f'body.{g}.'
        for b in range(n_resblocks):
            body.update(spec.resblock(f'{p}local_body.{b}.', n_feats))
        att = p + 'attention.0.'
        body[att + 'kmeans.means'] = (n_hashes, n_clusters, n_feats // reduction)
        body[att + 'kmeans.initted'] = ()
        body.update(spec.conv(att + 'conv_match.0.', n_feats // reduction, n_feats, 3))
        body.update(spec.conv(att + 'conv_assembly.0.', n_feats, n_feats, 1))
        body.update(spec.conv(p + 'm_conv.0.', n_feats, n_feats, 3))
    body.update(spec.conv('m_conv.0.', n_feats, n_feats, 3))
    return {'a': (1,), **spec.edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)}


# The paper's configuration: the model flags of its x2 command line (x4 is fine-tuned from x2 in the same one).
PAPER = dict(n_resgroups=10, n_resblocks=4, n_feats=128, reduction=1, res_scale=0.1, n_clusters=128, window_size=384,
             ema_decay=0.999)

ARCH = spec.Architecture(
    name='LCoAN',
    description='Learnable Collaborative Attention Network (this codebase\'s own model)',
    make_model=make_model,
    flags=(
        spec.N_RESGROUPS,
        spec.ModelFlag('n_resblocks', int, 'residual blocks per group'),
        spec.N_FEATS,
        spec.ModelFlag('reduction', int, "the attention's query/key embedding has n_feats // reduction channels"),
        spec.RES_SCALE,
        spec.ModelFlag('n_clusters', int, 'k-means clusters of the learnable sparse pattern'),
        spec.ModelFlag('window_size', int, 'attention window (positions sorted by cluster)'),
        spec.ModelFlag('ema_decay', float, "decay of the centroids' moving average, in [0, 1]; 1 freezes them at "
                       'their k-means initialisation, as the official code (which never applies its moving average) '
                       'trained the published models', positive=False),
        spec.ModelFlag('n_hashes', int, 'k-means rounds'),
        spec.ModelFlag('attention_impl', str, 'sparse-attention implementation (same outputs; reference is the plain '
                       'one)', choices=tuple(IMPLEMENTATIONS), changes_output=False),
    ),
    defaults=dict(PAPER, n_hashes=1, attention_impl='fast'),
    configurations={'paper': PAPER},
    scales=(2, 3, 4),
    demo=dict(n_resgroups=2, n_resblocks=2, n_feats=32, reduction=2, n_clusters=16, window_size=96, ema_decay=0.99,
              res_scale=0.1),
    tiny=dict(n_resgroups=2, n_resblocks=1, n_feats=8, n_clusters=4, window_size=32),
    local=False,
    check=_check,
    signature='body.0.attention.0.kmeans.means',
    key_pattern=rf'''a | {spec.EDSR_LIKE_KEYS} | m_conv\.0\.(weight|bias)
        | body\.\d+\.local_body\.\d+\.body\.[02]\.(weight|bias) | body\.\d+\.m_conv\.0\.(weight|bias)
        | body\.\d+\.attention\.0\.(kmeans\.(means|initted)|(conv_match|conv_assembly)\.0\.(weight|bias))''',
    read_options=_read_options,
    shapes=_shapes,
)


class ResidualGroup(nn.Module):
    """Residual blocks, then learnable collaborative attention, then a convolution, inside a scaled skip.

    ``forward(x, pattern=None) -> (x + res_scale * m_conv(attention(local_body(x))), pattern)``.

    Args:
        n_feats: feature channels.
        n_resblocks: residual blocks in ``local_body``.
        reduction: the attention's query/key embedding has ``n_feats // reduction`` channels.
        res_scale: scale of the group's (and the attention's) residual branch.
        n_clusters: k-means clusters per round.
        window_size: positions per attention window.
        n_rounds: k-means rounds.
        ema_decay: moving-average decay of the centroids, in [0, 1] (1: frozen).
        attention_impl: sparse-attention implementation, 'fast' or 'reference'.
    """

    def __init__(self, *, n_feats: int, n_resblocks: int, reduction: int, res_scale: float, n_clusters: int,
                 window_size: int, n_rounds: int, ema_decay: float, attention_impl: str = 'fast') -> None:
        super().__init__()
        self.res_scale = res_scale
        self.local_body = nn.Sequential(*[common.ResBlock(n_feats=n_feats) for _ in range(n_resblocks)])
        self.attention = nn.Sequential(LearnableCollaborativeAttention(
            n_feats=n_feats, reduction=reduction, n_clusters=n_clusters, window_size=window_size, n_rounds=n_rounds,
            ema_decay=ema_decay, res_scale=res_scale, attention_impl=attention_impl))
        self.m_conv = nn.Sequential(common.default_conv(n_feats, n_feats, 3))

    def forward(self, x: Tensor, pattern: Pattern | None = None) -> tuple[Tensor, Pattern]:
        res = self.local_body(x)
        res, pattern = self.attention[0](res, pattern)
        res = self.m_conv(res)
        return torch.add(x, res, alpha=self.res_scale), pattern


class LCoAN(nn.Module):
    """The LCoAN network: LR image (N, n_colors, h, w) in [0, rgb_range] -> SR (N, n_colors, scale*h, scale*w).

    Args:
        scale: upscaling factor (2, 3 or 4; any power of two works).
        n_resgroups: residual groups.
        n_resblocks: residual blocks per group.
        n_feats: feature channels.
        reduction: the attention's query/key embedding has ``n_feats // reduction`` channels.
        res_scale: scale of the residual branches of groups and attention.
        n_clusters: k-means clusters per round.
        window_size: positions per attention window.
        n_hashes: k-means rounds. Named after the ``--n_hashes`` flag (as every keyword here is after its
            flag), so configurations written as flags or official ``args`` map one to one; inside the
            network it is ``n_rounds``.
        ema_decay: moving-average decay of the centroids, in [0, 1]; 1 freezes them at their k-means
            initialisation, which is how the official code trained the published models (see
            ``model.blocks.lcoa.KMeansCentroids``).
        n_colors: 3 (RGB) or 1 (Y). For 1 channel the mean shift uses the mean of the three DIV2K
            channel means (the official code has no 1-channel variant).
        rgb_range: pixel values lie in [0, rgb_range].
        attention_impl: sparse-attention implementation, 'fast' or 'reference' (same outputs to float
            rounding; 'reference' is the plain one the tests check 'fast' against).
    """

    def __init__(self, *, scale: int, n_resgroups: int = 10, n_resblocks: int = 4, n_feats: int = 128,
                 reduction: int = 1, res_scale: float = 0.1, n_clusters: int = 128, window_size: int = 384,
                 n_hashes: int = 1, ema_decay: float = 0.999, n_colors: int = 3, rgb_range: float = 255,
                 attention_impl: str = 'fast') -> None:
        super().__init__()

        # Unused by forward: exists only so that official checkpoints (which hold it) load strictly.
        # Frozen, so that DistributedDataParallel needs no search for unused parameters.
        self.a = nn.Parameter(torch.zeros(1), requires_grad=False)
        # Submodules are built in the official order (same seed, same initial weights) but
        # registered in the official state_dict order (add_mean before head).
        self.sub_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=-1)
        head = nn.Sequential(common.default_conv(n_colors, n_feats, 3))
        # The official flag says "hashes" (NLSN's name for its LSH rounds); LCoAN's rounds are k-means clusterings,
        # so the network calls them n_rounds. The flag (and this keyword) keep the official name for
        # command-line compatibility.
        body = nn.Sequential(*[
            ResidualGroup(n_feats=n_feats, n_resblocks=n_resblocks, reduction=reduction, res_scale=res_scale,
                          n_clusters=n_clusters, window_size=window_size, n_rounds=n_hashes, ema_decay=ema_decay,
                          attention_impl=attention_impl)
            for _ in range(n_resgroups)])
        m_conv = nn.Sequential(common.default_conv(n_feats, n_feats, 3))
        tail = nn.Sequential(common.Upsampler(scale=scale, n_feats=n_feats), common.default_conv(n_feats, n_colors, 3))
        self.add_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=1)
        self.head = head
        self.body = body
        self.m_conv = m_conv
        self.tail = tail

        # Collaborative attention: only the first group clusters and builds the pattern, so the later groups'
        # conv_match and k-means centroids are never used. They stay (frozen) only so that official
        # checkpoints, which hold them, load strictly.
        for group in self.body[1:]:
            group.attention[0].conv_match.requires_grad_(False)

        # Channels-last ("NHWC") features: 3x3 convolutions run ~1.4x faster on CPU (and use tensor
        # cores better on GPU), and the attention's (N, H*W, C) views of them need no copy. Keys,
        # shapes and values of the state_dict are unchanged; only the strides differ.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x.contiguous(memory_format=torch.channels_last)))
        res = x
        pattern = None
        for group in self.body:
            res, pattern = group(res, pattern)
        # The shared attention weights are the largest tensor of the body (3 * window_size floats per
        # pixel): free them before the upsampler allocates its own large intermediates.
        del pattern
        res = self.m_conv(res) + x
        if torch.is_grad_enabled() or res.shape[-2] <= 2 * TAIL_STRIP_ROWS:
            return self.add_mean(self.tail(res))
        return self._tail_in_strips(res)

    def _tail_in_strips(self, res: Tensor) -> Tensor:
        """``add_mean(tail(res))`` computed in horizontal strips (inference only).

        The upsampler's intermediates are the largest tensors of a forward pass (at x4, 16 times the
        feature map at 4 times the channels). Each strip is run with ``TAIL_HALO`` extra LR rows on
        either side, more than the tail's receptive field (under 2 LR rows at any scale), and only
        its own rows are kept, so the result equals the whole-image tail up to float rounding.
        """
        n, _, h, w = res.shape
        out = None
        for top in range(0, h, TAIL_STRIP_ROWS):
            bottom = min(top + TAIL_STRIP_ROWS, h)
            lo, hi = max(top - TAIL_HALO, 0), min(bottom + TAIL_HALO, h)
            strip = self.add_mean(self.tail(res[:, :, lo:hi]))
            scale = strip.shape[-1] // w
            if out is None:
                out = strip.new_empty(n, strip.shape[1], h * scale, w * scale)
            out[:, :, top * scale:bottom * scale] = strip[:, :, (top - lo) * scale:(bottom - lo) * scale]
        return out
