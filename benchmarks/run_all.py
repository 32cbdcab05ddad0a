"""Run every benchmark in turn (``make bench``); each prints its own table.

The numbers recorded in ``benchmarks/RESULTS.md`` come from these commands on a quiet machine:
nothing else should run while they do (two cores shared with anything else skew timings 1.5-10x).
Pass ``--quick`` for a smoke run with small sizes and one repeat.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _official import official_lcoan, official_nlsn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes, one repeat: checks that all scripts run')
    parser.add_argument('--threads', default='2')
    parser.add_argument('--rounds', default='1', help='bench_attention.py --rounds: its variants take turns in this '
                        'many processes each (3 keeps its ratios fair on a machine with changing load)')
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder: adds the official "
                        'code as a same-run baseline to the attention and model benchmarks')
    parser.add_argument('--nlsn_src', help="a checkout of the official NLSN's src/ folder: adds its NLSA modules and "
                        'network as same-run baselines, beside our NLSN when src/model/nlsn.py exists')
    opts = parser.parse_args()
    threads = ['--threads', opts.threads]
    # Check the checkouts now rather than after minutes of measurements.
    try:
        official = ['--official_src', str(official_lcoan(opts.official_src).src)] if opts.official_src else []
        lcoan = list(official)  # the training-step scripts compare with the official LCoAN only
        official += ['--nlsn_src', str(official_nlsn(opts.nlsn_src).src)] if opts.nlsn_src else []
    except FileNotFoundError as error:
        parser.error(str(error))
    if opts.quick:
        runs = [
            ['bench_attention.py', '--size', '32', '--repeats', '1', *threads, *official],
            ['bench_model.py', '--sizes', '24', '--scales', '2', '--chop_lr', '128', '--repeats', '1',
             '--only', 'infer,train,chop,roofline', *threads, *official],
            ['bench_data.py', '--images', '2', '--size', '480x320', '--samples', '8', '--repeats', '1'],
            ['bench_train_step.py', '--batches', '1', '--size', '24', '--rounds', '1', '--repeats', '1', *threads,
             *lcoan],
            ['profile_train_step.py', '--batch', '1', '--size', '24', '--steps', '1', *threads, *lcoan],
        ]
    else:
        runs = [
            ['bench_attention.py', '--size', '96', '--repeats', '5', '--rounds', opts.rounds, *threads,
             '--variants', 'lcoa_fast', 'lcoa_reference', 'nlsa', 'lcoa_fast_no_coa', 'lcoa_reference_no_coa',
             *official],
            ['bench_model.py', '--repeats', '3', *threads, *official],
            ['bench_data.py'],
            ['compare_models.py', '--repeats', '3', *threads],
            # The paired training step: fresh processes, ours and the official code taking turns.
            ['bench_train_step.py', '--batches', '2,16', '--rounds', '5,3', '--repeats', '3,2', *threads, *lcoan],
            ['profile_train_step.py', '--batch', '2', '--steps', '2', *threads, *lcoan],
        ]
    start = time.perf_counter()
    for run in runs:
        print(f'\n$ python benchmarks/{" ".join(run)}', flush=True)
        begun = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / run[0]), *run[1:]], check=False)
        print(f'({run[0]}: {time.perf_counter() - begun:.0f} s)', flush=True)
        if done.returncode:
            return done.returncode
    print(f'\nall benchmarks: {(time.perf_counter() - start) / 60:.1f} min', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
