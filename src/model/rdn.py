"""RDN: Residual Dense Network (Zhang et al., "Residual Dense Network for Image Super-Resolution",
CVPR 2018), in the layout of EDSR-PyTorch (``SFENet1/2``, ``RDBs``, ``GFF``, ``UPNet``):

    SFENet1 -> SFENet2 -> D x RDB -> GFF(concat of all RDB outputs) -> (+ SFENet1 output) -> UPNet

RDN has no mean shift: it works on the pixel values as they come. Its upsampler ``UPNet`` ends
with the output convolution, so fine-tuning to another scale replaces all of ``UPNet``.
"""

import argparse
import math

import torch
from torch import Tensor, nn

from model import spec
from model.blocks import common

# --RDNconfig: (RDBs D, convolutions per RDB C, growth rate G), as published.
CONFIGS = {'A': (20, 6, 32), 'B': (16, 8, 64)}


def make_model(args: argparse.Namespace) -> 'RDN':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return RDN(scale=args.scale[0], G0=args.G0, RDNkSize=args.RDNkSize, RDNconfig=args.RDNconfig,
               n_colors=args.n_colors)


def _check(args: argparse.Namespace) -> None:
    if args.RDNkSize % 2 == 0:
        raise spec.bad_flag('RDNkSize', args.RDNkSize, 'must be odd')


def _read_options(state: spec.StateDict) -> dict:
    g0, n_colors, k = spec.shape(state, 'SFENet1.weight')[:3]
    first = 'RDBs.0.convs.0.conv.0.weight'
    layout = (spec.count(state, 'RDBs.{i}.LFF.weight'), spec.count(state, 'RDBs.0.convs.{i}.conv.0.weight'),
              spec.shape(state, first)[0] if first in state else 0)
    config = next((name for name, dcg in CONFIGS.items() if dcg == layout), None)
    if config is None:
        known = '; '.join(f'{n}: D={d}, C={c}, G={g}' for n, (d, c, g) in CONFIGS.items())
        raise spec.mismatch(f'an RDN with D={layout[0]} blocks, C={layout[1]} convs, G={layout[2]} channels, '
                            f'which is no --RDNconfig ({known})')
    growth = layout[2]
    if 'UPNet.4.weight' in state:
        scale = 4
    else:
        squared = spec.ratio(spec.shape(state, 'UPNet.0.weight')[0], growth)
        scale = math.isqrt(squared) if squared in (4, 9) else 0
    return dict(scale=scale, n_colors=n_colors, G0=g0, RDNkSize=k, RDNconfig=config)


def _shapes(*, scale: int, n_colors: int, G0: int, RDNkSize: int, RDNconfig: str, **_) -> spec.Shapes:  # noqa: N803
    k = RDNkSize
    n_blocks, n_convs, growth = CONFIGS[RDNconfig]
    out = {**spec.conv('SFENet1.', G0, n_colors, k), **spec.conv('SFENet2.', G0, G0, k)}
    for d in range(n_blocks):
        for c in range(n_convs):
            out.update(spec.conv(f'RDBs.{d}.convs.{c}.conv.0.', growth, G0 + c * growth, k))
        out.update(spec.conv(f'RDBs.{d}.LFF.', G0, G0 + n_convs * growth, 1))
    out.update(spec.conv('GFF.0.', G0, n_blocks * G0, 1))
    out.update(spec.conv('GFF.1.', G0, G0, k))
    if scale == 4:
        out.update(spec.conv('UPNet.0.', growth * 4, G0, k))
        out.update(spec.conv('UPNet.2.', growth * 4, growth, k))
        out.update(spec.conv('UPNet.4.', n_colors, growth, k))
    else:
        out.update(spec.conv('UPNet.0.', growth * scale * scale, G0, k))
        out.update(spec.conv('UPNet.2.', n_colors, growth, k))
    return out


# The paper's configuration: 64 channels between blocks, 3x3 kernels, config B (16 blocks x 8 layers).
PAPER = dict(G0=64, RDNkSize=3, RDNconfig='B')

ARCH = spec.Architecture(
    name='RDN',
    description='Residual Dense Network (Zhang et al., CVPR 2018)',
    make_model=make_model,
    flags=(spec.ModelFlag('G0', int, 'feature channels between residual dense blocks'),
           spec.ModelFlag('RDNkSize', int, 'kernel size (odd) outside the dense blocks'),
           spec.ModelFlag('RDNconfig', str, 'A (20 blocks x 6 layers, growth 32) or B (16 x 8, growth 64)',
                          choices=tuple(CONFIGS))),
    defaults=PAPER,
    configurations={'paper': PAPER},
    scales=(2, 3, 4),
    demo=dict(G0=16, RDNconfig='A'),
    tiny=dict(G0=8, RDNconfig='A'),
    local=True,
    check=_check,
    signature='SFENet1.weight',
    key_pattern=r'''SFENet[12]\.(weight|bias) | RDBs\.\d+\.(convs\.\d+\.conv\.0|LFF)\.(weight|bias)
        | GFF\.[01]\.(weight|bias) | UPNet\.[024]\.(weight|bias)''',
    read_options=_read_options,
    shapes=_shapes,
)


class DenseLayer(nn.Module):
    """``concat(x, relu(conv(x)))``: adds ``growth`` channels to the input (official ``RDB_Conv``).

    Args:
        in_channels: input channels.
        growth: channels added.
        kernel_size: odd kernel size.
    """

    def __init__(self, *, in_channels: int, growth: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(common.default_conv(in_channels, growth, kernel_size), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x, self.conv(x)), dim=1)


class RDB(nn.Module):
    """Residual dense block: ``x + LFF(dense layers(x))`` with a 1x1 local feature fusion ``LFF``.

    Args:
        G0: input and output channels.
        G: growth rate of each dense layer.
        C: dense layers.
        kernel_size: odd kernel size of the dense layers.
    """

    def __init__(self, *, G0: int, G: int, C: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(in_channels=G0 + c * G, growth=G, kernel_size=kernel_size)
                                     for c in range(C)])
        self.LFF = nn.Conv2d(G0 + C * G, G0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    """The RDN network: LR (N, n_colors, h, w) -> SR (N, n_colors, scale*h, scale*w).

    Args:
        scale: upscaling factor: 2, 3 or 4 (the official upsampler has no other).
        G0: feature channels between blocks (published: 64).
        RDNkSize: odd kernel size of the shallow-feature, global-fusion and upsampler convolutions
            (published: 3). As in the official code, the dense layers inside the RDBs are 3x3 whatever it is.
        RDNconfig: 'A' (20 RDBs x 6 layers, growth 32) or 'B' (16 x 8, growth 64; published), or
            any (RDBs, layers per RDB, growth) triple.
        n_colors: 3 (RGB) or 1.
    """

    # Fine-tuning from a checkpoint of another scale re-initialises these keys (see model.checkpoint.loading).
    upsampler_prefix = 'UPNet.'

    def __init__(self, *, scale: int, G0: int = 64, RDNkSize: int = 3,
                 RDNconfig: str | tuple[int, int, int] = 'B', n_colors: int = 3) -> None:
        super().__init__()
        if isinstance(RDNconfig, str) and RDNconfig not in CONFIGS:
            raise ValueError(f'RDNconfig must be one of {", ".join(CONFIGS)}, got {RDNconfig!r}')
        if RDNkSize < 1 or RDNkSize % 2 == 0:
            raise ValueError(f'RDNkSize must be odd, got {RDNkSize}')
        self.D, C, G = CONFIGS[RDNconfig] if isinstance(RDNconfig, str) else RDNconfig
        k = RDNkSize

        self.SFENet1 = common.default_conv(n_colors, G0, k)
        self.SFENet2 = common.default_conv(G0, G0, k)
        self.RDBs = nn.ModuleList([RDB(G0=G0, G=G, C=C) for _ in range(self.D)])
        # Global feature fusion of the concatenated outputs of all RDBs.
        self.GFF = nn.Sequential(nn.Conv2d(self.D * G0, G0, 1), common.default_conv(G0, G0, k))
        if scale in (2, 3):
            up = [common.default_conv(G0, G * scale * scale, k), nn.PixelShuffle(scale)]
        elif scale == 4:
            up = [common.default_conv(G0, G * 4, k), nn.PixelShuffle(2), common.default_conv(G, G * 4, k),
                  nn.PixelShuffle(2)]
        else:
            raise ValueError(f'RDN upsamples by 2, 3 or 4, got {scale}')
        self.UPNet = nn.Sequential(*up, common.default_conv(G, n_colors, k))
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.SFENet1(x.contiguous(memory_format=torch.channels_last))
        x = self.SFENet2(shallow)
        outputs = []
        for block in self.RDBs:
            x = block(x)
            outputs.append(x)
        x = self.GFF(torch.cat(outputs, dim=1)) + shallow
        return self.UPNet(x)
