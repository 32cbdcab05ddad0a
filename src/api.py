"""Python API: a checkpoint in, a network out; a numpy image in, its super-resolved version out.

    import sys; sys.path.insert(0, 'src')
    from api import load_pretrained, upscale
    net = load_pretrained('LCoAN_x4.pt')            # architecture and options read from the weights
    sr = upscale(net, imageio.v3.imread('in.png'))  # uint8/uint16 HWC (or HW) in, same type out

Gray images run through an RGB network as three equal channels (the output is their mean); an RGB
image through a 1-channel network runs on its Y channel, Cb and Cr are upscaled bicubically. An
alpha channel is upscaled bicubically and put back.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import option
from core import distributed
from core.errors import UserError
from model import checkpoint_io, detect, inference, registry
from training import run_flags

PRECISIONS = inference.PRECISIONS
# ITU-R BT.601 as MATLAB's rgb2ycbcr, on [0, 1] values: rows give Y, Cb, Cr.
_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


def parse_args(argv=None):
    """``main.py``'s options from the command line ``argv``: parsed, the model options not given read from
    a ``--pre_train`` checkpoint, or the network ``--load <run> --test_only`` evaluates
    (``args.pre_train_detected`` says what was read), checked, and on a
    device (CUDA unless ``--cpu`` or there is none; ``args.device_note`` says when CUDA was missing)."""
    args = option.parse(argv)
    weights = run_flags.evaluated_weights(args)  # --load <run> --test_only: the run's network file
    args.pre_train_detected = (detect.apply_pre_train(args, weights, f'--load {args.load} --test_only:') if weights
                               else detect.apply_pre_train(args))
    option.finalize(args)
    args.device_note = distributed.select_device(args)
    return args


def load_pretrained(path: str | Path, *, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """The network stored in ``path``, in eval mode on ``device`` (default: the GPU if there is one).

    Architecture and options are detected from the weights (``model.detect``); ``overrides`` set
    options by their flag name (``window_size=96``, ``attention_impl='reference'``), as on the
    command line. A checkpoint is loaded only when it fits exactly (no fresh upsampler).

    The returned network carries ``net.sr_args`` (the resolved options: ``model, scale, n_colors,
    rgb_range`` ...) for :func:`upscale`.

    Raises:
        UserError: missing or unreadable file, unknown checkpoint, an override that contradicts it.
        TypeError: an override that is no option.
    """
    path = Path(path)
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available()
                                                                            else 'cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'device {device}: CUDA is not available')
    for key in ('pre_train', 'cpu', 'model'):
        if key in overrides:
            raise TypeError(f'load_pretrained: unknown option {key!r}')
    state, detected = detect.read_checkpoint(path, what='weights')
    scale = overrides.get('scale')
    if scale is not None and int(scale) != detected.scale:
        raise UserError(f'scale {scale} requested, but {path} is a x{detected.scale} {detected.model} checkpoint')
    options = {**detected.options, **detected.assumed, **overrides, 'cpu': device.type == 'cpu'}
    try:
        args = option.for_model(detected.model, **options)
    except TypeError as e:
        raise TypeError(f'load_pretrained: {e}') from None
    net = registry.get(args.model).make_model(args)
    checkpoint_io.load_into(net, state, source=f'weights {path}', log=lambda _: None, allow_new_upsampler=False)
    net.sr_args = args
    net.sr_detected = detected
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


def super_resolve(net: nn.Module, lr: Tensor, *, tile: int | None = None, halo: int | None = None,
                  self_ensemble: bool = False, precision: str = 'single',
                  progress: Callable | None = None) -> Tensor:
    """SR of ``lr`` (1, n_colors, h, w) in [0, rgb_range] on the CPU; returns float32 on the CPU.

    ``tile`` None: automatic (:func:`choose_tile`); ``halo`` None: the model's default
    (:func:`inference.default_halo`, exact for convolutional models).
    """
    args = net.sr_args
    forward = make_forward(net, self_ensemble=self_ensemble, precision=precision)
    if halo is None:
        halo = inference.default_halo(net, registry.get(args.model).local)[0]
    if tile is None:
        tile = (choose_tile(net, forward, args.n_colors, (precision, self_ensemble))
                if max(lr.shape[-2:]) > inference.MIN_TILE else inference.MIN_TILE)
    h, w = lr.shape[-2:]
    return inference.tiled_forward(forward, lr, scale=args.scale[0], rows=inference.halo_spans(h, tile, halo),
                                   cols=inference.halo_spans(w, tile, halo), device=next(net.parameters()).device,
                                   progress=progress)


def _bicubic(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)


def upscale(net: nn.Module, image: np.ndarray, *, tile: int | None = None, halo: int | None = None,
            self_ensemble: bool = False, precision: str = 'single', progress: Callable | None = None) -> np.ndarray:
    """Super-resolve a uint8 or uint16 image, HW (gray) or HWC with 1-4 channels; returns the same type and layout.

    Args:
        net: from :func:`load_pretrained`.
        image: gray (HW or HWx1), gray + alpha, RGB or RGBA.
        tile, halo: LR tile size and context (None: automatic, see :func:`super_resolve`).
        self_ensemble: average over the 8 flips/transposes.
        precision: 'single', 'half' or 'bf16' (autocast).
        progress: wraps the list of tiles (e.g. ``tqdm``) when the image is tiled.
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
    colour = torch.from_numpy(hwc[:, :, :3 if channels >= 3 else 1].astype(np.float32)).permute(2, 0, 1)[None] / peak
    alpha = torch.from_numpy(hwc[:, :, -1:].astype(np.float32)).permute(2, 0, 1)[None] / peak \
        if channels in (2, 4) else None

    def run(x: Tensor) -> Tensor:  # [0, 1] in and out
        return super_resolve(net, x * rgb_range, tile=tile, halo=halo, self_ensemble=self_ensemble,
                             precision=precision, progress=progress) / rgb_range

    if colour.shape[1] == args.n_colors:
        sr = run(colour)
    elif args.n_colors == 3:  # gray through an RGB network
        sr = run(colour.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
    else:  # RGB through a Y network: Y super-resolved, Cb/Cr bicubic
        ycc = torch.einsum('ij,njhw->nihw', _YCBCR, colour) + _YCBCR_OFFSET.view(1, 3, 1, 1)
        ycc = torch.cat([run(ycc[:, :1]), _bicubic(ycc[:, 1:], scale)], dim=1)
        sr = torch.einsum('ij,njhw->nihw', torch.linalg.inv(_YCBCR), ycc - _YCBCR_OFFSET.view(1, 3, 1, 1))
    if alpha is not None:
        sr = torch.cat([sr, _bicubic(alpha, scale)], dim=1)
    out = (sr.clamp(0, 1) * peak).round()[0].permute(1, 2, 0).numpy().astype(image.dtype)
    return out[:, :, 0] if image.ndim == 2 else out
