"""Convert a checkpoint between formats and layouts: ``python src/convert.py IN OUT [--layout L]``.

``IN`` is any checkpoint detection reads (ours, the official releases, RCAN's without ``a``,
BasicSR's ``params``/``params_ema``, spandrel's RCAN, ``.pt`` or ``.safetensors``; super-image's EDSR
and RCAN, which run on [0, 1] images, with ``--from super-image``). ``OUT`` is written by its
extension, ``.safetensors`` or ``.pt``/``.pth``/``.ckpt`` (a plain ``state_dict`` that
``torch.load(..., weights_only=True)`` reads), with contiguous tensors, in the layout ``--layout`` names:

- ``ours`` (default): this code's keys, which are the official code's;
- ``spandrel``: ours without the placeholder ``a`` that spandrel's own RCAN refuses (the others
  load in spandrel through ``src/model/spandrel_support.py``);
- ``basicsr``: BasicSR's key names (its EDSR and RCAN), without the mean shift that BasicSR
  applies itself (the line printed gives its ``network_g`` options, ``img_range`` included).

The file is written next to ``OUT`` under a temporary name, read back the way ``IN`` was read,
and run on a small input beside the network of ``IN``; only if both give the same output does it
replace ``OUT``. A bad input, an unknown checkpoint or a failed check prints one line naming the
file (exit status 2) and leaves ``OUT`` as it was.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

import api
from core.errors import UserError, run_entry_point
from core.io_utils import SAFETENSORS_SUFFIX, TORCH_SUFFIXES, save_weights
from model import checkpoint, registry
from model.checkpoint import Detected, layouts
from model.spec import PLACEHOLDER_KEYS, UnknownCheckpoint, rgb_range_of

LAYOUTS = ('ours', 'spandrel', 'basicsr')
# The verification input: LR pixels per side, and the largest difference accepted (relative to rgb_range).
CHECK_SIZE = 24
CHECK_TOLERANCE = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Convert a checkpoint (architecture detected) to .pt or .safetensors, '
                                            'in our, spandrel\'s or BasicSR\'s layout; the result is verified.')
    p.add_argument('input', metavar='IN', help='a checkpoint: .pt/.pth (plain or wrapped state_dict) or .safetensors')
    p.add_argument('output', metavar='OUT', help=f'the file to write: {SAFETENSORS_SUFFIX} or '
                                                 f'{"/".join(TORCH_SUFFIXES)}, by its extension')
    p.add_argument('--layout', choices=LAYOUTS, default='ours', help='key names of OUT (default: ours)')
    p.add_argument('--from', dest='source', default=None, metavar='LAYOUT',
                   help="read IN as this layout, for one its weights do not reveal: 'super-image' (its EDSR and "
                        'RCAN run on [0, 1] images, the EDSR without its mean shift)')
    p.add_argument('--overwrite', action='store_true', help='replace OUT if it exists')
    api.add_model_flags(p)
    return p.parse_args(argv)


def out_state(state: dict, detected: Detected, net: torch.nn.Module, layout: str) -> dict:
    """``state`` (our layout, as read) in ``layout``; placeholders the network has are filled from it; a layout
    that stores options outside its weights gets the network's own (``net.sr_args``: flags, the run's config.txt)."""
    own = net.state_dict()
    ours = {k: state[k] if k in state else own[k] for k in own}
    if layout == 'ours':
        return ours
    if layout == 'spandrel':
        return {k: v for k, v in ours.items() if k not in PLACEHOLDER_KEYS}
    found = [lay for lay in registry.get(detected.model).layouts if lay.name == layout and lay.from_ours]
    if not found:
        raise UserError(f'--layout {layout}: no {layout} layout of {detected.model} is known')
    if rgb_range_of(ours) is None or ours['add_mean.bias'].numel() != 3:
        raise UserError(f'--layout {layout}: its network subtracts the DIV2K mean of 3 colours itself, but this '
                        'checkpoint holds another mean shift')
    return found[0].from_ours(ours, _options(detected, net))


def _options(detected: Detected, net: torch.nn.Module) -> dict:
    """The network's options by name: those the weights record, the rest as resolved for ``net``."""
    return {**detected.options, **{k: getattr(net.sr_args, k) for k in detected.assumed}}


def _output(net: torch.nn.Module, lr: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)  # NLSN draws random hash rotations in every forward
    with torch.no_grad():
        return net(lr.clone())


def verify(path: Path, net: torch.nn.Module, detected: Detected, layout: str) -> float:
    """Read ``path`` back as a user would and return the largest output difference to ``net``'s.

    Raises:
        UserError: it reads as another model or configuration, or its output differs.
    """
    args = net.sr_args
    rgb_range = float(args.rgb_range)
    given = {'rgb_range': args.rgb_range, **{k: getattr(args, k) for k in detected.assumed if hasattr(args, k)}}
    written = checkpoint.read(path, what='written file', given=given)
    again = written.detected

    def shapes(found):  # what the weights hold; rgb_range is checked by the output
        return found.model, {k: v for k, v in found.options.items() if k != 'rgb_range'}

    if shapes(again) != shapes(detected):
        raise UserError(f'{path}: reads back as {again.describe()}, not as {detected.describe()}')
    back = api.build(written, device='cpu', **given)
    lr = torch.rand(1, args.n_colors, CHECK_SIZE, CHECK_SIZE, generator=torch.Generator().manual_seed(0)) * rgb_range
    difference = float((_output(back, lr) - _output(net, lr)).abs().max())
    if not difference <= CHECK_TOLERANCE * rgb_range:
        raise UserError(f'{path}: the written weights give another output (max |difference| {difference:.3g} on '
                        f'a {CHECK_SIZE}x{CHECK_SIZE} input); not written')
    return difference


def convert(args: argparse.Namespace) -> int:
    src, out = Path(args.input), Path(args.output)
    overrides = api.model_overrides(args)
    if out.suffix not in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES):
        raise UserError(f'{out}: the extension says the format: {SAFETENSORS_SUFFIX} or {", ".join(TORCH_SUFFIXES)}')
    if out.is_dir():
        raise UserError(f'{out}: a folder; give the file to write (e.g. {out / src.with_suffix(out.suffix).name})')
    if out.exists() and not args.overwrite:
        raise UserError(f'{out} exists; give --overwrite to replace it')
    if not out.parent.is_dir():
        raise UserError(f'{out}: the folder {out.parent} does not exist')
    if args.source is not None and args.source not in layouts.layouts():
        raise UserError(f'--from {args.source!r}: allowed: {", ".join(layouts.layouts())}')
    try:
        ckpt = checkpoint.read(src, what='checkpoint', given=overrides, layout=args.source)
    except UnknownCheckpoint as e:
        raise UserError(str(e)) from None
    detected = ckpt.detected
    net = api.build(ckpt, device='cpu', **overrides)
    print(net.sr_options)
    written = out_state(ckpt.state, detected, net, args.layout)
    tmp = out.with_name(f'.{out.stem}.convert-{os.getpid()}{out.suffix}')
    try:
        try:
            save_weights(written, tmp)
        except OSError as e:
            raise UserError(f'cannot write {out}: {e.strerror or e}') from None
        difference = verify(tmp, net, detected, args.layout)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    kind = 'safetensors' if out.suffix == SAFETENSORS_SUFFIX else 'torch.save'
    print(f'{out}: {len(written)} tensors in the {args.layout} layout ({kind}); read back, the same output '
          f'(max |difference| {difference:.3g} on a {CHECK_SIZE}x{CHECK_SIZE} input).')
    _print_how_to_load(out, detected, net, args.layout)
    return 0


def _print_how_to_load(out: Path, detected: Detected, net: torch.nn.Module, layout: str) -> None:
    if layout == 'basicsr':
        lay = next(lay for lay in registry.get(detected.model).layouts if lay.name == layout)
        if lay.load_there is not None:
            options = {**_options(detected, net), 'rgb_range': net.sr_args.rgb_range}
            print(f'In BasicSR: {lay.load_there(options)} (img_range is not stored in the weights).')
    elif layout == 'spandrel':
        print(f'In spandrel: spandrel.ModelLoader().load_from_file({str(out)!r}); for an architecture spandrel '
              'lacks, call model.spandrel_support.register() first (src/ on sys.path).')


def main(argv=None) -> int:
    return run_entry_point(lambda: convert(parse_args(argv)))


if __name__ == '__main__':
    sys.exit(main())
