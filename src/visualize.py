"""See what LCoA learns on one image: cluster maps, attention maps and cluster statistics.

Usage (from the repository root or from ``src/``)::

    python src/visualize.py --weights X.pt --image IMG -o DIR [--pixel y,x ...] [model flags]

The image is the network's (LR) input (any size, down to one pixel). The model is built as
``main.py --pre_train`` builds it: architecture and options from the weights, the options they do
not record from the config.txt of the run that saved them, the model flags of ``main.py`` given
(``--template demo``, ``--window_size 96`` ...) winning; ``--weights`` is loaded into it strictly.
Writes into DIR:

* ``clusters.png``: the image beside one map per k-means round, each LR pixel coloured by its cluster;
* ``cluster_patches.png``: example patches of the largest clusters (one row per cluster);
* ``attention_y<y>_x<x>.png`` per pixel (``--pixel``, or ``--n_pixels`` chosen automatically where
  the image is most textured): the weight that pixel's output takes from every pixel through the
  sparse pattern (rounds combined), on the image, with the weight on itself in the title;
* ``cluster_stats.png``: cluster sizes, sorted, and the share of attention windows whose members
  come from more than one cluster, per round;
* ``overview.png``: image, cluster map, one attention map and the sizes in one figure;
* ``statistics.txt``: the numbers behind the figures.

``--model NLSN`` with an NLSN checkpoint shows NLSN's LSH buckets the same way (its first attention
module's buckets and chunks; one random hashing, drawn after ``--seed``), for comparison.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, PowerNorm
from matplotlib.figure import Figure
from torch import Tensor, nn

if __package__ in (None, ''):  # run as a script: make src/ importable like main.py does
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import option  # noqa: E402
from core.errors import UserError, run_entry_point  # noqa: E402
from data.common import read_image  # noqa: E402
from model import checkpoint, registry  # noqa: E402
from model.blocks import lcoa_stats
from model.blocks import sparse_attention_reference as reference  # noqa: E402
from model.blocks.lcoa import LearnableCollaborativeAttention  # noqa: E402

PATCH = 9  # side of the example patches, in LR pixels
NLSN_MAX_BUCKETS = 128  # official NLSN: min(L // chunk_size rounded up to even, 128) buckets
DPI = 90


@dataclass
class Capture:
    """What the first attention module of one forward pass saw.

    Attributes:
        codes: (R, L) cluster (or LSH bucket) of every pixel per round.
        pattern: the sparse pattern the module attended with.
        n_clusters: clusters (buckets) per round.
        window: positions per attention window (chunk).
        kind: 'k-means cluster' or 'LSH bucket'.
    """

    codes: Tensor
    pattern: object
    n_clusters: int
    window: int
    kind: str


# ---------------------------------------------------------------------------------------------
# model and capture


def build_model(args: argparse.Namespace, weights: Path, log=print) -> nn.Module:
    """The network of ``args`` with ``weights`` loaded, in eval mode on the CPU.

    ``args`` comes from :func:`option.parse_main_args` with ``--pre_train weights``, so the architecture
    flags not given on the command line are already those detected from the checkpoint (and its run's config.txt),
    and ``args.checkpoint`` holds the weights it read (None for a file that does not exist: read here, naming it).
    """
    net = registry.get(args.model).make_model(args)
    ckpt = args.checkpoint if args.checkpoint is not None else checkpoint.read(weights, what='--weights',
                                                                                   recognise=False)
    ckpt.load_into(net, log=log, allow_new_upsampler=False)
    return net.eval()


@torch.no_grad()
def capture_lcoa(net: nn.Module, lr: Tensor) -> Capture:
    """Run ``net`` on ``lr`` (1, C, h, w) and keep the codes and pattern of its first LCoA module
    (the module that builds the pattern every later group reuses)."""
    module = next((m for m in net.modules() if isinstance(m, LearnableCollaborativeAttention)), None)
    if module is None:
        raise UserError(f'{type(net).__name__} has no learnable collaborative attention to show')
    seen: dict = {}

    def keep_codes(_module, _inputs, codes):
        seen.setdefault('codes', codes)

    def keep_pattern(_module, _inputs, output):
        seen.setdefault('pattern', output[1])

    hooks = [module.kmeans.register_forward_hook(keep_codes), module.register_forward_hook(keep_pattern)]
    try:
        net(lr)
    finally:
        for h in hooks:
            h.remove()
    return Capture(seen['codes'][0], seen['pattern'], module.kmeans.n_clusters, module.window_size, 'k-means cluster')


@torch.no_grad()
def capture_nlsn(net: nn.Module, lr: Tensor) -> Capture:
    """Run ``net`` on ``lr`` and keep the LSH buckets of its first ``NonLocalSparseAttention``.

    Follows the official NLSN attention: per round, the bucket is the argmax over ``[xR, -xR]`` of the
    matching embedding ``x`` rotated by a random ``R`` (``hash_buckets / 2`` columns), codes are offset
    by ``round * hash_buckets`` and sorted (not stably) by ``torch.sort``; chunks of ``chunk_size``
    attend to themselves and both neighbours. The pattern is rebuilt with the reference attention from
    the module's own embedding, with each position's rank in that sort as its code, so its windows are
    exactly the module's chunks.
    """
    from model.blocks.nlsa import NonLocalSparseAttention
    module = next((m for m in net.modules() if isinstance(m, NonLocalSparseAttention)), None)
    if module is None:
        raise UserError(f'{type(net).__name__} has no non-local sparse attention to show')
    seen: dict = {}
    original = module.hash_codes

    def hash_codes(match: Tensor) -> Tensor:
        codes = original(match)
        seen.setdefault('match', match)
        seen.setdefault('codes', codes)
        return codes

    module.hash_codes = hash_codes
    try:
        net(lr)
    finally:
        del module.hash_codes
    match, offset_codes = seen['match'], seen['codes']
    n, length, _ = match.shape
    rounds = module.n_hashes
    chunks = length // module.chunk_size
    n_buckets = min(chunks + chunks % 2, NLSN_MAX_BUCKETS)  # the official count; 0 below one chunk (no hashing)
    order = offset_codes.sort(dim=-1).indices.view(n, rounds, length) % length  # the module's own sort
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(length).expand_as(order))
    pattern = reference.build_pattern(match.float(), rank, min(module.chunk_size, length))
    if n_buckets == 0:
        buckets = torch.zeros(rounds, length, dtype=torch.long)
    else:
        buckets = offset_codes.view(n, rounds, length)[0] - torch.arange(rounds).view(-1, 1) * n_buckets
    return Capture(buckets, pattern, max(n_buckets, 1), min(module.chunk_size, length), 'LSH bucket')


def capture(net: nn.Module, lr: Tensor) -> Capture:
    """The first sparse-attention module's pattern: LCoA's k-means clusters or NLSA's LSH buckets."""
    from model.blocks.nlsa import NonLocalSparseAttention
    if any(isinstance(m, NonLocalSparseAttention) for m in net.modules()):
        return capture_nlsn(net, lr)
    return capture_lcoa(net, lr)


# ---------------------------------------------------------------------------------------------
# choosing pixels


def parse_pixel(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(','))
    except ValueError:
        raise UserError(f'--pixel {text!r}: expected y,x (row, column of the input image), e.g. 40,62') from None
    return y, x


def textured_pixels(image: np.ndarray, count: int) -> list[tuple[int, int]]:
    """``count`` pixels where the luminance varies most locally, spread apart (image (h, w, 3) uint8)."""
    h, w = image.shape[:2]
    y = torch.from_numpy(image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    # torch.gradient needs two pixels along an axis: a 1-pixel axis has no variation along it.
    gy, gx = (torch.gradient(y, dim=d)[0] if y.shape[d] > 1 else torch.zeros_like(y) for d in (0, 1))
    energy = F.avg_pool2d((gx ** 2 + gy ** 2)[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    margin = min(2, (min(h, w) - 1) // 2)
    mask = torch.full_like(energy, -math.inf)
    mask[margin:h - margin, margin:w - margin] = 0
    energy = energy + mask
    radius = max(2, min(h, w) // 5)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    picked = []
    for _ in range(count):
        idx = int(energy.argmax())
        if not math.isfinite(float(energy.flatten()[idx])):
            break
        py, px = divmod(idx, w)
        picked.append((py, px))
        energy[(yy - py) ** 2 + (xx - px) ** 2 <= radius ** 2] = -math.inf
    return picked


# ---------------------------------------------------------------------------------------------
# figures


def cluster_colours(n: int) -> ListedColormap:
    """``n`` distinct-looking colours in a fixed shuffled order, so neighbouring ids differ visibly."""
    base = colormaps['tab20'](np.linspace(0, 1, 20)) if n <= 20 else colormaps['nipy_spectral'](np.linspace(0, 1, n))
    colours = base[:n] if n <= 20 else base[np.random.default_rng(0).permutation(n)]
    return ListedColormap(colours)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def draw_cluster_map(ax, codes: np.ndarray, n: int, title: str) -> None:
    ax.imshow(codes, cmap=cluster_colours(n), vmin=-0.5, vmax=n - 0.5, interpolation='nearest')
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def figure_clusters(image: np.ndarray, cap: Capture) -> Figure:
    h, w = image.shape[:2]
    rounds = cap.codes.shape[0]
    fig = new_figure(3.2 * (rounds + 1), 3.4 * max(h / w, 0.4))
    ax = fig.add_subplot(1, rounds + 1, 1)
    ax.imshow(image)
    ax.set_title('input (LR)', fontsize=10)
    ax.set_axis_off()
    for r in range(rounds):
        used = int(torch.unique(cap.codes[r]).numel())
        draw_cluster_map(fig.add_subplot(1, rounds + 1, r + 2), cap.codes[r].view(h, w).numpy(), cap.n_clusters,
                         f'round {r + 1}: {used} of {cap.n_clusters} {cap.kind}s')
    fig.suptitle(f'Every pixel coloured by its {cap.kind}', fontsize=11)
    fig.tight_layout()
    return fig


def figure_patches(image: np.ndarray, cap: Capture, n_clusters: int = 6, per_cluster: int = 8) -> Figure:
    """Rows: the largest clusters of round 1; columns: patches centred on members spread over the cluster."""
    h, w = image.shape[:2]
    codes = cap.codes[0]
    sizes = torch.bincount(codes, minlength=cap.n_clusters)
    largest = [int(c) for c in sizes.argsort(descending=True, stable=True)[:n_clusters] if sizes[c] > 0]
    half = PATCH // 2
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode='reflect' if min(h, w) > half else 'edge')
    fig = new_figure(1.1 * per_cluster + 1.6, 1.15 * len(largest) + 0.6)
    rng = np.random.default_rng(0)
    for row, c in enumerate(largest):
        members = torch.nonzero(codes == c).flatten().numpy()
        chosen = np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False))
        for col, pixel in enumerate(chosen):
            py, px = divmod(int(pixel), w)
            ax = fig.add_subplot(len(largest), per_cluster, row * per_cluster + col + 1)
            ax.imshow(padded[py:py + PATCH, px:px + PATCH], interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f'#{c}\n{int(sizes[c])} px', fontsize=8, rotation=0, ha='right', va='center')
    fig.suptitle(f'{PATCH}x{PATCH} patches around members of the {len(largest)} largest {cap.kind}s (round 1)',
                 fontsize=10)
    fig.tight_layout()
    return fig


def draw_attention(fig, ax, image: np.ndarray, row: np.ndarray, pixel: tuple[int, int], self_weight: float) -> None:
    h, w = image.shape[:2]
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    ax.imshow(gray, cmap='gray', vmin=0, vmax=255)
    weights = np.ma.masked_equal(row.reshape(h, w), 0)
    shown = ax.imshow(weights, cmap='inferno', norm=PowerNorm(0.5, vmin=0, vmax=max(float(row.max()), 1e-12)),
                      interpolation='nearest')
    ax.scatter([pixel[1]], [pixel[0]], s=80, facecolors='none', edgecolors='cyan', linewidths=1.5)
    ax.set_title(f'pixel (y={pixel[0]}, x={pixel[1]}): weight on itself {self_weight:.3g}\n'
                 f'attends to {int((row > 0).sum())} of {h * w} pixels', fontsize=9)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label='attention weight')


def figure_attention(image: np.ndarray, row: np.ndarray, pixel: tuple[int, int], self_weight: float) -> Figure:
    h, w = image.shape[:2]
    fig = new_figure(5.5, 5.0 * max(h / w, 0.5))
    draw_attention(fig, fig.add_subplot(), image, row, pixel, self_weight)
    fig.tight_layout()
    return fig


def draw_sizes(ax, sizes: np.ndarray, kind: str) -> None:
    ordered = -np.sort(-sizes, axis=1)
    x = np.arange(1, sizes.shape[1] + 1)
    for r in range(sizes.shape[0]):
        ax.bar(x, ordered[r], width=1.0, alpha=0.8 if r == 0 else 0.4, label=f'round {r + 1}')
    ax.set_xlabel(f'{kind}s, largest first')
    ax.set_ylabel('pixels')
    ax.set_title(f'{kind} sizes (empty: {int((sizes == 0).sum())} of {sizes.size})', fontsize=10)
    if sizes.shape[0] > 1:
        ax.legend(fontsize=8)


def figure_stats(sizes: np.ndarray, mixed: np.ndarray, perplexity: np.ndarray, kind: str, window: int) -> Figure:
    fig = new_figure(10, 3.8)
    draw_sizes(fig.add_subplot(1, 2, 1), sizes, kind)
    ax = fig.add_subplot(1, 2, 2)
    rounds = np.arange(1, len(mixed) + 1)
    bars = ax.bar(rounds, mixed, width=0.5, color='tab:orange')
    ax.set_xlim(0.25, len(mixed) + 0.75)
    for bar, share, ppl in zip(bars, mixed, perplexity, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, share, f'{100 * share:.0f}%\nperplexity {ppl:.1f}',
                ha='center', va='bottom', fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_xticks(rounds)
    ax.set_xlabel('round')
    ax.set_ylabel('share of windows')
    ax.set_title(f'windows ({window} positions) mixing several {kind}s', fontsize=10)
    fig.tight_layout()
    return fig


def figure_overview(image: np.ndarray, cap: Capture, row: np.ndarray, pixel: tuple[int, int], self_weight: float,
                    sizes: np.ndarray) -> Figure:
    h, w = image.shape[:2]
    fig = new_figure(10, 8.4 * max(h / w, 0.5) + 0.6)
    ax = fig.add_subplot(2, 2, 1)
    ax.imshow(image)
    ax.scatter([pixel[1]], [pixel[0]], s=80, facecolors='none', edgecolors='cyan', linewidths=1.5)
    ax.set_title('input (LR)', fontsize=10)
    ax.set_axis_off()
    draw_cluster_map(fig.add_subplot(2, 2, 2), cap.codes[0].view(h, w).numpy(), cap.n_clusters,
                     f'{cap.kind} of every pixel (round 1)')
    draw_attention(fig, fig.add_subplot(2, 2, 3), image, row, pixel, self_weight)
    draw_sizes(fig.add_subplot(2, 2, 4), sizes[:1], cap.kind)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Cluster maps, attention maps and cluster statistics of LCoAN (or NLSN) on one image. '
                    'Other flags are main.py model flags (e.g. --template demo, --n_feats 32).')
    parser.add_argument('--weights', required=True, help='the network checkpoint (.pt state_dict)')
    parser.add_argument('--image', required=True, help='the input (LR) image')
    parser.add_argument('-o', '--out', required=True, help='folder for the PNGs (created)')
    parser.add_argument('--pixel', action='append', default=[], metavar='Y,X',
                        help='a pixel whose attention map to draw (repeatable); default: chosen on texture')
    parser.add_argument('--n_pixels', type=int, default=3, help='pixels chosen automatically without --pixel')
    return parser


def run(argv=None) -> list[Path]:
    """Write the figures; returns their paths."""
    vis, rest = build_parser().parse_known_args(argv)
    # The architecture flags not given are read from the weights (model.checkpoint), as for main.py --pre_train.
    args = option.parse_main_args([*rest, '--pre_train', str(vis.weights), '--cpu'], weights_flag='--weights')
    if args.pre_train_detected:
        print(args.pre_train_detected)
    torch.manual_seed(args.seed)  # NLSN's random rotations
    out = Path(vis.out)
    image = read_image(Path(vis.image))
    if args.n_colors == 1:
        raise UserError('--n_colors 1: visualize.py shows RGB models')
    h, w = image.shape[:2]
    pixels = [parse_pixel(p) for p in vis.pixel]
    for py, px in pixels:
        if not (0 <= py < h and 0 <= px < w):
            raise UserError(f'--pixel {py},{px}: outside the {h}x{w} image {vis.image}')
    if not pixels:
        if vis.n_pixels < 1:
            raise UserError(f'--n_pixels {vis.n_pixels}: must be at least 1 without --pixel')
        pixels = textured_pixels(image, vis.n_pixels)

    net = build_model(args, Path(vis.weights))
    lr = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None] * (args.rgb_range / 255)
    cap = capture(net, lr)
    layout = lcoa_stats.pattern_layout(cap.pattern)
    index = torch.tensor([py * w + px for py, px in pixels])
    rows = lcoa_stats.attention_rows(layout, index).numpy()
    self_all = lcoa_stats.self_weights(layout)[0]
    sizes = lcoa_stats.cluster_sizes(cap.codes[None], cap.n_clusters)
    perplexity = lcoa_stats.perplexity(sizes)
    mixed = lcoa_stats.mixed_window_share(cap.codes[None], cap.window)[0]

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(fig: Figure, name: str) -> None:
        save(fig, out / name)
        written.append(out / name)

    write(figure_clusters(image, cap), 'clusters.png')
    write(figure_patches(image, cap), 'cluster_patches.png')
    for (py, px), row, p in zip(pixels, rows, index.tolist(), strict=True):
        write(figure_attention(image, row, (py, px), float(self_all[p])), f'attention_y{py}_x{px}.png')
    write(figure_stats(sizes.numpy(), mixed.numpy(), perplexity.numpy(), cap.kind, cap.window), 'cluster_stats.png')
    write(figure_overview(image, cap, rows[0], pixels[0], float(self_all[index[0]]), sizes.numpy()), 'overview.png')

    lines = [f'image {vis.image} ({h}x{w}), weights {vis.weights}, model {args.model}',
             f'{cap.kind}s per round: {cap.n_clusters}, window: {cap.window}']
    for r in range(sizes.shape[0]):
        lines.append(f'round {r + 1}: {int((sizes[r] == 0).sum())} empty, perplexity {float(perplexity[r]):.2f}, '
                     f'{100 * float(mixed[r]):.1f}% of windows mix {cap.kind}s, '
                     f'sizes (largest first) {sorted(sizes[r].tolist(), reverse=True)}')
    lines.append(f'mean attention weight on self: {float(self_all.mean()):.4f}')
    for (py, px), p in zip(pixels, index.tolist(), strict=True):
        lines.append(f'pixel ({py}, {px}): weight on itself {float(self_all[p]):.4f}')
    (out / 'statistics.txt').write_text('\n'.join(lines) + '\n')
    written.append(out / 'statistics.txt')
    print('\n'.join(lines))
    print(f'Wrote {len(written)} files to {out}')
    return written


def main(argv=None) -> int:
    def body() -> int:
        run(argv)
        return 0
    return run_entry_point(body)


if __name__ == '__main__':
    sys.exit(main())
