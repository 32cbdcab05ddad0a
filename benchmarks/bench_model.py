"""Full-model benchmarks: inference, one training step, chopped inference, and the conv roofline.

Every measurement runs in a fresh process (``_common.run_in_subprocess``), so its peak RSS is its
own. The network is LCoAN in the paper configuration (10 groups x 4 blocks, 128 features, 128
clusters, window 384), fp32, on the CPU; ``fast`` and ``reference`` select the sparse-attention
kernels (``model.blocks.sparse_attention`` vs the plain ``model.blocks.sparse_attention_reference``).

Questions answered (``--only`` picks some):

* ``infer``: eval forward at x2 and x4 for LR 48, 96 and 192 (``--sizes``), fast vs reference;
* ``train``: one Adam step, x2, a batch of 2 LR patches of 48x48 (the issue's reference shape),
  fast and reference kernels;
* ``train16``: the same at the paper's batch of 16 patches, fast kernels (slow: 15-30 s a step);
* ``chop``: ``Model`` wrapper with ``--chop`` on a large LR image at x4 (``--chop_lr``, default 1024);
* ``roofline``: the model's conv FLOPs per image and this machine's measured 3x3-conv throughput,
  i.e. how long the convolutions alone must take at best.

Usage: ``python benchmarks/bench_model.py [--threads 2] [--repeats 3] [--only infer,train] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NLSN_FLAGS,
    add_src_to_path,
    initialise_centroids,
    machine_info,
    missing_nlsn,
    run_in_subprocess,
)
from _official import official_lcoan, official_nlsn  # noqa: E402

add_src_to_path()

import torch  # noqa: E402
from torch import nn  # noqa: E402

PAPER_FLAGS = ['--n_resgroups', '10', '--n_resblocks', '4', '--n_feats', '128', '--reduction', '1',
               '--n_clusters', '128', '--window_size', '384', '--ema_decay', '0.999', '--res_scale', '0.1',
               '--rgb_range', '1', '--cpu']


def _args_from(flags: list[str]):
    import option

    return option.parse_args(flags)


def _args(scale: int, extra: list[str] | None = None):
    return _args_from(PAPER_FLAGS + ['--scale', str(scale), '--patch_size', str(48 * scale)] + (extra or []))


def _network(scale: int, impl: str) -> nn.Module:
    from model import lcoan

    net = lcoan.make_model(_args(scale, ['--attention_impl', impl]))
    # Initialised centroids, as in a trained checkpoint (no warning, no initialisation cost).
    initialise_centroids(net)
    return net


def _official_network(src: str, scale: int) -> nn.Module:
    """The official LCoAN (from a checkout's ``src/``) in the same configuration, centroids initialised."""
    args = _args(scale)  # our options: the official option.py parses sys.argv when imported
    lcoan = official_lcoan(src)
    with lcoan.imports():
        net = lcoan.module('model.lcoan').make_model(args)
    initialise_centroids(net)
    return net


def _nlsn_args(scale: int):
    """NLSN's documented flags parsed by our options (``_common.NLSN_FLAGS``)."""
    return _args_from(NLSN_FLAGS + ['--scale', str(scale)])


def official_nlsn_infer(*, src: str, scale: int, size: int):
    """Setup: like :func:`infer`, with the official NLSN network (``model/nlsn.py`` of ``src``) in its
    published configuration. Its options are a plain namespace: NLSN's own option.py parses
    sys.argv when imported, and ours need not know NLSN's flags."""
    args = SimpleNamespace(n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4, rgb_range=1,
                           n_colors=3, scale=[scale], dilation=False)
    nlsn = official_nlsn(src)
    with nlsn.imports():
        net = nlsn.module('model.nlsn').make_model(args)
    return _forward(net, size)


def nlsn_infer(*, scale: int, size: int):
    """Setup: like :func:`official_nlsn_infer`, with our NLSN (``model.nlsn``) from NLSN's documented flags."""
    from model import nlsn

    return _forward(nlsn.make_model(_nlsn_args(scale)), size)


def _forward(net: nn.Module, size: int):
    """The timed call of an inference measurement: eval forward on one LR image ``size`` x ``size``."""
    net.eval()
    x = torch.rand(1, 3, size, size)

    def run():
        with torch.no_grad():
            net(x)
    return run


def _step(net: nn.Module, scale: int, size: int, batch: int):
    """The timed call of a training measurement: forward + L1 backward + Adam step on ``batch`` patches."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, size, size)
    hr = torch.rand(batch, 3, size * scale, size * scale)

    def run():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.l1_loss(net(lr), hr).backward()
        optimizer.step()
    return run


def official_infer(*, src: str, scale: int, size: int):
    """Setup: like :func:`infer`, with the official model."""
    return _forward(_official_network(src, scale), size)


def official_train_step(*, src: str, scale: int, size: int, batch: int):
    """Setup: like :func:`train_step`, with the official model."""
    return _step(_official_network(src, scale), scale, size, batch)


def infer(*, scale: int, size: int, impl: str):
    """Setup: eval forward of the paper model on one LR image ``size`` x ``size``."""
    return _forward(_network(scale, impl), size)


def train_step(*, scale: int, size: int, batch: int, impl: str):
    """Setup: forward + L1 backward + Adam step on ``batch`` LR patches ``size`` x ``size``."""
    return _step(_network(scale, impl), scale, size, batch)


def chopped(*, scale: int, size: int, impl: str, chop_size: int = 96, chop_batch: int = 4):
    """Setup: the ``Model`` wrapper with ``--chop`` on one LR image ``size`` x ``size``."""
    import model

    class Quiet:
        def write_log(self, msg: str) -> None:
            pass

    wrapper = model.Model(_args(scale, ['--chop', '--chop_size', str(chop_size), '--chop_batch', str(chop_batch)]),
                          Quiet())
    wrapper.model = _network(scale, impl)
    wrapper.eval()
    x = torch.rand(1, 3, size, size)
    return lambda: wrapper(x)


def conv_throughput(*, channels: int = 128, size: int = 96):
    """Setup: one 3x3 conv ``channels`` -> ``channels`` on a ``size`` x ``size`` map (the body's conv),
    channels-last like the network's."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, channels, size, size).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            conv(x)
    return run


def conv_flops(scale: int, size: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of all convolutions the network runs on one LR image."""
    net = _network(scale, 'fast').eval()
    total = 0.0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * output.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def _row(name: str, result: dict) -> str:
    return f"| {name} | {result['median_s']:.3f} | {result['peak_rss_mb']:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--sizes', default='48,96,192')
    parser.add_argument('--scales', default='2,4')
    parser.add_argument('--chop_lr', type=int, default=1024)
    parser.add_argument('--only', default='infer,train,train16,chop,roofline')
    parser.add_argument('--json', type=Path)
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder: adds the official "
                        'model as a same-run baseline (x2 LR 96, x4 LR 192, the train step)')
    parser.add_argument('--nlsn_src', help="a checkout of the official NLSN's src/ folder: adds the official NLSN "
                        'network (32 blocks, 256 features) at x2 LR 96, beside ours when src/model/nlsn.py exists')
    opts = parser.parse_args()
    # Check the checkouts before anything runs, so a wrong path fails at once.
    try:
        official = str(official_lcoan(opts.official_src).src) if opts.official_src else None
        nlsn = str(official_nlsn(opts.nlsn_src).src) if opts.nlsn_src else None
    except FileNotFoundError as error:
        parser.error(str(error))
    only = set(opts.only.split(','))
    results: dict = {'machine': machine_info(opts.threads), 'rows': {}}
    rows = results['rows']
    lines = [f"machine: {results['machine']}", '', '| measurement | median s | peak RSS MB |', '|---|---|---|']

    def measure(name: str, fn: str, kwargs: dict, repeats: int = opts.repeats, warmup: int = 1) -> dict:
        rows[name] = run_in_subprocess(f'bench_model:{fn}', kwargs, threads=opts.threads, repeats=repeats,
                                       warmup=warmup)
        lines.append(_row(name, rows[name]))
        print(lines[-1], flush=True)
        return rows[name]

    if 'infer' in only:
        for scale in map(int, opts.scales.split(',')):
            for size in map(int, opts.sizes.split(',')):
                for impl in ('fast', 'reference'):
                    measure(f'infer x{scale} LR {size} {impl}', 'infer', dict(scale=scale, size=size, impl=impl))
    if 'train' in only:
        for impl in ('fast', 'reference'):
            measure(f'train step x2 2x48x48 {impl}', 'train_step', dict(scale=2, size=48, batch=2, impl=impl))
    if 'train16' in only:
        measure('train step x2 16x48x48 fast', 'train_step', dict(scale=2, size=48, batch=16, impl='fast'), repeats=2)
    scales, sizes = set(map(int, opts.scales.split(','))), set(map(int, opts.sizes.split(',')))
    if official:
        for scale, size in ((2, 96), (4, 192)):  # the full-model rows
            if 'infer' in only and scale in scales and size in sizes:
                measure(f'infer x{scale} LR {size} official', 'official_infer',
                        dict(src=official, scale=scale, size=size))
        if 'train' in only:
            measure('train step x2 2x48x48 official', 'official_train_step',
                    dict(src=official, scale=2, size=48, batch=2))
    if nlsn and 'infer' in only and 2 in scales and 96 in sizes:
        ours_missing = missing_nlsn(network=True)
        if ours_missing:
            print(f'our NLSN is not available ({ours_missing}): skipping the rows of our NLSN network', flush=True)
        else:
            measure('NLSN infer x2 LR 96 ours', 'nlsn_infer', dict(scale=2, size=96))
        measure('NLSN infer x2 LR 96 official', 'official_nlsn_infer', dict(src=nlsn, scale=2, size=96))
    if official or nlsn:
        pairs = [(name, name.replace(' fast', ' official', 1)) for name in rows if name.endswith(' fast')]
        pairs += [('NLSN infer x2 LR 96 ours', 'NLSN infer x2 LR 96 official'),
                  ('infer x2 LR 96 fast', 'NLSN infer x2 LR 96 official')]
        for name, base in pairs:
            if name in rows and base in rows:
                for key, label in (('median_s', 'time'), ('peak_rss_mb', 'peak RSS')):
                    ratio = rows[name][key] / rows[base][key]
                    results.setdefault('ratios', {})[f'{name} / {base} {label}'] = ratio
                    lines.append(f'{name} / {base}: {label} {ratio:.2f}x')
    if 'chop' in only:
        measure(f'chop x4 LR {opts.chop_lr} fast', 'chopped', dict(scale=4, size=opts.chop_lr, impl='fast'),
                repeats=1, warmup=0)
    if 'roofline' in only:
        conv = measure('3x3 conv 128->128 on 96x96, channels-last', 'conv_throughput', {}, repeats=20)
        gflops = 2 * 128 * 128 * 9 * 96 * 96 / conv['median_s'] / 1e9
        results['conv_gflops_per_s'] = gflops
        lines.append(f'\nmeasured 3x3 conv throughput: {gflops:.0f} GFLOP/s')
        for scale in map(int, opts.scales.split(',')):
            for size in map(int, opts.sizes.split(',')):
                flops = conv_flops(scale, size)
                results[f'conv_gflop x{scale} LR {size}'] = flops / 1e9
                bound = flops / (gflops * 1e9)
                measured = rows.get(f'infer x{scale} LR {size} fast', {}).get('median_s')
                share = f', measured {measured:.3f} s = {bound / measured:.0%} of conv peak' if measured else ''
                lines.append(f'x{scale} LR {size}: {flops / 1e9:.1f} GFLOP in convs -> >= {bound:.3f} s{share}')
    print('\n'.join(lines))
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
