"""The efficiency table of the LCoAN paper, on this code: every model in its published configuration.

For every architecture of ``model.registry`` in its published defaults (EDSR's are its baseline size)
and EDSR's paper size (``EDSR_paper``), at x2 and x4:

* ``params``: parameters (``parameters()``, frozen mean shifts included), counted on the meta device;
* ``flops``: FLOPs of one forward for a 1280x720 output (LR 640x360 at x2, 320x180 at x4), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the real forward, which counts a multiply-add as
  **2 FLOPs** (the tables of SR papers usually give multiply-adds, i.e. half these numbers; both
  are printed). Networks that run on the meta device are counted there at the full size; LCoAN,
  whose attention uses autocast (not available on the meta device), is counted on the CPU at a
  quarter of the size per side and scaled by 16: all its operations are linear in the pixel count
  (convolutions, windows of fixed size), up to the padding of the last window;
* ``time``: CPU time of an eval forward at LR 96x96 (x2) and 64x64 (x4), fp32, and the peak RSS
  of that process: a fresh process per measurement (``_common.run_in_subprocess``), median of
  ``--repeats`` after one warm-up;
* ``nonlocal``: the non-local modules alone, in one run: LCoAN's ten LCoA applications (the
  first builds the pattern, the other nine reuse it) against ten of NLSN's NLSA modules (chunk
  144, 4 hashes) on the same 128x96x96 feature map; and NLSN's own five NLSA modules (256
  channels) on a 256x96x96 map.

``--json`` writes the results (``Figs/draw_efficiency.py`` draws ``Figs/efficiency.png`` from it).
Usage: ``python benchmarks/compare_models.py [--threads 2] [--repeats 3] [--only params,flops,time,nonlocal]
[--models EDSR,NLSN] [--json benchmarks/compare_models.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_src_to_path, chained, initialise_centroids, machine_info, run_in_subprocess  # noqa: E402

add_src_to_path()

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

HERE = Path(__file__).resolve().parent
# Published configurations, as (architecture, one of its named configurations): every architecture with its
# defaults, and the published sizes that are not a default.
VARIANTS = {'EDSR_paper': ('EDSR', 'paper')}


def _models() -> dict[str, tuple[str, str | None]]:
    from model import registry

    return {**{name: (name, None) for name in registry.names()}, **VARIANTS}


MODELS = _models()
TIME_LR = {2: 96, 4: 64}
FLOPS_HR = (720, 1280)
# Networks counted at 1/SCALED_DOWN of the output size per side on the CPU, then scaled up.
SCALED_DOWN = 4
NONLOCAL_SIZE = 96


def build(name: str, scale: int) -> torch.nn.Module:
    """The network ``name`` in its published configuration at ``scale``, in eval mode."""
    from model import registry

    model, configuration = MODELS[name]
    arch = registry.get(model)
    net = arch.build(scale=scale, **arch.configurations.get(configuration, {})).eval()
    initialise_centroids(net)  # LCoAN: initialised centroids, as in a trained checkpoint
    return net


def count_params(name: str, scale: int) -> int:
    with torch.device('meta'):
        net = build(name, scale)
    return sum(p.numel() for p in net.parameters())


def count_flops(name: str, scale: int) -> tuple[float, str]:
    """FLOPs (multiply-add = 2) of one forward for a 1280x720 output, and how they were counted."""
    h, w = FLOPS_HR[0] // scale, FLOPS_HR[1] // scale
    try:
        with torch.device('meta'):
            net = build(name, scale)
            x = torch.rand(1, 3, h, w)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        return float(counter.get_total_flops()), 'meta device, full size'
    except RuntimeError:
        pass
    torch.manual_seed(0)
    net = build(name, scale)
    x = torch.rand(1, 3, h // SCALED_DOWN, w // SCALED_DOWN)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    area = (h * w) / (x.shape[-2] * x.shape[-1])
    return float(counter.get_total_flops()) * area, f'CPU at LR {x.shape[-1]}x{x.shape[-2]}, scaled x{area:g}'


# Setup functions run in a fresh process by _common.run_in_subprocess ---------------------------

def forward(*, name: str, scale: int, size: int):
    torch.manual_seed(0)
    net = build(name, scale)
    x = torch.rand(1, 3, size, size)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return net(x)
    return run


def lcoa_modules(*, size: int, modules: int = 10):
    """LCoAN's attention as in its body: the first LCoA builds the pattern, the others reuse it."""
    torch.manual_seed(0)
    net = build('LCoAN', 2)
    attentions = [group.attention[0] for group in net.body][:modules]
    x = torch.randn(1, net.head[0].out_channels, size, size).contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.no_grad():
            out, pattern = x, None
            for attention in attentions:
                out, pattern = attention(out, pattern)
        return out
    return run


def nlsa_modules(*, size: int, channels: int, modules: int):
    from model.blocks.nlsa import NonLocalSparseAttention

    torch.manual_seed(0)
    attentions = [NonLocalSparseAttention(channels=channels, chunk_size=144, n_hashes=4, reduction=4,
                                          res_scale=0.1).eval().to(memory_format=torch.channels_last)
                  for _ in range(modules)]
    return chained(attentions, torch.randn(1, channels, size, size).contiguous(memory_format=torch.channels_last))


# ----------------------------------------------------------------------------------------------

def _fmt(value: float, unit: float, digits: int = 1) -> str:
    return f'{value / unit:,.{digits}f}'


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--models', default=','.join(MODELS), help='comma-separated, from ' + ','.join(MODELS))
    parser.add_argument('--scales', default='2,4')
    parser.add_argument('--only', default='params,flops,time,nonlocal')
    parser.add_argument('--json', type=Path, help='write the results here (e.g. benchmarks/compare_models.json)')
    parser.add_argument('--note', default='', help='a remark stored with the results and shown in the figure, e.g. '
                        '"measured while other jobs ran; ratios only"')
    opts = parser.parse_args(argv)
    names = opts.models.split(',')
    scales = [int(s) for s in opts.scales.split(',')]
    only = set(opts.only.split(','))
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f'unknown models {unknown}; choose from {", ".join(MODELS)}')
    torch.set_num_threads(opts.threads)

    info = machine_info(opts.threads)
    results: dict = {'machine': info, 'repeats': opts.repeats, 'flops_output': 'x'.join(map(str, FLOPS_HR[::-1])),
                     'flops_convention': 'FlopCounterMode: multiply-add = 2 FLOPs', 'time_lr': TIME_LR,
                     'note': opts.note, 'models': {}}
    for name in names:
        for scale in scales:
            row: dict = {}
            if 'params' in only:
                row['params'] = count_params(name, scale)
            if 'flops' in only:
                row['flops'], row['flops_method'] = count_flops(name, scale)
            if 'time' in only:
                size = TIME_LR[scale]
                r = run_in_subprocess('compare_models:forward', dict(name=name, scale=scale, size=size),
                                      threads=opts.threads, repeats=opts.repeats)
                row.update(time_s=r['median_s'], times_s=r['times_s'], peak_rss_mb=r['peak_rss_mb'], lr=size)
            results['models'][f'{name} x{scale}'] = dict(model=name, scale=scale, **row)
            print(f'{name} x{scale}: {row}', flush=True)

    if 'nonlocal' in only:
        s = NONLOCAL_SIZE
        runs = {
            'LCoA x10 (pattern shared), 128 ch': ('compare_models:lcoa_modules', dict(size=s)),
            'NLSA x10, 128 ch': ('compare_models:nlsa_modules', dict(size=s, channels=128, modules=10)),
            "NLSN's NLSA x5, 256 ch": ('compare_models:nlsa_modules', dict(size=s, channels=256, modules=5)),
        }
        results['nonlocal'] = {'size': s}
        for label, (fn, kwargs) in runs.items():
            r = run_in_subprocess(fn, kwargs, threads=opts.threads, repeats=opts.repeats)
            results['nonlocal'][label] = dict(time_s=r['median_s'], times_s=r['times_s'], peak_rss_mb=r['peak_rss_mb'])
            print(f'{label}: {r["median_s"]:.3f} s', flush=True)

    print(table(results))
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1) + '\n')
    return results


def table(results: dict) -> str:
    info = results['machine']
    note = f" ({results['note']})" if results.get('note') else ''
    lines = [f"\n{info['cpu']}, {info['threads']} threads, torch {info['torch']}, {info['date']}{note}",
             f"FLOPs for a {results['flops_output']} output ({results['flops_convention']}); time and peak RSS: "
             f"eval forward, fp32, LR {results['time_lr'][2]}x{results['time_lr'][2]} at x2 and "
             f"{results['time_lr'][4]}x{results['time_lr'][4]} at x4, median of {results['repeats']}\n",
             '| model | scale | params | GFLOPs | G mult-adds | time (s) | peak RSS (MB) | FLOPs counted |',
             '|---|---:|---:|---:|---:|---:|---:|---|']
    for row in results['models'].values():
        params = _fmt(row['params'], 1e6, 2) + ' M' if 'params' in row else ''
        flops = _fmt(row['flops'], 1e9) if 'flops' in row else ''
        macs = _fmt(row['flops'] / 2, 1e9) if 'flops' in row else ''
        time_s = f"{row['time_s']:.2f}" if 'time_s' in row else ''
        rss = f"{row['peak_rss_mb']:,.0f}" if 'peak_rss_mb' in row else ''
        lines.append(f"| {row['model']} | x{row['scale']} | {params} | {flops} | {macs} | {time_s} | {rss} | "
                     f"{row.get('flops_method', '')} |")
    nonlocal_ = results.get('nonlocal')
    if nonlocal_:
        s = nonlocal_['size']
        lines += ['', f'Non-local modules alone, {s}x{s} feature map, same run:', '',
                  '| modules | time (s) | peak RSS (MB) |', '|---|---:|---:|']
        timed = {k: v for k, v in nonlocal_.items() if k != 'size'}
        for label, r in timed.items():
            lines.append(f"| {label} | {r['time_s']:.3f} | {r['peak_rss_mb']:,.0f} |")
        lcoa = next(v['time_s'] for k, v in timed.items() if k.startswith('LCoA'))
        nlsa = next(v['time_s'] for k, v in timed.items() if k.startswith('NLSA x10'))
        lines.append(f'\nLCoA x10 takes {lcoa / nlsa:.2f}x the time of NLSA x10: {100 * (1 - lcoa / nlsa):.0f}% less '
                     'non-local time (paper: about 83% less).')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
