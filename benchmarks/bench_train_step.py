"""Paired training-step benchmark: ours against the official LCoAN, fresh processes taking turns.

One step is what training repeats: forward, L1 loss, backward and an Adam step, on a batch of LR
patches (x2, 48 x 48 by default) in the paper configuration (``bench_model.PAPER_FLAGS``: 10 groups
x 4 blocks, 128 features, 128 clusters, window 384, fp32, CPU). For every batch size, ``--rounds``
rounds each start one fresh process per side (ours, the official code with ``--official_src``, and
the before side when given) in turn, so all sides see the same spread of load on a shared machine;
each process runs ``--warmup`` untimed steps, then ``--repeats`` timed ones (``--rounds`` and
``--repeats`` take one value for all batch sizes or one per batch size). Reported per side: the
median and the minimum step time over all rounds, and the peak RSS (``ru_maxrss``) of its processes
(their median and largest); the ratios divide ours by the official.

``--before_rev REV`` (a git revision of this repository, whose ``src/`` is extracted to a temporary
folder) or ``--before_src DIR`` (another checkout's ``src/``) adds a third side, imported in a sealed
block like the official code, so a change's before and after are measured in one run.

Usage: ``python benchmarks/bench_train_step.py --official_src LCOAN/src [--before_rev REV] [--batches 2,16]
[--rounds 5,3] [--repeats 3,2]``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
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


def extract_src(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` of this repository, written under ``into``."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(['git', '-C', str(repo), 'archive', '--format=tar', rev, 'src'], capture_output=True,
                             check=False)
    if archive.returncode:
        raise ValueError(f'--before_rev {rev}: {archive.stderr.decode().strip()}')
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter='data')
    return into / 'src'


def _per_batch(parser: argparse.ArgumentParser, flag: str, text: str, batches: list[int]) -> list[int]:
    values = [int(v) for v in text.split(',')]
    if len(values) == 1:
        values *= len(batches)
    if len(values) != len(batches) or min(values) < 1:
        parser.error(f'{flag} {text}: one positive count, or one per batch size ({len(batches)})')
    return values


def _summary(parts: list[dict]) -> dict:
    times = [t for part in parts for t in part['times_s']]
    rss = [part['peak_rss_mb'] for part in parts]
    return {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times,
            'median_cpu_s': statistics.median(t for part in parts for t in part['cpu_times_s']),
            'peak_rss_mb': max(rss), 'median_peak_rss_mb': statistics.median(rss), 'peak_rss_mb_all': rss}


def _measure(opts: argparse.Namespace, batches: list[int], rounds: list[int], repeats: list[int],
             official: str | None, before: str | None) -> dict:
    shape = dict(scale=opts.scale, size=opts.size)
    info = machine_info(opts.threads)
    results: dict = {'machine': info, 'batches': {}}
    lines = [f"machine: {info['cpu']} ({info['logical_cpus']} logical CPUs), torch {info['torch']}, "
             f"{opts.threads} threads, {info['date']}",
             f'one step: x{opts.scale}, {opts.size}x{opts.size} LR patches, paper configuration, fp32, Adam, L1; '
             f'fresh processes per side taking turns, {opts.warmup} warm-up step(s) each', '',
             '| batch | side | rounds x timed steps | median s | min s | median CPU s '
             '| peak RSS MB (median / max of processes) |',
             '|---:|---|---:|---:|---:|---:|---:|']
    ratio_lines = ['', '| batch | ratio | time (median) | time (min) | peak RSS (max) |', '|---:|---|---:|---:|---:|']
    for batch, batch_rounds, batch_repeats in zip(batches, rounds, repeats, strict=True):
        sides = {'ours': ('bench_model:train_step', dict(shape, batch=batch, impl='fast'))}
        if before:
            sides['before'] = ('bench_train_step:before_train_step', dict(shape, batch=batch, src=before))
        if official:
            sides['official'] = ('bench_model:official_train_step', dict(shape, batch=batch, src=official))
        parts: dict[str, list[dict]] = {name: [] for name in sides}
        for round_index in range(batch_rounds):
            for name, (fn_name, kwargs) in sides.items():
                print(f'batch {batch}: {name} (round {round_index + 1} of {batch_rounds}) ...', file=sys.stderr,
                      flush=True)
                parts[name].append(run_in_subprocess(fn_name, kwargs, threads=opts.threads, repeats=batch_repeats,
                                                     warmup=opts.warmup))
        rows = results['batches'][batch] = {name: _summary(p) for name, p in parts.items()}
        for name, r in rows.items():
            lines.append(f"| {batch} | {name} | {batch_rounds} x {batch_repeats} | {r['median_s']:.3f} "
                         f"| {r['min_s']:.3f} | {r['median_cpu_s']:.3f} "
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
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder (the baseline)")
    before_side = parser.add_mutually_exclusive_group()
    before_side.add_argument('--before_rev', help='a git revision of this repository: its src/ is a third side')
    before_side.add_argument('--before_src', help="another checkout of this repository's src/ folder: a third side")
    parser.add_argument('--batches', default='2,16', help='comma-separated batch sizes')
    parser.add_argument('--size', type=int, default=48, help='LR patch height and width')
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--rounds', default='5', help='fresh processes per side and batch, taking turns '
                        '(one count, or one per batch size)')
    parser.add_argument('--repeats', default='3', help='timed steps per process (one count, or one per batch size)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per process before those')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--json', type=Path)
    opts = parser.parse_args(argv)
    batches = [int(b) for b in opts.batches.split(',')]
    rounds = _per_batch(parser, '--rounds', opts.rounds, batches)
    repeats = _per_batch(parser, '--repeats', opts.repeats, batches)
    with tempfile.TemporaryDirectory(prefix='bench_train_step_') as scratch:
        try:
            official = str(official_lcoan(opts.official_src).src) if opts.official_src else None
            before_src = str(extract_src(opts.before_rev, Path(scratch))) if opts.before_rev else opts.before_src
            before = str(before_source(before_src).src) if before_src else None
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        results = _measure(opts, batches, rounds, repeats, official, before)
    if opts.before_rev:
        results['before_rev'] = opts.before_rev
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == '__main__':
    main()
