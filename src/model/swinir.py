"""SwinIR: image restoration with Swin Transformer blocks (Liang et al., "SwinIR: Image Restoration Using Swin
Transformer", ICCV Workshops 2021), its super-resolution networks, under the key names of the official code
(github.com/JingyunLiang/SwinIR, ``models/network_swinir.py``) so that its release files load as they are::

    (x / rgb_range - mean) * img_range -> conv_first -> patch_embed.norm
      -> layers (RSTB: Swin blocks, then conv, + input) ... -> norm -> conv_after_body (+ conv_first output)
      -> pixelshuffle:       conv_before_upsample -> upsample (conv + PixelShuffle stages) -> conv_last
         pixelshuffledirect: upsample (one conv + PixelShuffle(scale))
      -> / img_range + mean, * rgb_range

A Swin block is ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``: multi-head self-attention inside
non-overlapping ``window_size`` x ``window_size`` windows with a learned relative-position bias; every
second block first rolls the image by half a window (the "shifted" windows), and an additive mask of
-100 keeps the pixels that the roll brought from the opposite border apart.

Three things the other architectures of this codebase do not have:

- **A mean kept outside the weights.** The DIV2K RGB mean (zero for one colour) and ``img_range`` (1 for
  the SR models) are constants of the network, not tensors of its state_dict; the network also divides
  its input by ``rgb_range`` (and multiplies its output back), so it computes the same function for any
  ``--rgb_range``. Its published weights run on [0, 1] images: ``--rgb_range 1`` is what the template
  and checkpoint detection use.
- **Constant buffers in the state_dict.** Every attention holds ``relative_position_index`` (which bias
  entry each pair of window positions uses) and every shifted block ``attn_mask``, the mask for the
  *training* patch size ``img_size`` (48 or 64 in the releases). Both are kept so that the release files
  load strictly, key for key; the mask is never used: it is computed for the size of each input.
- **Inputs padded to a multiple of the window.** Two conventions exist, and they give different outputs
  (tens of 8-bit levels at the border with random weights):

  * the network class (``check_image_size``, used by the official training) reflects the bottom and right
    edges just up to the next multiple of the window, nothing when a side already is one;
  * the official test script (``main_test_swinir.py``), which produced every published number, mirrors the
    edge by concatenating the flipped image, *always* adding 1 to ``window_size`` rows and columns
    (``(h // window_size + 1) * window_size - h``: a whole window when a side is already a multiple).

  Here the network pads as the official *training* did in training mode, and as the official *test script*
  did in eval mode (``main.py --test_only``, the validation during training, ``upscale.py``, ``api``,
  ``export.py``), then crops the output to ``scale`` times the input. :func:`test_padding` is that rule.

Real-world SR (``upsampler='nearest+conv'``), denoising and JPEG artefact reduction (no upsampler), the
absolute position embedding (``ape``) and ``patch_norm=False`` are not built: their checkpoints are refused
in one line naming what is not supported. ``depths`` and ``num_heads`` may differ from layer to layer.
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import spec
from model.blocks.common import DIV2K_RGB_MEAN

# The official networks' fixed width of the pixelshuffle reconstruction (``num_feat``).
UPSAMPLE_FEATS = 64
# What the shifted-window mask adds to the attention logits of pairs from different regions (official value).
MASK_VALUE = -100.0
UPSAMPLERS = ('pixelshuffle', 'pixelshuffledirect')
RESI_CONNECTIONS = ('1conv', '3conv')


# -- the options: lists of layers as flags

def int_list(text: str | int | list | tuple) -> list[int]:
    """``'6+6+6'``, ``'6,6,6'``, ``6`` or ``[6, 6, 6]`` as a list of ints; ValueError for anything else."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list | tuple):
        return [int(v) for v in text]
    parts = str(text).replace(',', '+').split('+')
    return [int(p) for p in parts]


def _layers(depths, num_heads) -> tuple[list[int], list[int]]:
    """``depths`` and ``num_heads`` as lists of one entry per layer (one ``num_heads`` serves every layer)."""
    depths, heads = int_list(depths), int_list(num_heads)
    if len(heads) == 1:
        heads = heads * len(depths)
    return depths, heads


def _check(args: argparse.Namespace) -> None:
    """Lists of positive ints, one head count per layer (or one for all), heads dividing ``embed_dim``, a window
    smaller than the training patch; the lists are written back in their ``6+6+6`` form."""
    for flag in ('depths', 'num_heads'):
        try:
            values = int_list(getattr(args, flag))
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            raise spec.bad_flag(flag, getattr(args, flag), 'positive integers, one per layer, "+"- or ","-separated '
                                '(e.g. 6+6+6+6)')
        setattr(args, flag, '+'.join(map(str, values)))
    depths, heads = int_list(args.depths), int_list(args.num_heads)
    if len(heads) not in (1, len(depths)):
        raise spec.bad_flag('num_heads', args.num_heads, f'one value, or one per layer ({len(depths)}, as --depths)')
    bad = [h for h in heads if args.embed_dim % h]
    if bad:
        raise spec.bad_flag('num_heads', args.num_heads, f'each must divide --embed_dim ({args.embed_dim})')
    if args.resi_connection == '3conv' and args.embed_dim < 4:
        raise spec.bad_flag('embed_dim', args.embed_dim, "at least 4 with --resi_connection 3conv (it narrows to "
                            "embed_dim // 4)")
    if args.img_size <= args.window_size or args.img_size % args.window_size:
        raise spec.bad_flag('img_size', args.img_size, f'a multiple of --window_size ({args.window_size}) larger '
                            'than it (the training patch, in LR pixels)')
    if not 0 <= args.drop_path_rate < 1:
        raise spec.bad_flag('drop_path_rate', args.drop_path_rate, 'in [0, 1)')


def make_model(args: argparse.Namespace) -> 'SwinIR':
    """The network configured by the parsed options ``args`` (see ``option.py``)."""
    return SwinIR(scale=args.scale[0], n_colors=args.n_colors, rgb_range=args.rgb_range, embed_dim=args.embed_dim,
                  depths=args.depths, num_heads=args.num_heads, window_size=args.window_size,
                  mlp_ratio=args.mlp_ratio, img_size=args.img_size, upsampler=args.upsampler,
                  resi_connection=args.resi_connection, drop_path_rate=args.drop_path_rate)


# -- reading a checkpoint

_BLOCK = 'layers.{i}.residual_group.blocks.{j}.'


def _unsupported(what: str) -> spec.UnknownCheckpoint:
    return spec.mismatch(f'a SwinIR checkpoint with {what}, which is not supported (supported: classical SR, '
                         "upsampler 'pixelshuffle', and lightweight SR, 'pixelshuffledirect')")


def _read_options(state: spec.StateDict) -> dict:
    if 'conv_up1.weight' in state or 'conv_hr.weight' in state:
        raise _unsupported("upsampler 'nearest+conv' (real-world SR: conv_up1, conv_hr)")
    if 'absolute_pos_embed' in state:
        raise _unsupported('an absolute position embedding (ape=True: absolute_pos_embed)')
    if 'upsample.0.weight' not in state:
        raise _unsupported('no upsampler (x1: denoising or JPEG artefact reduction)')
    embed_dim, n_colors = spec.shape(state, 'conv_first.weight')[:2]
    depths = [spec.count(state, f'layers.{i}.residual_group.blocks.{{i}}.norm1.weight')
              for i in range(spec.count(state, 'layers.{i}.residual_group.blocks.0.norm1.weight'))]
    if not depths or not all(depths):
        raise spec.mismatch('SwinIR-like keys, but no residual group of Swin blocks from layers.0.residual_group'
                            '.blocks.0 on')
    table = [spec.shape(state, _BLOCK.format(i=i, j=0) + 'attn.relative_position_bias_table') for i in
             range(len(depths))]
    side = math.isqrt(table[0][0])
    window_size = (side + 1) // 2 if side * side == table[0][0] and side % 2 else 0
    hidden = spec.shape(state, _BLOCK.format(i=0, j=0) + 'mlp.fc1.weight')[0]
    options = dict(scale=0, n_colors=n_colors, embed_dim=embed_dim, depths='+'.join(map(str, depths)),
                   num_heads='+'.join(str(t[1]) for t in table), window_size=window_size,
                   mlp_ratio=hidden / embed_dim, upsampler='pixelshuffle' if 'conv_last.weight' in state
                   else 'pixelshuffledirect',
                   resi_connection='3conv' if 'conv_after_body.0.weight' in state else '1conv')
    up = spec.shape(state, 'upsample.0.weight')[0]
    if options['upsampler'] == 'pixelshuffledirect':
        root = math.isqrt(up // n_colors)
        options['scale'] = root if root * root * n_colors == up else 0
    elif up == 9 * UPSAMPLE_FEATS:
        options['scale'] = 3
    else:
        stages = 0
        while f'upsample.{2 * stages}.weight' in state:
            stages += 1
        options['scale'] = 2 ** stages
    masks = [k for k in state if k.endswith('.attn_mask')]
    if masks and window_size:  # the training patch: (img_size / window)^2 windows of the first shifted block
        windows = math.isqrt(state[masks[0]].shape[0])
        options['img_size'] = windows * window_size if windows * windows == state[masks[0]].shape[0] else 0
    return options


def _shapes(*, scale: int, n_colors: int, embed_dim: int, depths: str, num_heads: str, window_size: int,
            mlp_ratio: float, upsampler: str, resi_connection: str, img_size: int | None = None, **_) -> spec.Shapes:
    depths_, heads = _layers(depths, num_heads)
    dim, hidden, n = embed_dim, int(embed_dim * mlp_ratio), window_size * window_size

    def linear(prefix, c_out, c_in):
        return {prefix + 'weight': (c_out, c_in), prefix + 'bias': (c_out,)}

    def norm(prefix):
        return {prefix + 'weight': (dim,), prefix + 'bias': (dim,)}

    def conv_block(prefix):
        if resi_connection == '1conv':
            return spec.conv(prefix, dim, dim, 3)
        return {**spec.conv(prefix + '0.', dim // 4, dim, 3), **spec.conv(prefix + '2.', dim // 4, dim // 4, 1),
                **spec.conv(prefix + '4.', dim, dim // 4, 3)}

    out: spec.Shapes = {**spec.conv('conv_first.', dim, n_colors, 3), **norm('patch_embed.norm.')}
    for i, (depth, h) in enumerate(zip(depths_, heads, strict=True)):
        for j in range(depth):
            p = _BLOCK.format(i=i, j=j)
            if j % 2:
                windows = (img_size // window_size) ** 2 if img_size else 0
                out[p + 'attn_mask'] = (windows, n, n)
            out.update({**norm(p + 'norm1.'), p + 'attn.relative_position_bias_table': ((2 * window_size - 1) ** 2, h),
                        p + 'attn.relative_position_index': (n, n), **linear(p + 'attn.qkv.', 3 * dim, dim),
                        **linear(p + 'attn.proj.', dim, dim), **norm(p + 'norm2.'),
                        **linear(p + 'mlp.fc1.', hidden, dim), **linear(p + 'mlp.fc2.', dim, hidden)})
        out.update(conv_block(f'layers.{i}.conv.'))
    out.update({**norm('norm.'), **conv_block('conv_after_body.')})
    if upsampler == 'pixelshuffle':
        out.update(spec.conv('conv_before_upsample.0.', UPSAMPLE_FEATS, dim, 3))
        out.update(spec.upsampler('upsample.', scale, UPSAMPLE_FEATS))
        out.update(spec.conv('conv_last.', n_colors, UPSAMPLE_FEATS, 3))
    else:
        out.update(spec.conv('upsample.0.', scale * scale * n_colors, dim, 3))
    return out


def _assume(read: dict) -> dict:
    # The released weights run on [0, 1] images (img_range 1): rgb_range 1, not EDSR-PyTorch's 255.
    return {'rgb_range': 1}


# The released SR models: classical (SwinIR-M, 001_classicalSR_DIV2K_s48w8_SwinIR-M_x2.pth, trained on 48x48 LR
# patches) and lightweight (SwinIR-S, 002_lightweightSR_DIV2K_s64w8_SwinIR-S_x2.pth, 64x64).
CLASSICAL = dict(embed_dim=180, depths='6+6+6+6+6+6', num_heads='6+6+6+6+6+6', window_size=8, mlp_ratio=2.0,
                 img_size=48, upsampler='pixelshuffle', resi_connection='1conv')
LIGHTWEIGHT = dict(embed_dim=60, depths='6+6+6+6', num_heads='6+6+6+6', window_size=8, mlp_ratio=2.0, img_size=64,
                   upsampler='pixelshuffledirect', resi_connection='1conv')

ARCH = spec.Architecture(
    name='SwinIR',
    description='Swin Transformer for image restoration (Liang et al., ICCVW 2021), classical and lightweight SR',
    make_model=make_model,
    flags=(spec.ModelFlag('embed_dim', int, 'feature channels of the transformer'),
           spec.ModelFlag('depths', str, 'Swin blocks per residual group (RSTB), one per group: 6+6+6+6'),
           spec.ModelFlag('num_heads', str, 'attention heads per group, one per group (or one for all): 6+6+6+6'),
           spec.ModelFlag('window_size', int, 'side of the attention windows (LR pixels)'),
           spec.ModelFlag('mlp_ratio', float, 'hidden width of the MLPs, relative to embed_dim'),
           spec.ModelFlag('img_size', int, 'training patch side (LR): only sets the size of the stored attn_mask'),
           spec.ModelFlag('upsampler', str, 'reconstruction: classical SR or lightweight SR', choices=UPSAMPLERS),
           spec.ModelFlag('resi_connection', str, 'convolution(s) closing each residual group',
                          choices=RESI_CONNECTIONS),
           spec.ModelFlag('drop_path_rate', float, 'stochastic depth while training, rising to this over the blocks',
                          positive=False, changes_output=False)),
    # The classical model with the official network class's defaults for the training patch and stochastic depth.
    defaults=dict(CLASSICAL, img_size=64, drop_path_rate=0.1),
    configurations={'classical': CLASSICAL, 'lightweight': LIGHTWEIGHT},
    scales=(2, 3, 4, 8),
    demo=dict(embed_dim=30, depths='2+2', num_heads='3+3', window_size=8, mlp_ratio=2.0, img_size=32,
              upsampler='pixelshuffledirect', drop_path_rate=0.0),
    tiny=dict(embed_dim=8, depths='2', num_heads='2', window_size=4, mlp_ratio=2.0, img_size=8, drop_path_rate=0.0),
    # Windows at fixed positions of the padded image and the rolls of the shifted blocks reach over the whole
    # image: a tile's output differs from the whole image's, so tiles only get a context margin.
    local=False,
    check=_check,
    signature='layers.0.residual_group.blocks.0.attn.relative_position_bias_table',
    key_pattern=r'''conv_first\.(weight|bias) | (patch_embed\.)?norm\.(weight|bias)
        | layers\.\d+\.residual_group\.blocks\.\d+\.( attn_mask | attn\.relative_position_(bias_table|index)
                                                | (norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\.(weight|bias) )
        | (layers\.\d+\.conv|conv_after_body)\.(\d\.)?(weight|bias)
        | (conv_before_upsample\.0|upsample\.\d+|conv_last)\.(weight|bias)
        | (conv_up[12]|conv_hr)\.(weight|bias) | absolute_pos_embed''',
    read_options=_read_options,
    shapes=_shapes,
    assume=_assume,
)


# -- the network

def test_padding(size: int, window_size: int) -> int:
    """Rows (or columns) ``main_test_swinir.py`` adds to a side of ``size``: 1 to ``window_size``, a whole window
    when ``size`` is already a multiple of it."""
    return (size // window_size + 1) * window_size - size


def _mirror_indices(size, pad: int | Tensor, device: torch.device) -> Tensor:
    """Indices of ``size + pad`` rows that continue ``size`` rows by their mirror image, edge row repeated
    (``0 1 .. n-1 n-1 n-2 ..``), as the official script's concatenation with the flipped image; periodically
    for an image shorter than its padding."""
    i = torch.arange(size + pad, device=device)
    m = i % (2 * size)
    return torch.where(m < size, m, 2 * size - 1 - m)


def pad_for_test(x: Tensor, window_size: int) -> Tensor:
    """``x`` (N, C, H, W) padded at the bottom and right as ``main_test_swinir.py`` pads: by
    :func:`test_padding`, with the mirror image of the edge."""
    h, w = x.shape[-2:]
    x = x.index_select(-2, _mirror_indices(h, test_padding(h, window_size), x.device))
    return x.index_select(-1, _mirror_indices(w, test_padding(w, window_size), x.device))


def pad_for_training(x: Tensor, window_size: int) -> Tensor:
    """``x`` reflected at the bottom and right up to the next multiple of ``window_size`` (the official
    network class's ``check_image_size``); replicated where a side is too short to reflect."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % window_size, (-w) % window_size
    if not pad_h and not pad_w:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def partition(x: Tensor, window_size: int) -> Tensor:
    """(N, H, W, C) -> (N * windows, window_size^2, C): the windows in row-major order, each row-major."""
    n, h, w, c = x.shape
    x = x.view(n, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def unpartition(windows: Tensor, window_size: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`partition`: (N * windows, window_size^2, C) -> (N, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window_size: int) -> Tensor:
    """(n, n) int64, n = window_size^2: for positions p, q of a window, the row of the bias table of their offset
    ``p - q``: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``."""
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def shift_mask(h: int, w: int, window_size: int, shift: int, device: torch.device | None = None) -> Tensor:
    """(windows, n, n) float: the additive mask of the shifted windows of an ``h`` x ``w`` image.

    After rolling by ``-shift``, the last ``window_size`` rows (and columns) hold two regions, the rows
    ``[h - window_size, h - shift)`` and the ``shift`` rows rolled in from the top; every other row is region 0.
    Pairs of positions from different regions (row region x column region) get ``MASK_VALUE``, others 0.
    """
    def regions(size):
        i = torch.arange(size, device=device)
        return (i >= size - window_size).long() + (i >= size - shift).long()

    label = (regions(h)[:, None] * 3 + regions(w)[None, :]).to(torch.float32)
    windows = partition(label[None, :, :, None], window_size).squeeze(-1)
    differ = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, MASK_VALUE)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: the residual branch ``x`` of each sample dropped with probability ``p`` while training
    (the kept ones scaled by ``1 / (1 - p)``)."""
    if not training or p == 0:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) >= p
    return x * keep / (1 - p)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per head and relative offset.

    Args:
        dim: channels.
        window_size: side of the windows.
        num_heads: heads (dividing ``dim``).
    """

    def __init__(self, *, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # A constant, but a persistent buffer: the official state_dict holds it.
        self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (N * windows, n, C); ``mask`` (windows, n, n) added to the logits of each image's windows."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            logits = (logits.view(-1, windows, self.num_heads, n, n) + mask[None, :, None]).view(b, -1, n, n)
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))`` in (shifted) windows, then ``x + mlp(norm2(x))``, on (N, H, W, C) features.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: side of the windows.
        shift: 0, or half a window for the shifted blocks.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        img_size: training patch side: the size of the stored (unused) ``attn_mask`` of a shifted block.
        drop_path: stochastic depth of this block's branches while training.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, img_size: int,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size, self.shift, self.drop_path = window_size, shift, drop_path
        if shift:
            # Kept for the official state_dict only: forward computes the mask of its input's size.
            self.register_buffer('attn_mask', shift_mask(img_size, img_size, window_size, shift))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, window_size=window_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        _, h, w, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(partition(y, self.window_size), mask if self.shift else None)
        y = unpartition(y, self.window_size, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def _closing_conv(dim: int, resi_connection: str) -> nn.Module:
    """One 3x3 convolution, or ``3conv``: 3x3 to dim/4, LeakyReLU(0.2), 1x1, LeakyReLU(0.2), 3x3 back to dim."""
    if resi_connection == '1conv':
        return nn.Conv2d(dim, dim, 3, padding=1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(dim // 4, dim // 4, 1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(dim // 4, dim, 3, padding=1))


class BlockGroup(nn.Module):
    """The Swin blocks of one residual group (the official ``BasicLayer``, without a downsampling)."""

    def __init__(self, blocks: list[SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``x + conv(blocks(x))`` (the convolution on (N, C, H, W) features)."""

    def __init__(self, *, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, img_size: int,
                 resi_connection: str, drop_paths: list[float]) -> None:
        super().__init__()
        self.residual_group = BlockGroup([
            SwinBlock(dim=dim, num_heads=num_heads, window_size=window_size, shift=window_size // 2 if j % 2 else 0,
                      mlp_ratio=mlp_ratio, img_size=img_size, drop_path=drop_paths[j]) for j in range(depth)])
        self.conv = _closing_conv(dim, resi_connection)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        y = self.residual_group(x, mask).permute(0, 3, 1, 2)
        return self.conv(y).permute(0, 2, 3, 1) + x


class PatchNorm(nn.Module):
    """The official ``patch_embed`` with patch size 1: a LayerNorm of every pixel's features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class SwinIR(nn.Module):
    """The SwinIR SR network: LR (N, n_colors, h, w) in [0, rgb_range] -> SR (N, n_colors, scale*h, scale*w).

    Args:
        scale: upscaling factor (2, 3, 4 or 8).
        n_colors: 3 (RGB, the DIV2K mean subtracted) or 1 (no mean).
        rgb_range: pixel values lie in [0, rgb_range]; the network computes the same function for any.
        embed_dim: feature channels (published: 180 classical, 60 lightweight).
        depths: Swin blocks per residual group, ``'6+6+6+6+6+6'`` or a list (lightweight: four groups).
        num_heads: attention heads per group (or one count for all).
        window_size: side of the attention windows (published: 8).
        mlp_ratio: hidden width of the MLPs relative to ``embed_dim`` (published: 2).
        img_size: training patch side (published: 48 or 64): only the shape of the stored ``attn_mask``.
        upsampler: ``'pixelshuffle'`` (classical) or ``'pixelshuffledirect'`` (lightweight).
        resi_connection: ``'1conv'`` or ``'3conv'``.
        img_range: the official scaling of the mean-free input (1 for every SR model).
        drop_path_rate: stochastic depth while training, rising linearly from 0 over the blocks (official: 0.1).
    """

    # Fine-tuning from a checkpoint of another scale re-initialises these keys (see model.checkpoint.loading).
    upsampler_prefix = 'upsample.'

    def __init__(self, *, scale: int, n_colors: int = 3, rgb_range: float = 1, embed_dim: int = 180,
                 depths: str | list[int] = '6+6+6+6+6+6', num_heads: str | list[int] = '6+6+6+6+6+6',
                 window_size: int = 8, mlp_ratio: float = 2.0, img_size: int = 64, upsampler: str = 'pixelshuffle',
                 resi_connection: str = '1conv', img_range: float = 1.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        depths, heads = _layers(depths, num_heads)
        if upsampler not in UPSAMPLERS:
            raise ValueError(f'upsampler must be one of {", ".join(UPSAMPLERS)}, got {upsampler!r}')
        if resi_connection not in RESI_CONNECTIONS:
            raise ValueError(f'resi_connection must be one of {", ".join(RESI_CONNECTIONS)}, got {resi_connection!r}')
        if upsampler == 'pixelshuffle' and scale not in (2, 3, 4, 8):
            raise ValueError(f'the pixelshuffle upsampler scales by 2, 3, 4 or 8, got {scale}')
        self.scale, self.window_size = scale, window_size
        self.rgb_range, self.img_range, self.upsampler = float(rgb_range), float(img_range), upsampler
        mean = DIV2K_RGB_MEAN if n_colors == 3 else (0.0,) * n_colors
        # Kept out of the state_dict, as the official code keeps it.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, n_colors, 1, 1),
                             persistent=False)

        dim = embed_dim
        self.conv_first = nn.Conv2d(n_colors, dim, 3, padding=1)
        self.patch_embed = PatchNorm(dim)
        total = sum(depths)  # (plain Python: the network is also built on the meta device)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            start = sum(depths[:i])
            self.layers.append(RSTB(dim=dim, depth=depth, num_heads=h, window_size=window_size, mlp_ratio=mlp_ratio,
                                    img_size=img_size, resi_connection=resi_connection,
                                    drop_paths=rates[start:start + depth]))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _closing_conv(dim, resi_connection)
        if upsampler == 'pixelshuffle':
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, UPSAMPLE_FEATS, 3, padding=1),
                                                      nn.LeakyReLU(inplace=True))
            stages = [(3, 9)] if scale == 3 else [(2, 4)] * int(math.log2(scale))
            self.upsample = nn.Sequential(*[m for r, k in stages for m in (
                nn.Conv2d(UPSAMPLE_FEATS, k * UPSAMPLE_FEATS, 3, padding=1), nn.PixelShuffle(r))])
            self.conv_last = nn.Conv2d(UPSAMPLE_FEATS, n_colors, 3, padding=1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(dim, scale * scale * n_colors, 3, padding=1),
                                          nn.PixelShuffle(scale))
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """The transformer body on (N, C, H, W) features whose sides are multiples of the window."""
        _, _, h, w = x.shape
        shift = self.window_size // 2
        mask = shift_mask(h, w, self.window_size, shift, x.device).to(x.dtype) if shift else None
        x = self.patch_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_for_training(x, self.window_size) if self.training else pad_for_test(x, self.window_size)
        mean = self.mean.to(x.dtype)
        x = (x / self.rgb_range - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        if self.upsampler == 'pixelshuffle':
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        x = (x / self.img_range + mean) * self.rgb_range
        return x[..., :h * self.scale, :w * self.scale]


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: linear layers truncated normal (std 0.02) with zero bias, LayerNorms 1 and 0;
    convolutions keep PyTorch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
