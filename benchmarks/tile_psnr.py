"""What tiled inference costs in PSNR: a checkpoint on benchmark sets, whole images vs tiles.

    python benchmarks/tile_psnr.py --weights W.pt --dir ../shared/data/benchmark --sets Set5+Set14 --tiles 64+128
    (the options the weights do not record come from the run's config.txt beside them; --window_size /
    --chunk_size override them, e.g. for weights without their run folder)

For every set: mean PSNR (Y, ``scale`` pixels shaved, as the benchmark tables) of ``api.upscale``
on the whole LR images, at the automatic (default) tile of this machine, and at each forced
``--tiles`` size (LR pixels, context included, default halo), with the difference to whole images.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

import api  # noqa: E402
import metrics  # noqa: E402
import upscale  # noqa: E402
from core.errors import show_warnings_plainly  # noqa: E402
from model import inference, registry  # noqa: E402


def psnr(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    def tensor(a):
        a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a
        return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]
    return metrics.calc_psnr(tensor(sr), tensor(hr[:sr.shape[0], :sr.shape[1]]), scale, 255)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', required=True)
    p.add_argument('--dir', default='../shared/data/benchmark')
    p.add_argument('--sets', default='Set5+Set14')
    p.add_argument('--tiles', default='64+128')
    p.add_argument('--cpu', action='store_true')
    p.add_argument('--window_size', type=int, help="LCoAN's window, if not the published 384 (not in the weights)")
    p.add_argument('--chunk_size', type=int, help="NLSN's chunk, if not the published 144 (not in the weights)")
    args = p.parse_args()
    show_warnings_plainly()  # a tile raised to fit the halo, centroids never initialised: one line each
    overrides = {k: v for k, v in (('window_size', args.window_size), ('chunk_size', args.chunk_size)) if v}
    net = api.load_pretrained(args.weights, device='cpu' if args.cpu or not torch.cuda.is_available() else 'cuda',
                              **overrides)
    scale = net.sr_args.scale[0]
    halo, exact = inference.default_halo(net, registry.get(net.sr_args.model).local)
    auto = api.choose_tile(net, api.make_forward(net), net.sr_args.n_colors, ('single', False))
    print(net.sr_options)
    print(f'default halo {halo} LR px ({"exact" if exact else "context only"}); automatic tile here: {auto} LR px')
    tiles = [('whole', 10 ** 9), (f'auto ({auto})', None)] + [(str(t), int(t)) for t in args.tiles.split('+')]
    print('set    | ' + ' | '.join(f'{name:>13}' for name, _ in tiles))
    for name in args.sets.split('+'):
        folder = Path(args.dir) / name
        scores = {label: [] for label, _ in tiles}
        n_tiled = 0
        for lr_path in sorted((folder / 'LR_bicubic' / f'X{scale}').glob('*.png')):
            lr = upscale.read_image(lr_path)
            hr = upscale.read_image(folder / 'HR' / lr_path.name.replace(f'x{scale}.png', '.png'))
            n_tiled += max(lr.shape[:2]) > auto
            for label, tile in tiles:
                scores[label].append(psnr(api.upscale(net, lr, tile=tile), hr, scale))
        base = float(np.mean(scores['whole']))
        cells = [f'{base:13.3f}'] + [f'{np.mean(v):7.3f} ({np.mean(v) - base:+.3f})'
                                     for label, v in scores.items() if label != 'whole']
        print(f'{name:6} | ' + ' | '.join(cells) + f'   ({n_tiled} of {len(scores["whole"])} images tiled at auto)')


if __name__ == '__main__':
    main()
