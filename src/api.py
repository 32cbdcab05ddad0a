"""Python API: a checkpoint in, a network out; a numpy image in, its super-resolved version out.

    import sys; sys.path.insert(0, 'src')
    from api import load_pretrained, upscale
    net = load_pretrained('LCoAN_x4.pt')            # architecture and options read from the weights
    print(net.sr_options)                           # ... the rest from its run's config.txt, or published
    sr = upscale(net, imageio.v3.imread('in.png'))  # uint8/uint16 HWC (or HW) in, same type out

Gray images run through an RGB network as three equal channels (the output is their mean); an RGB
image through a 1-channel network runs on its Y channel, Cb and Cr are upscaled bicubically. An
alpha channel is upscaled bicubically and put back.
"""

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import rng
from core.errors import UserError
from model import checkpoint, inference, registry

# ITU-R BT.601 as MATLAB's rgb2ycbcr, on [0, 1] values: rows give Y, Cb, Cr.
_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


# upscale.py and load_pretrained's default seed for networks that draw random numbers (NLSN's hashing): main.py's.
DEFAULT_SEED = 1


def add_model_flags(parser) -> None:
    """The options that change a network's output, as flags (``upscale.py``, ``export.py``): every model flag of
    the registry and ``--rgb_range``; the values given override the checkpoint's (see :func:`model_overrides`)."""
    group = parser.add_argument_group(
        'options the weights may not record',
        'Default: from the config.txt of the run that saved the weights (beside them, or above their model/ '
        'folder), else the published value; the first line printed says which value came from where.')
    group.add_argument('--rgb_range', type=int, help='pixel values the network works on: [0, rgb_range]')
    for name, users in registry.model_flags().items():
        used = [(arch, flag) for arch, flag in users if flag.changes_output]
        if used:
            group.add_argument(f'--{name}', type=used[0][1].type,
                               help='; '.join(f'{arch.name}: {flag.help}' for arch, flag in used))


def model_overrides(args) -> dict[str, Any]:
    """The flags of :func:`add_model_flags` given in ``args``, for :func:`load_pretrained`."""
    flags = registry.model_flags().items()
    names = ['rgb_range'] + [name for name, users in flags if any(flag.changes_output for _, flag in users)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def load_pretrained(path: str | Path, *, device: str | torch.device | None = None, layout: str | None = None,
                    **overrides) -> nn.Module:
    """The network stored in ``path``, in eval mode on ``device`` (default: the GPU if there is one).

    Architecture and options are detected from the weights (:func:`model.checkpoint.read`); the options they do
    not record (``window_size``, ``res_scale``, ``rgb_range`` without a mean shift ...) come from ``overrides``, else
    from the config.txt of the run that saved them (beside the file, or above its ``model/`` folder), else
    the published values. ``overrides`` set options by their flag name (``window_size=96``,
    ``attention_impl='reference'``), as on the command line. A checkpoint is loaded only when it fits exactly
    (no fresh upsampler). ``layout`` reads the file as another code base's layout that its weights do not
    reveal (``'super-image'``); the recognisable ones (BasicSR's) are read without it.

    The returned network carries ``net.sr_args`` (the resolved options: ``model, scale, n_colors,
    rgb_range`` ...) for :func:`upscale`, ``net.sr_detected`` (what the weights record),
    ``net.sr_options`` (one line: which value came from where) and ``net.sr_seed`` (the ``--seed`` of the run
    that saved the weights, which its evaluation drew a random network's numbers after; else main.py's default).

    Raises:
        UserError: missing or unreadable file, unknown checkpoint, an override that contradicts it.
        TypeError: an override that is no option.
    """
    ckpt = checkpoint.read(path, what='weights', given=overrides, layout=layout)
    return build(ckpt, device=device, **overrides)


def build(ckpt: checkpoint.Checkpoint, *, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """The network of ``ckpt`` (read with ``given=overrides``) holding its weights, as :func:`load_pretrained`
    returns it."""
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available()
                                                                            else 'cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'device {device}: CUDA is not available')
    for key in ('pre_train', 'cpu', 'model'):
        if key in overrides:
            raise TypeError(f'load_pretrained: unknown option {key!r}')
    detected = ckpt.detected
    scale, rgb_range = overrides.get('scale'), overrides.get('rgb_range')
    if scale is not None and int(scale) != detected.scale:
        raise UserError(f'scale {scale} requested, but {ckpt.source} is a x{detected.scale} {detected.model} '
                        'checkpoint')
    if rgb_range is not None and ckpt.records_other('rgb_range', rgb_range):
        raise UserError(f'rgb_range {rgb_range} requested, but {ckpt.source} records rgb_range='
                        f'{detected.options["rgb_range"]} (in its mean shift)')
    options = {k: v for k, v in {**ckpt.options, **overrides}.items() if k != 'model'}
    try:
        net = registry.build(detected.model, **options)
    except TypeError as e:
        raise TypeError(f'load_pretrained: {e}') from None
    ckpt.load_into(net, log=lambda _: None, allow_new_upsampler=False)
    net.sr_detected = detected
    net.sr_seed = ckpt.seed if ckpt.seed is not None else DEFAULT_SEED
    net.sr_options = ckpt.description
    return net.to(device).eval()


def make_forward(net: nn.Module, *, self_ensemble: bool = False, precision: str = 'single') -> inference.Forward:
    """The network as a function of an LR tensor: no gradients, ``precision`` autocast, optional x8 ensemble."""
    return inference.make_forward(net, precision=precision, ensemble=self_ensemble)


def choose_tile(net: nn.Module, forward: inference.Forward, n_colors: int, key: tuple = ()) -> int:
    """The automatic tile: the largest that fits half the free memory of the network's device.

    The network's memory per pixel is measured once per ``key`` (precision, ensemble) and cached on it.
    """
    device = next(net.parameters()).device
    cache = net.__dict__.setdefault('sr_bytes_per_pixel', {})
    if key not in cache:
        cache[key] = inference.peak_bytes_per_pixel(forward, n_colors, device)
    return inference.auto_tile(cache[key], inference.available_memory(device))


def fit_tiling(net: nn.Module, tile: int | None, halo: int | None) -> tuple[int | None, int]:
    """``(tile, halo)`` for ``net``: ``halo`` None is the model's default (:func:`inference.default_halo`, exact for
    convolutional models); a ``tile`` too small to keep a core inside that halo is raised to the smallest that
    does (:func:`inference.min_tile`), with one warning."""
    if halo is None:
        halo = inference.default_halo(net, registry.get(net.sr_args.model).local)[0]
    smallest = inference.min_tile(halo)
    if tile is not None and tile < smallest:
        warnings.warn(f'--tile {tile} is too small for a context of {halo} LR pixels on each side (--tile_halo): '
                      f'using --tile {smallest}, the smallest that keeps a core of {inference.MIN_CORE} pixels; '
                      'a smaller --tile_halo allows smaller tiles, with visible seams', stacklevel=2)
        tile = smallest
    return tile, halo


def super_resolve(net: nn.Module, lr: Tensor, *, tile: int | None = None, halo: int | None = None,
                  self_ensemble: bool = False, precision: str = 'single', progress: Callable | None = None,
                  seed: int | None = DEFAULT_SEED) -> Tensor:
    """SR of ``lr`` (1, n_colors, h, w) in [0, rgb_range] on the CPU; returns float32 on the CPU.

    ``tile`` None: automatic (:func:`choose_tile`); ``halo`` None: the model's default (see :func:`fit_tiling`).
    A network that draws random numbers (NLSN's hashing) draws them after ``seed`` (None: from the generators
    as they are), so its output does not change from run to run; the caller's generators are left as they were.
    """
    args = net.sr_args
    forward = make_forward(net, self_ensemble=self_ensemble, precision=precision)
    tile, halo = fit_tiling(net, tile, halo)
    if tile is None:
        auto = (choose_tile(net, forward, args.n_colors, (precision, self_ensemble))
                if max(lr.shape[-2:]) > inference.MIN_TILE else inference.MIN_TILE)
        tile = max(auto, inference.min_tile(halo))
    h, w = lr.shape[-2:]
    device = next(net.parameters()).device
    with rng.seeded(seed, device):
        return inference.tiled_forward(forward, lr, scale=args.scale[0], rows=inference.halo_spans(h, tile, halo),
                                       cols=inference.halo_spans(w, tile, halo), device=device, progress=progress)


def _bicubic(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)


def upscale(net: nn.Module, image: np.ndarray, *, tile: int | None = None, halo: int | None = None,
            self_ensemble: bool = False, precision: str = 'single', progress: Callable | None = None,
            seed: int | None = DEFAULT_SEED) -> np.ndarray:
    """Super-resolve a uint8 or uint16 image, HW (gray) or HWC with 1-4 channels; returns the same type and layout.

    An 8-bit RGB image through an RGB network gives the pixels of ``main.py --save_results``: the image goes in
    as the data loader feeds it (``x * rgb_range / 255``) and comes out rounded as the results are.

    Args:
        net: from :func:`load_pretrained`.
        image: gray (HW or HWx1), gray + alpha, RGB or RGBA.
        tile, halo: LR tile size and context (None: automatic, see :func:`super_resolve`).
        self_ensemble: average over the 8 flips/transposes.
        precision: 'single', 'half' or 'bf16' (autocast).
        progress: wraps the list of tiles (e.g. ``tqdm``) when the image is tiled.
        seed: the seed of a network that draws random numbers (see :func:`super_resolve`).
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f'upscale: expected a uint8 or uint16 image, got {image.dtype}')
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise TypeError(f'upscale: expected an HW or HWC image with 1-4 channels, got shape {image.shape}')
    args = net.sr_args
    scale, rgb_range = args.scale[0], float(args.rgb_range)
    peak = float(np.iinfo(image.dtype).max)
    hwc = image[:, :, None] if image.ndim == 2 else image
    channels = hwc.shape[2]

    def planes(x: np.ndarray, top: float) -> Tensor:  # (h, w, c) -> float32 (1, c, h, w) in [0, top], as data.common
        return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32, order='C'))[None].mul_(top).div_(peak)

    def run(x: Tensor) -> Tensor:  # [0, rgb_range] in and out
        return super_resolve(net, x, tile=tile, halo=halo, self_ensemble=self_ensemble, precision=precision,
                             progress=progress, seed=seed)

    colour = planes(hwc[:, :, :3 if channels >= 3 else 1], rgb_range)
    if colour.shape[1] == args.n_colors:
        sr = run(colour)
    elif args.n_colors == 3:  # gray through an RGB network
        sr = run(colour.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
    else:  # RGB through a Y network: Y super-resolved, Cb/Cr bicubic (in [0, 1])
        ycc = torch.einsum('ij,njhw->nihw', _YCBCR, colour / rgb_range) + _YCBCR_OFFSET.view(1, 3, 1, 1)
        ycc = torch.cat([run(ycc[:, :1] * rgb_range) / rgb_range, _bicubic(ycc[:, 1:], scale)], dim=1)
        sr = torch.einsum('ij,njhw->nihw', torch.linalg.inv(_YCBCR), ycc - _YCBCR_OFFSET.view(1, 3, 1, 1)) * rgb_range
    parts = [sr.mul_(peak / rgb_range).clamp_(0, peak).round_()]  # as metrics.quantize and the saved results
    if channels in (2, 4):  # alpha: bicubic
        parts.append(_bicubic(planes(hwc[:, :, -1:], 1.0), scale).mul_(peak).clamp_(0, peak).round_())
    out = torch.cat(parts, dim=1)[0].permute(1, 2, 0).numpy().astype(image.dtype)
    return out[:, :, 0] if image.ndim == 2 else out
