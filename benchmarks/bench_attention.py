"""Benchmark of the non-local part: 10 attention modules on a 128 x S x S feature map (eval, fp32, CPU).

Variants (each timed in a fresh process, so its peak RSS is its own):

* ``lcoa_fast``: LCoAN's attention as the network runs it (collaborative attention: the first module
  embeds, clusters and builds the pattern; all ten apply it to their own values), fast kernels
  (``model.blocks.sparse_attention``);
* ``lcoa_reference``: the same with the plain reference kernels (``model.blocks.sparse_attention_reference``);
* ``nlsa``: an NLSA-style baseline after NLSN (Mei et al., CVPR 2021) with its defaults: 4 hash
  rounds of LSH by random rotations, chunks of 144 that also attend to the adjacent chunks, query/key
  reduction 4; every module hashes and attends on its own. Written plainly (reference kernels).

The run also times one batched matrix product of the shape LCoA's ``apply`` uses (the windows of
one pattern times their values) and from it the *arithmetic floor* of the chain: its matrix-product
and convolution FLOPs at that measured rate, i.e. the time with every product at this machine's
peak.

With ``--nlsn_src DIR`` (a checkout of the official NLSN's ``src/``), the run also times the official
NLSA modules (``NonLocalSparseAttention`` of its ``model/attention.py``, NLSN's settings: 4 hashes,
chunks of 144, reduction 4, residual scale 0.1) in chains ``--nlsa_configs`` (default 5x128,
10x128, 5x256: NLSN's 5 modules and LCoAN's count of 10 on LCoAN's 128-channel map, and NLSN's 5
on its own 256 channels), and the same chains of our re-implementation (``model.blocks.nlsa``) when it
exists; the ratios ``lcoa_fast / nlsa_official 5x128`` etc. are the "less non-local time" figures.

Extra variants for ``--variants``: ``lcoa_fast_no_coa`` / ``lcoa_reference_no_coa`` (every module
builds its own pattern) and ``nlsa_fast`` (NLSA on the fast kernels).

Usage: ``python benchmarks/bench_attention.py [--size 96] [--repeats 5] [--threads 2] [--json OUT]
[--official_src LCOAN/src] [--nlsn_src NLSN/src]``.
Timings on a shared or busy machine are noise: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NLSN_ATTENTION,
    add_src_to_path,
    chained,
    initialise_centroids,
    interleaved,
    machine_info,
    missing_nlsn,
    run_in_subprocess,
)
from _official import official_lcoan, official_nlsn  # noqa: E402

add_src_to_path()

import torch  # noqa: E402
from torch import nn  # noqa: E402

PAPER = dict(n_feats=128, reduction=1, n_clusters=128, window_size=384, n_rounds=1, res_scale=0.1, ema_decay=0.999)
NLSN = dict(reduction=4, n_hashes=4, chunk_size=144)

VARIANTS = {
    'lcoa_fast': ('lcoa_chain', dict(impl='fast', share_pattern=True)),
    'lcoa_reference': ('lcoa_chain', dict(impl='reference', share_pattern=True)),
    'nlsa': ('nlsa_chain', dict(impl='reference')),
    'lcoa_fast_no_coa': ('lcoa_chain', dict(impl='fast', share_pattern=False)),
    'lcoa_reference_no_coa': ('lcoa_chain', dict(impl='reference', share_pattern=False)),
    'nlsa_fast': ('nlsa_chain', dict(impl='fast')),
}
DEFAULT_VARIANTS = ('lcoa_fast', 'lcoa_reference', 'nlsa')
# NLSA chains after NLSN, '<modules>x<channels>' on a <channels> x S x S map. NLSN has 5 NLSA modules
# (one before its 32 residual blocks, one after every 8th) on 256 features; 5x128 and 10x128 run on
# the same 128-channel map as LCoAN's ten LCoA modules.
NLSA_CONFIGS = ('5x128', '10x128', '5x256')
NLSN_RES_SCALE = 0.1


def _features(size: int, channels: int) -> torch.Tensor:
    return torch.randn(1, channels, size, size)


def lcoa_chain(*, size: int, impl: str, share_pattern: bool, modules: int = 10):
    """Setup: ``modules`` LCoA modules (paper configuration) run one after the other, on channels-last
    features as in the LCoAN network."""
    from model.blocks.lcoa import LearnableCollaborativeAttention

    blocks = [LearnableCollaborativeAttention(attention_impl=impl, **PAPER).eval().to(memory_format=torch.channels_last)
              for _ in range(modules)]
    x = _features(size, PAPER['n_feats']).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for block in blocks[:1] if share_pattern else blocks:
            embed = block.conv_match(x).flatten(2).transpose(1, 2)
            block.kmeans.initialise(embed)

    def run() -> torch.Tensor:
        with torch.no_grad():
            h, pattern = x, None
            for block in blocks:
                h, new_pattern = block(h, pattern)
                if share_pattern:
                    pattern = new_pattern
        return h

    return run


class NonLocalSparseAttention(nn.Module):
    """NLSA after NLSN: LSH buckets by random rotations, sorted chunks attending to their neighbours.

    Same windowed attention as LCoA (queries, L2-normalised keys, [self | previous | next] chunk,
    rounds combined by a softmax over their log-sum-exp), with the clusters replaced by
    ``n_hashes`` rounds of random-rotation hashing into ``min(L // chunk + (L // chunk) % 2, 128)``
    buckets, drawn anew in every forward pass.

    Args:
        n_feats: channels of the features and the values.
        reduction: query/key embedding has ``n_feats // reduction`` channels.
        n_hashes: hashing rounds.
        chunk_size: positions per chunk (the attention window).
        res_scale: scale of the attention output before the residual sum.
        impl: sparse-attention kernels, 'reference' or 'fast'.
    """

    def __init__(self, *, n_feats: int, reduction: int, n_hashes: int, chunk_size: int, res_scale: float,
                 impl: str) -> None:
        super().__init__()
        from model.blocks.lcoa import attention_module

        self.attention = attention_module(impl)
        self.n_hashes = n_hashes
        self.chunk_size = chunk_size
        self.res_scale = res_scale
        self.conv_match = nn.Conv2d(n_feats, n_feats // reduction, 3, padding=1)
        self.conv_assembly = nn.Conv2d(n_feats, n_feats, 1)

    def hash_codes(self, embed: torch.Tensor) -> torch.Tensor:
        """Bucket of every position per round: embed (N, L, C) -> (N, n_hashes, L)."""
        chunks = embed.shape[1] // self.chunk_size
        n_buckets = max(2, min(chunks + chunks % 2, 128))
        rotations = torch.randn(embed.shape[-1], self.n_hashes, n_buckets // 2, dtype=embed.dtype)
        rotated = torch.einsum('nlc,chb->nhlb', embed, rotations)
        return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed = self.conv_match(x).flatten(2).transpose(1, 2)
        values = self.conv_assembly(x).flatten(2).transpose(1, 2)
        pattern = self.attention.build_pattern(embed, self.hash_codes(embed), self.chunk_size)
        out = self.attention.apply_pattern(pattern, values)
        return out.transpose(1, 2).reshape(x.shape) * self.res_scale + x


def nlsa_chain(*, size: int, impl: str, modules: int = 10):
    """Setup: ``modules`` NLSA modules (NLSN defaults, 128 channels) run one after the other."""
    blocks = [NonLocalSparseAttention(n_feats=PAPER['n_feats'], res_scale=PAPER['res_scale'], impl=impl, **NLSN).eval()
              for _ in range(modules)]
    return chained(blocks, _features(size, PAPER['n_feats']))


def official_chain(*, src: str, size: int, modules: int = 10):
    """Setup: the official code's ``modules`` LCoA modules (``RecurrentNonLocalKmeansAttention``, paper
    configuration) chained as its residual groups chain them: the first builds the shared map."""
    kwargs = dict(channels=PAPER['n_feats'], reduction=PAPER['reduction'], n_clusters=PAPER['n_clusters'],
                  window_size=PAPER['window_size'], res_scale=PAPER['res_scale'], ema_decay=PAPER['ema_decay'],
                  n_rounds=PAPER['n_rounds'])
    lcoan = official_lcoan(src)
    with lcoan.imports():
        attention = lcoan.module('model.lcoan').attention  # the module LCoAN's groups use
        blocks = [attention.RecurrentNonLocalKmeansAttention(**kwargs).eval() for _ in range(modules)]
    for block in blocks:
        initialise_centroids(block)
    x = _features(size, PAPER['n_feats'])

    def run() -> torch.Tensor:
        with torch.no_grad():
            state = (x, None, None, None)
            for block in blocks:
                state = block(state)
        return state[0]

    return run


def _nlsa_chain(blocks: list[nn.Module], size: int, channels: int):
    return chained(blocks, _features(size, channels))


def nlsn_official_chain(*, src: str, size: int, channels: int, modules: int):
    """Setup: ``modules`` NLSA modules of the official NLSN code (``model/attention.py``), NLSN's
    attention configuration, on a ``channels`` x ``size`` x ``size`` map."""
    nlsn = official_nlsn(src)
    with nlsn.imports():
        attention = nlsn.module('model.attention')
        nlsa = attention.NonLocalSparseAttention
        blocks = [nlsa(channels=channels, res_scale=NLSN_RES_SCALE, **NLSN_ATTENTION).eval() for _ in range(modules)]
    return _nlsa_chain(blocks, size, channels)


def nlsn_ours_chain(*, size: int, channels: int, modules: int):
    """Setup: the same with our NLSA re-implementation (``model.blocks.nlsa``)."""
    from model.blocks.nlsa import NonLocalSparseAttention

    blocks = [NonLocalSparseAttention(channels=channels, res_scale=NLSN_RES_SCALE, **NLSN_ATTENTION).eval()
              for _ in range(modules)]
    return _nlsa_chain(blocks, size, channels)


def window_matmul(*, size: int):
    """Setup: one batched product (nW, w, 3w) x (nW, 3w, C): every window's weights times its values."""
    n_windows, w, c = _window_shape(size)
    weights = torch.softmax(torch.randn(n_windows, w, 3 * w), dim=-1)
    values = torch.randn(n_windows, 3 * w, c)
    out = torch.empty(n_windows, w, c)
    return lambda: torch.bmm(weights, values, out=out)


def _window_shape(size: int) -> tuple[int, int, int]:
    w = PAPER['window_size']
    return -(-size * size // w), w, PAPER['n_feats']


def chain_flops(size: int, modules: int = 10) -> float:
    """FLOPs (2 per multiply-add) of the CoA chain: one 3x3 embedding conv and one scores product,
    then per module a 1x1 value conv and one application of the weights."""
    n_windows, w, c = _window_shape(size)
    product = 2.0 * n_windows * w * 3 * w * c
    pixels = size * size
    return 2.0 * pixels * c * c * 9 + product + modules * (2.0 * pixels * c * c + product)


def _table(info: dict, size: int, repeats: int, rounds: int, results: dict, ratios: dict, cpu_ratios: dict) -> str:
    lines = [
        f'Non-local part, 10 modules on 1 x 128 x {size} x {size} unless named, eval, fp32, median of {repeats} '
        f'after warm-up in each of {rounds} process(es) per variant, taking turns',
        '',
        f'machine: {info["cpu"]} ({info["logical_cpus"]} logical CPUs), torch {info["torch"]}, '
        f'threads {info["threads"]}, {info["date"]}',
        '',
        '| variant | median (s) | min (s) | median CPU (s) | peak RSS (MB) |',
        '|---|---:|---:|---:|---:|',
    ]
    for name, r in results.items():
        lines.append(f'| {name} | {r["median_s"]:.3f} | {r["min_s"]:.3f} | {r["median_cpu_s"]:.3f} '
                     f'| {r["peak_rss_mb"]:.0f} |')
    if ratios:
        lines += ['', '| ratio of medians | time | CPU time |', '|---|---:|---:|']
        lines += [f'| {name} | {value:.2f} | {cpu_ratios[name]:.2f} |' for name, value in ratios.items()]
    return '\n'.join(lines)


def _nlsa_config(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    modules, _, channels = text.partition('x')
    if not (modules.isdigit() and channels.isdigit() and int(modules) > 0 and int(channels) % 4 == 0):
        parser.error(f'--nlsa_configs {text}: expected MODULESxCHANNELS, channels a multiple of 4 (e.g. 5x128)')
    return int(modules), int(channels)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, default=96, help='feature map height and width')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per process (after one warm-up)')
    parser.add_argument('--rounds', type=int, default=1, help='processes per variant, the variants taking turns '
                        '(on a machine with changing load, 3 or more keeps the ratios fair)')
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument('--json', type=Path, help='also write the results to this JSON file')
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder: adds the official "
                        'modules as a same-run baseline')
    parser.add_argument('--nlsn_src', help="a checkout of the official NLSN's src/ folder: adds its NLSA modules "
                        '(model/attention.py) as a same-run baseline')
    parser.add_argument('--nlsa_configs', nargs='*', default=list(NLSA_CONFIGS), metavar='MODULESxCHANNELS',
                        help='NLSA chains to run, official (with --nlsn_src) and ours (when src/model/blocks/nlsa.py '
                        f'exists); default {" ".join(NLSA_CONFIGS)}')
    args = parser.parse_args(argv)
    nlsa_configs = [_nlsa_config(parser, text) for text in args.nlsa_configs]
    # Check the checkouts before anything runs, so a wrong path fails at once.
    try:
        official = official_lcoan(args.official_src).src if args.official_src else None
        nlsn = official_nlsn(args.nlsn_src).src if args.nlsn_src else None
    except FileNotFoundError as error:
        parser.error(str(error))
    ours_missing = missing_nlsn(network=False) if nlsa_configs else None
    if ours_missing:
        print(f'our NLSN is not available ({ours_missing}): skipping the rows of our NLSA', flush=True)

    jobs = {name: (f'bench_attention:{VARIANTS[name][0]}', dict(VARIANTS[name][1], size=args.size))
            for name in args.variants}
    if official:
        jobs['official'] = ('bench_attention:official_chain', {'src': str(official), 'size': args.size})
    for modules, channels in nlsa_configs:
        shape = dict(size=args.size, channels=channels, modules=modules)
        if nlsn:
            jobs[f'nlsa_official {modules}x{channels}'] = ('bench_attention:nlsn_official_chain',
                                                          dict(shape, src=str(nlsn)))
        if not ours_missing:
            jobs[f'nlsa_ours {modules}x{channels}'] = ('bench_attention:nlsn_ours_chain', shape)
    results = interleaved(jobs, rounds=args.rounds, threads=args.threads, repeats=args.repeats,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    print('running window_matmul ...', file=sys.stderr, flush=True)
    matmul = run_in_subprocess('bench_attention:window_matmul', {'size': args.size}, threads=args.threads, repeats=20)
    n_windows, w, c = _window_shape(args.size)
    gflops = 2.0 * n_windows * w * 3 * w * c / matmul['median_s'] / 1e9
    floor_s = chain_flops(args.size) / (gflops * 1e9)
    pairs = [('lcoa_fast', 'lcoa_reference'), ('lcoa_fast', 'nlsa'), ('lcoa_reference', 'nlsa'),
             ('lcoa_fast', 'official')]
    for modules, channels in nlsa_configs:
        config = f'{modules}x{channels}'
        pairs += [(num, f'nlsa_official {config}') for num in ('lcoa_fast', 'official', f'nlsa_ours {config}')]
    ratios, cpu_ratios = {}, {}
    for num, den in pairs:
        if num in results and den in results:
            ratios[f'{num} / {den}'] = results[num]['median_s'] / results[den]['median_s']
            cpu_ratios[f'{num} / {den}'] = results[num]['median_cpu_s'] / results[den]['median_cpu_s']
    info = machine_info(args.threads)
    print(_table(info, args.size, args.repeats, args.rounds, results, ratios, cpu_ratios))
    print(f'\nbatched window product ({n_windows} x {w} x {3 * w} x {c}): {gflops:.0f} GFLOP/s; '
          f'chain: {chain_flops(args.size) / 1e9:.1f} GFLOP -> arithmetic floor {floor_s:.3f} s at that rate')
    for name, value in ratios.items():
        if name.startswith(('lcoa_fast / nlsa_', 'official / nlsa_')):
            print(f'{name}: {1 - value:.0%} less non-local time')
    if 'lcoa_fast' in results:
        print(f'lcoa_fast takes {results["lcoa_fast"]["median_s"] / floor_s:.2f}x that floor')
    config = {'size': args.size, 'repeats': args.repeats, 'rounds': args.rounds, 'paper': PAPER, 'nlsn': NLSN,
              'nlsa_configs': args.nlsa_configs}
    report = {'machine': info, 'config': config, 'results': results, 'ratios': ratios, 'cpu_ratios': cpu_ratios,
              'window_matmul': dict(matmul, gflops=gflops), 'chain_gflop': chain_flops(args.size) / 1e9,
              'floor_s': floor_s}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')
    return report


if __name__ == '__main__':
    main()
