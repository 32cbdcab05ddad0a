"""Paired training-step benchmark: ours against the official LCoAN, fresh processes taking turns.

One step is what training repeats: forward, L1 loss, backward and an Adam step, on a batch of LR
patches (x2, 48 x 48 by default) in the paper configuration (``bench_model.PAPER_FLAGS``: 10 groups
x 4 blocks, 128 features, 128 clusters, window 384, fp32, CPU). For every batch size, ``--rounds``
rounds each start one fresh process per side (ours, the official code with ``--official_src``, and
``--before_src`` when given) in turn, so both sides see the same spread of load on a shared machine;
each process runs ``--warmup`` untimed steps, then ``--repeats`` timed ones. Reported per side: the
median and the minimum step time over all rounds, and the peak RSS (``ru_maxrss``) of its processes
(their median and largest); the ratios divide ours by the official.

``--before_src DIR`` adds a third side: another checkout of this repository's ``src/`` (e.g. the
commit before a change), imported in a sealed block like the official code, so a change's before and
after are measured in one run.

Usage: ``python benchmarks/bench_train_step.py --official_src LCOAN/src [--batches 2,16] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, run_in_subprocess  # noqa: E402
from _official import OfficialSource, official_lcoan  # noqa: E402


def before_source(src: str) -> OfficialSource:
    """Another checkout of this repository's ``src/`` folder (``--before_src``)."""
    return OfficialSource(src, flag='--before_src', required='model/lcoan.py', label='before')


def before_train_step(*, src: str, scale: int, size: int, batch: int):
    """Setup: like ``bench_model.train_step``, with the network of another checkout of our ``src/``."""
    import bench_model
    from _common import initialise_centroids

    args = bench_model._args(scale)
    before = before_source(src)
    with before.imports():
        net = before.module('model.lcoan').make_model(args)
    initialise_centroids(net)
    return bench_model._step(net, scale, size, batch)


def _summary(parts: list[dict]) -> dict:
    times = [t for part in parts for t in part['times_s']]
    rss = [part['peak_rss_mb'] for part in parts]
    return {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times,
            'median_cpu_s': statistics.median(t for part in parts for t in part['cpu_times_s']),
            'peak_rss_mb': max(rss), 'median_peak_rss_mb': statistics.median(rss), 'peak_rss_mb_all': rss}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder (the baseline)")
    parser.add_argument('--before_src', help="another checkout of this repository's src/ folder: a third side")
    parser.add_argument('--batches', default='2,16', help='comma-separated batch sizes')
    parser.add_argument('--size', type=int, default=48, help='LR patch height and width')
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5, help='fresh processes per side and batch, taking turns')
    parser.add_argument('--repeats', type=int, default=3, help='timed steps per process')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per process before those')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--json', type=Path)
    opts = parser.parse_args(argv)
    try:
        official = str(official_lcoan(opts.official_src).src) if opts.official_src else None
        before = str(before_source(opts.before_src).src) if opts.before_src else None
    except FileNotFoundError as error:
        parser.error(str(error))
    shape = dict(scale=opts.scale, size=opts.size)
    info = machine_info(opts.threads)
    results: dict = {'machine': info, 'batches': {}}
    lines = [f"machine: {info['cpu']} ({info['logical_cpus']} logical CPUs), torch {info['torch']}, "
             f"{opts.threads} threads, {info['date']}",
             f'one step: x{opts.scale}, {opts.size}x{opts.size} LR patches, paper configuration, fp32, Adam, L1; '
             f'{opts.rounds} rounds of fresh processes per side taking turns, {opts.warmup} warm-up + '
             f'{opts.repeats} timed steps each', '',
             '| batch | side | median s | min s | median CPU s | peak RSS MB (median / max of processes) |',
             '|---:|---|---:|---:|---:|---:|']
    ratio_lines = ['', '| batch | ratio | time (median) | time (min) | peak RSS (max) |', '|---:|---|---:|---:|---:|']
    for batch in map(int, opts.batches.split(',')):
        sides = {'ours': ('bench_model:train_step', dict(shape, batch=batch, impl='fast'))}
        if before:
            sides['before'] = ('bench_train_step:before_train_step', dict(shape, batch=batch, src=before))
        if official:
            sides['official'] = ('bench_model:official_train_step', dict(shape, batch=batch, src=official))
        parts: dict[str, list[dict]] = {name: [] for name in sides}
        for round_index in range(opts.rounds):
            for name, (fn_name, kwargs) in sides.items():
                print(f'batch {batch}: {name} (round {round_index + 1} of {opts.rounds}) ...', file=sys.stderr,
                      flush=True)
                parts[name].append(run_in_subprocess(fn_name, kwargs, threads=opts.threads, repeats=opts.repeats,
                                                     warmup=opts.warmup))
        rows = results['batches'][batch] = {name: _summary(p) for name, p in parts.items()}
        for name, r in rows.items():
            lines.append(f"| {batch} | {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['median_cpu_s']:.3f} "
                         f"| {r['median_peak_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} |")
        pairs = [(name, 'official') for name in ('ours', 'before') if name in rows and 'official' in rows]
        pairs += [('ours', 'before')] if 'before' in rows else []
        for name, base in pairs:
            a, b = rows[name], rows[base]
            ratio = {'time': a['median_s'] / b['median_s'], 'time_min': a['min_s'] / b['min_s'],
                     'peak_rss': a['peak_rss_mb'] / b['peak_rss_mb']}
            results.setdefault('ratios', {})[f'{name} / {base}, batch {batch}'] = ratio
            ratio_lines.append(f"| {batch} | {name} / {base} | {ratio['time']:.2f}x | {ratio['time_min']:.2f}x "
                               f"| {ratio['peak_rss']:.2f}x |")
    if len(ratio_lines) > 3:
        lines += ratio_lines
    print('\n'.join(lines), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == '__main__':
    main()
