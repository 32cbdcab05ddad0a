"""Shared benchmark plumbing: every measurement runs in a fresh Python process.

A fresh process per measurement makes the peak resident memory (``ru_maxrss``) belong to that
measurement alone and keeps allocator and thread-pool state from leaking between measurements.

A *setup function* is named ``'module:function'``, where ``module`` is importable from
``benchmarks/`` or ``src/`` (both are on the child's ``sys.path``). It is called with the given
keyword arguments and returns a zero-argument callable: the code to time. Whatever the setup
function does before returning is not timed (building models, making inputs).

    result = run_in_subprocess('bench_attention:lcoa_chain', {'size': 96, 'impl': 'fast'},
                               threads=2, repeats=5)
    result['median_s'], result['peak_rss_mb']
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SRC_DIR = BENCH_DIR.parent / 'src'
_RESULT_PREFIX = 'BENCH_RESULT '
# NLSN's published configuration (its README / demo.sh): 32 residual blocks of 256 features, an NLSA
# module before the first and after every 8th block (5 in all), 4 hash rounds, chunks of 144,
# query/key reduction 4, residual scaling 0.1.
NLSN_FLAGS = ['--model', 'NLSN', '--n_resblocks', '32', '--n_feats', '256', '--res_scale', '0.1', '--chunk_size', '144',
              '--n_hashes', '4', '--rgb_range', '1', '--cpu']
NLSN_ATTENTION = dict(n_hashes=4, chunk_size=144, reduction=4)
_TIMING_ENV_PREFIXES = ('MALLOC_', 'THP_', 'OMP_', 'MKL_', 'KMP_', 'LD_PRELOAD')


def add_src_to_path() -> None:
    """Make ``src/`` importable (``from model import ...``), as when running from ``src/``."""
    for path in (str(SRC_DIR), str(BENCH_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)


def missing_nlsn(*, network: bool) -> str | None:
    """Why our NLSN re-implementation cannot be benchmarked, or None when it can.

    ``network=False`` asks for the attention module only (``model.blocks.nlsa.NonLocalSparseAttention``);
    ``network=True`` also for the network (``model.nlsn.make_model``) and our options parsing
    NLSN's documented flags (``NLSN_FLAGS``).
    """
    add_src_to_path()
    try:
        from model.blocks.nlsa import NonLocalSparseAttention  # noqa: F401
        if network:
            from model.nlsn import make_model  # noqa: F401
    except ImportError as error:
        return f'{error}'
    if network:
        import option

        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                option.parse_args(NLSN_FLAGS + ['--scale', '2'])
        except SystemExit:
            return f'src/option.py does not take NLSN\'s flags: {err.getvalue().strip().splitlines()[-1]}'
    return None


def chained(blocks, x):
    """A closure that runs ``blocks`` one after the other on ``x`` without gradients (what is timed)."""
    import torch  # not at the top: the official-code loaders import this module before torch's set-up

    def run():
        with torch.no_grad():
            h = x
            for block in blocks:
                h = block(h)
        return h

    return run


def initialise_centroids(net) -> None:
    """Mark every k-means module's centroids initialised (unit rows), as in a trained checkpoint."""
    import torch

    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, 'initted'):
                module.means.copy_(torch.nn.functional.normalize(module.means, dim=-1))
                module.initted.fill_(True)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    """Where and when a benchmark ran: CPU, core count, torch and Python versions, threads, date."""
    import torch

    return {
        'cpu': cpu_model(),
        'logical_cpus': os.cpu_count(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'threads': threads if threads is not None else torch.get_num_threads(),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        # Allocator and threading settings change timings a lot (page faults, thread pools).
        'env': {k: v for k, v in sorted(os.environ.items()) if k.startswith(_TIMING_ENV_PREFIXES)},
    }


def child_result(cmd: list[str], marker: str, what: str, *, threads: int, timeout_s: float | None = None):
    """Run ``cmd`` (a fresh Python process on ``threads`` threads) and return the JSON it printed after
    ``marker`` on its last such line of stdout; ``RuntimeError`` naming ``what`` with the child's stderr if it
    fails or prints none."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    results = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f'{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
    return json.loads(results[-1][len(marker):])


def run_in_subprocess(fn_name: str, kwargs: dict, *, threads: int = 2, repeats: int = 5, warmup: int = 1,
                      timeout_s: float | None = None) -> dict:
    """Time the callable returned by setup function ``fn_name(**kwargs)`` in a fresh process.

    Returns ``{'median_s', 'min_s', 'times_s', 'peak_rss_mb', 'threads'}``: the median and minimum
    over ``repeats`` timed calls after ``warmup`` untimed ones, and the process's peak resident
    memory (setup included). Raises ``RuntimeError`` with the child's stderr if it fails.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', fn_name, '--kwargs', json.dumps(kwargs),
           '--threads', str(threads), '--repeats', str(repeats), '--warmup', str(warmup)]
    return child_result(cmd, _RESULT_PREFIX, f'benchmark {fn_name}({kwargs})', threads=threads, timeout_s=timeout_s)


def interleaved(jobs: dict[str, tuple[str, dict]], *, rounds: int, threads: int, repeats: int,
                log=None) -> dict[str, dict]:
    """Measure several setups in ``rounds`` rounds, each round one fresh process per setup, in turn.

    On a machine whose load changes (other programs on the same cores), measuring A five times and
    then B five times compares A's quiet minutes with B's busy ones; taking turns spreads the load
    over all of them, so ratios of the medians stay meaningful. ``jobs`` maps a row name to
    ``(setup function, kwargs)``; each row's result pools the times of all its rounds.
    """
    pooled: dict[str, list[dict]] = {name: [] for name in jobs}
    for round_index in range(rounds):
        for name, (fn_name, kwargs) in jobs.items():
            if log:
                log(f'running {name} (round {round_index + 1} of {rounds}) ...')
            pooled[name].append(run_in_subprocess(fn_name, kwargs, threads=threads, repeats=repeats))
    results = {}
    for name, parts in pooled.items():
        times = [t for part in parts for t in part['times_s']]
        cpu_times = [t for part in parts for t in part['cpu_times_s']]
        results[name] = {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times,
                         'median_cpu_s': statistics.median(cpu_times), 'cpu_times_s': cpu_times,
                         'peak_rss_mb': max(part['peak_rss_mb'] for part in parts), 'threads': threads,
                         'rounds': rounds}
    return results


def _load(fn_name: str):
    module_name, _, function = fn_name.partition(':')
    if not function:
        raise ValueError(f"setup function must be 'module:function', got {fn_name!r}")
    return getattr(importlib.import_module(module_name), function)


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description='Run one timed measurement (used by run_in_subprocess).')
    parser.add_argument('--child', required=True)
    parser.add_argument('--kwargs', required=True)
    parser.add_argument('--threads', type=int, required=True)
    parser.add_argument('--repeats', type=int, required=True)
    parser.add_argument('--warmup', type=int, required=True)
    args = parser.parse_args(argv)
    add_src_to_path()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fn = _load(args.child)(**json.loads(args.kwargs))
    for _ in range(args.warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    # CPU seconds of the process (all its threads): less sensitive than wall time to other programs
    # taking the cores, though not immune (shared caches, threads that wait for each other).
    result = {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times,
              'median_cpu_s': statistics.median(cpu_times), 'cpu_times_s': cpu_times,
              'peak_rss_mb': peak_kb / 1024, 'threads': args.threads}
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == '__main__':
    _child(sys.argv[1:])
