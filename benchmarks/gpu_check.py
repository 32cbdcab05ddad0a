"""The GPU check: one script that runs the code on a CUDA machine, step by step, and keeps going past failures.

``bash benchmarks/gpu_check.sh [--smoke] [--out DIR] [--official_src DIR]`` (or ``python
benchmarks/gpu_check.py ...``) runs, in order (see ``STEPS``): the environment, the tests marked
``cuda``, fast vs reference attention, CPU vs CUDA output of the paper configuration, ``--chop`` and
``--self_ensemble``, short training runs in fp32 and bf16, resumption, ``upscale.py``, a one-process
``torchrun`` run, benchmarks of ours and of the official code, the fast test suite on the machine's
torch, and ``torch.compile`` against eager.

Each step runs in its own process (:mod:`gpu_check_steps`) with a timeout; a step that fails, crashes
or times out is recorded and the next one starts. A global ``--budget`` (seconds) bounds the whole run:
a step gets at most the time that is left, and steps that no longer fit are skipped. After every
step ``summary.json`` (everything), ``summary.md`` (tables to paste into benchmarks/RESULTS.md),
``gpu_check.log`` (progress and each step's last lines) and ``logs.tar.gz`` (every step's full log and
the text files of its run folders) are rewritten in ``--out``, so a run cut short still reports what
it did. Bulky files (data, checkpoints, images) stay in ``--work`` (default: a new temporary folder).

``--smoke`` runs every step on the CPU at tiny sizes (a couple of minutes), so the script cannot rot
unnoticed: ``tests/benchmarks/test_gpu_check.py`` runs it. What needs CUDA itself cannot be had there: the
``cuda`` tests say "skipped: no CUDA", ``torchrun`` starts gloo instead of NCCL, peak CUDA memory is
none, and "CUDA vs CPU" compares the CPU with itself. Without ``--smoke`` on a machine without CUDA,
every step sized for a GPU says "skipped: no CUDA".

The exit status is 0 when no step failed or timed out, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
STEPS_SCRIPT = BENCH_DIR / 'gpu_check_steps.py'
SCHEMA = 1
# A step is not started with less time than this left in the budget: it could not do anything useful.
MIN_STEP_S = 15.0
# Seconds of the budget kept for stopping a timed-out step (TERM, a grace for torchrun to stop its
# workers, which run in sessions of their own, then KILL) and writing the outputs.
RESERVE_S = 12.0
KILL_GRACE_S = 8.0
LOG_TAIL_LINES = 40
# --smoke takes about two minutes; the rest is room for a machine that is busy with other work.
DEFAULT_BUDGET_S = {'full': 560.0, 'smoke': 300.0}


@dataclass(frozen=True)
class Step:
    """One step: ``name`` is also the function in :mod:`gpu_check_steps` that runs it."""

    name: str
    title: str
    timeout_s: float
    smoke_timeout_s: float
    requires: tuple[str, ...] = ()

    def timeout(self, smoke: bool) -> float:
        return self.smoke_timeout_s if smoke else self.timeout_s


STEPS = (
    Step('environment', 'torch, CUDA, GPU and package versions', 45, 30),
    Step('pytest_cuda', 'the tests marked cuda (pytest -m cuda)', 90, 60),
    Step('attention', 'fast vs reference attention in the paper network, fp32 and bf16, with gradients', 60, 45),
    Step('cpu_vs_device', 'CPU vs CUDA output of the paper configuration on one fixed input', 60, 45),
    Step('chop_self_ensemble', '--chop and --self_ensemble on CUDA vs the CPU', 60, 45),
    Step('train_fp32', 'a short training run (main.py) in fp32, its PSNR', 60, 75),
    Step('train_bf16', 'the same run with --precision bf16, its PSNR against fp32', 60, 60),
    Step('train_compile', 'the fp32 run with --compile: epoch time against eager, PSNR', 90, 45,
         requires=('train_fp32',)),
    Step('resume', 'a run stopped halfway and resumed, against it straight through (--deterministic)', 110, 90,
         requires=('train_fp32',)),
    Step('upscale', 'upscale.py with the trained checkpoint, CUDA vs CPU and tiled', 60, 45, requires=('train_fp32',)),
    Step('torchrun', 'a 1-process torchrun run: the process group (NCCL) starts, one epoch trains', 60, 60),
    Step('bench_ours', 'forward and training step of the paper model, fp32 and bf16, time and peak memory', 60, 45),
    Step('bench_official', 'the same measurements with the official code (--official_src)', 75, 45),
    Step('pytest_fast', "the fast test suite (-m 'not slow') on this machine's torch", 90, 60),
    # Last: compiling the paper network may take minutes; it gets what is left of the budget.
    Step('bench_compile', 'torch.compile vs eager: compile time, forward and training step', 150, 60),
)
STEP_NAMES = tuple(s.name for s in STEPS)


@dataclass
class Config:
    """What every step process is told (written to ``<work>/config.json``)."""

    smoke: bool
    out: str
    work: str
    python: str
    repo: str = str(REPO)
    official_src: str | None = None
    fail_step: str | None = None


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join(text.splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the step and everything it started (its own process group): TERM, then KILL after a grace."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(cmd: list[str], *, log_path: Path, timeout_s: float, cwd: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in a new process group with its output in ``log_path``; kill the group at ``timeout_s``.

    Returns ``{'returncode', 'timed_out', 'wall_s'}`` (returncode None after a timeout).
    """
    start = time.monotonic()
    with open(log_path, 'ab') as log:
        log.write(f'$ {shlex.join(cmd)}\n'.encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=env, start_new_session=True)
        try:
            returncode, timed_out = proc.wait(timeout=max(timeout_s, 0.1)), False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            returncode, timed_out = None, True
    return {'returncode': returncode, 'timed_out': timed_out, 'wall_s': round(time.monotonic() - start, 2)}


def step_status(run: dict, result: dict | None) -> tuple[str, str | None]:
    """``(status, reason)`` of a finished step from its process and its result file."""
    if run['timed_out']:
        return 'timeout', f'killed after {run["timeout_s"]:.0f} s'
    if result is None:
        return 'failed', f'exit status {run["returncode"]}, no result written'
    status = result.get('status')
    if run['returncode'] != 0 and status != 'failed':
        return 'failed', result.get('error') or f'exit status {run["returncode"]}'
    if status not in ('ok', 'failed', 'skipped'):
        return 'failed', f'exit status {run["returncode"]}, result status {status!r}'
    return status, result.get('reason') or result.get('error')


class Runner:
    """Runs the steps in order and keeps the outputs in ``cfg.out`` current after each one."""

    def __init__(self, cfg: Config, steps: tuple[Step, ...], budget_s: float, argv: list[str]) -> None:
        self.cfg = cfg
        self.steps = steps
        self.budget_s = budget_s
        self.out = Path(cfg.out)
        self.work = Path(cfg.work)
        self.logs = self.work / 'logs'
        self.results = self.work / 'results'
        for folder in (self.out, self.logs, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.console = open(self.out / 'gpu_check.log', 'w', encoding='utf-8')  # noqa: SIM115
        self.summary = {
            'schema': SCHEMA, 'mode': 'smoke' if cfg.smoke else 'full', 'command': argv, 'started': now_iso(),
            'finished': None, 'wall_s': None, 'budget_s': budget_s, 'work': cfg.work, 'machine': None,
            'steps': {s.name: {'status': 'pending', 'title': s.title} for s in steps},
            'goals': [], 'failed': [],
        }
        write_json(self.work / 'config.json', asdict(cfg))

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.console.write(text + '\n')
        self.console.flush()

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def run(self) -> int:
        self.say(f'gpu_check ({self.summary["mode"]}): {len(self.steps)} steps, budget {self.budget_s:.0f} s, '
                 f'out {self.out}, work {self.work}')
        for step in self.steps:
            entry = self.summary['steps'][step.name]
            entry.update(self._run_one(step))
            self.say(f'[{step.name}] {entry["status"]}' + (f': {entry["reason"]}' if entry.get('reason') else '')
                     + (f' ({entry["wall_s"]:.1f} s)' if entry.get('wall_s') is not None else ''))
            if entry['status'] in ('failed', 'timeout'):
                self.say(f'--- last lines of {step.name}.log ---\n{tail(self.logs / f"{step.name}.log")}\n---')
            if step.name == 'environment' and entry.get('result'):
                self.summary['machine'] = entry['result'].get('machine')
            self._write_outputs()
        failed = self.summary['failed']
        # The tables again on the console: whoever reads only the output still gets the numbers.
        self.say('\n' + render_markdown(self.summary))
        self.say(f'gpu_check done in {time.monotonic() - self.start:.0f} s: '
                 + (f'{len(failed)} step(s) failed or timed out: {", ".join(failed)}' if failed else 'no step failed'))
        self.console.close()
        return 1 if failed else 0

    def _run_one(self, step: Step) -> dict:
        for needed in step.requires:
            status = self.summary['steps'].get(needed, {}).get('status')
            if status != 'ok':
                why = 'not run' if status in (None, 'pending') else status
                return {'status': 'skipped', 'reason': f'needs {needed} ({why})'}
        left = self.remaining() - RESERVE_S
        if left < MIN_STEP_S:
            return {'status': 'skipped', 'reason': f'out of time ({max(left, 0):.0f} s of the budget left)'}
        timeout_s = min(step.timeout(self.cfg.smoke), left)
        self.say(f'[{step.name}] {step.title} (timeout {timeout_s:.0f} s)')
        result_path = self.results / f'{step.name}.json'
        result_path.unlink(missing_ok=True)
        cmd = [self.cfg.python, '-u', str(STEPS_SCRIPT), '--step', step.name, '--config',
               str(self.work / 'config.json'), '--result', str(result_path)]
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        run = run_command(cmd, log_path=self.logs / f'{step.name}.log', timeout_s=timeout_s, cwd=Path(self.cfg.repo),
                          env=env)
        run['timeout_s'] = timeout_s
        result = read_json(result_path)
        status, reason = step_status(run, result)
        return {'status': status, 'reason': reason, 'wall_s': run['wall_s'], 'timeout_s': round(timeout_s, 1),
                'returncode': run['returncode'], 'result': (result or {}).get('data', {}),
                'checks': (result or {}).get('checks', []), 'log': f'logs/{step.name}.log'}

    def _write_outputs(self) -> None:
        s = self.summary
        s['wall_s'] = round(time.monotonic() - self.start, 1)
        s['finished'] = now_iso()
        s['failed'] = [name for name, e in s['steps'].items() if e['status'] in ('failed', 'timeout')]
        s['goals'] = goals(s['steps'])
        write_json(self.out / 'summary.json', s)
        (self.out / 'summary.md').write_text(render_markdown(s))
        self._pack_logs()

    def _pack_logs(self) -> None:
        """Every step log and the small text files of the run folders, in one archive."""
        tmp = self.out / 'logs.tar.gz.tmp'
        with tarfile.open(tmp, 'w:gz') as tar:
            for path in sorted(self.logs.glob('*.log')):
                tar.add(path, arcname=f'logs/{path.name}')
            for path in sorted(self.results.glob('*.json')):
                tar.add(path, arcname=f'results/{path.name}')
            runs = self.work / 'exp'
            if runs.is_dir():
                for path in sorted(runs.rglob('*')):
                    if path.is_file() and path.suffix in ('.txt', '.csv') and path.stat().st_size < 1 << 20:
                        tar.add(path, arcname=f'runs/{path.relative_to(runs)}')
        os.replace(tmp, self.out / 'logs.tar.gz')


# ----------------------------------------------------------------------------------------------
# goals and the markdown summary

# The goals, measured in one run: (name, step, how to get the value, comparison, target).
FORWARD_GOAL_CASE = 'forward x4 LR 192 fp32'
TRAIN_GOAL_CASE = 'train x2 16x48x48 fp32'


def _case(steps: dict, step: str, case: str, key: str):
    return steps.get(step, {}).get('result', {}).get('cases', {}).get(case, {}).get(key)


def _ratio(a, b):
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def goals(steps: dict) -> list[dict]:
    """The issue's goals with the values measured in this run (``value`` None when not measured)."""
    out = []

    def add(name: str, value, target: float, at_most: bool, note: str | None = None) -> None:
        met = None if value is None else (value <= target if at_most else value >= target)
        out.append({'goal': name, 'value': None if value is None else round(value, 4),
                    'target': f'{"<=" if at_most else ">="} {target:g}', 'met': met, 'note': note})

    fwd, train = FORWARD_GOAL_CASE, TRAIN_GOAL_CASE
    add(f'{fwd}: time ours / official', _ratio(_case(steps, 'bench_ours', fwd, 'median_ms'),
                                               _case(steps, 'bench_official', fwd, 'median_ms')), 0.5, True)
    add(f'{fwd}: peak CUDA memory ours / official', _ratio(_case(steps, 'bench_ours', fwd, 'peak_mb'),
                                                           _case(steps, 'bench_official', fwd, 'peak_mb')), 0.6, True)
    add(f'{train}: time ours / official', _ratio(_case(steps, 'bench_ours', train, 'median_ms'),
                                                 _case(steps, 'bench_official', train, 'median_ms')), 0.7, True)
    for case in (fwd, train):
        add(f'{case}: bf16 speed-up over fp32 (ours)',
            _ratio(_case(steps, 'bench_ours', case, 'median_ms'),
                   _case(steps, 'bench_ours', case.replace('fp32', 'bf16'), 'median_ms')), 1.5, False)
    delta = steps.get('train_bf16', {}).get('result', {}).get('psnr_minus_fp32_db')
    add('short training run: |PSNR bf16 - fp32| (dB)', None if delta is None else abs(delta), 0.02, True)
    ratio = steps.get('train_compile', {}).get('result', {}).get('epoch_time_over_fp32')
    add('short training run: --compile / eager seconds per epoch (after the first)', ratio, 1.0, True)
    for case, entry in steps.get('bench_compile', {}).get('result', {}).get('cases', {}).items():
        ratio = _ratio(entry.get('compiled_median_ms'), entry.get('eager_median_ms'))
        add(f'{case}: torch.compile / eager time', ratio, 1.0, True, entry.get('error'))
    return out


def _fmt(value, digits: int = 1) -> str:
    """A table cell: a number with ``digits`` decimals, '-' for none, text with its pipes escaped."""
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value).replace('|', '\\|').replace('\n', ' ')


def render_markdown(s: dict) -> str:
    """Tables of the summary, ready to paste into benchmarks/RESULTS.md."""
    machine = s.get('machine') or {}
    lines = [f'# GPU check ({s["mode"]}), {s["started"]}', '',
             f'GPU: {machine.get("gpu") or "none"}; torch {machine.get("torch", "?")}, CUDA {machine.get("cuda")}, '
             f'cuDNN {machine.get("cudnn")}, Python {machine.get("python", "?")}; {machine.get("cpus", "?")} CPUs. '
             f'Wall time {_fmt(s.get("wall_s"))} s of a {s["budget_s"]:.0f} s budget.', '',
             '| step | status | s | note |', '|---|---|---:|---|']
    for name, e in s['steps'].items():
        lines.append(f'| {name} | {e["status"]} | {_fmt(e.get("wall_s"))} | {_fmt((e.get("reason") or "")[:160])} |')
    checks = [(name, c) for name, e in s['steps'].items() for c in e.get('checks', [])]
    if checks:
        lines += ['', '| step | check | value | limit | ok |', '|---|---|---:|---:|---|']
        lines += [f'| {name} | {_fmt(c["name"])} | {_fmt(c.get("value"), 6)} | {_fmt(c.get("limit", ""))} | '
                  f'{"yes" if c["ok"] else "**no**"} |' for name, c in checks]
    train = [(name, s['steps'].get(name, {}).get('result', {}))
             for name in ('train_fp32', 'train_bf16', 'train_compile', 'torchrun')]
    if any(r.get('psnr') for _, r in train):
        lines += ['', '| run | epochs | steps | final PSNR (dB) | s per epoch (after the first) |',
                  '|---|---:|---:|---:|---:|']
        lines += [f'| {name} | {r.get("epochs", "-")} | {r.get("steps", "-")} | {_fmt(r.get("final_psnr"), 3)} | '
                  f'{_fmt(r.get("epoch_s_after_first"), 2)} |' for name, r in train if r.get('psnr')]
    ours = s['steps'].get('bench_ours', {}).get('result', {}).get('cases', {})
    official = s['steps'].get('bench_official', {}).get('result', {}).get('cases', {})
    if ours or official:
        lines += ['', '| case | ours ms | official ms | time ratio | ours peak MB | official peak MB | memory ratio |',
                  '|---|---:|---:|---:|---:|---:|---:|']
        for case in dict.fromkeys([*ours, *official]):
            a, b = ours.get(case, {}), official.get(case, {})
            lines.append(f'| {case} | {_fmt(a.get("median_ms") or a.get("error"))} | '
                         f'{_fmt(b.get("median_ms") or b.get("error"))} | '
                         f'{_fmt(_ratio(a.get("median_ms"), b.get("median_ms")), 2)} | {_fmt(a.get("peak_mb"), 0)} | '
                         f'{_fmt(b.get("peak_mb"), 0)} | {_fmt(_ratio(a.get("peak_mb"), b.get("peak_mb")), 2)} |')
    compiled = s['steps'].get('bench_compile', {}).get('result', {})
    if compiled.get('cases'):
        lines += ['', f'torch.compile backend {compiled.get("backend")}:', '',
                  '| case | compile s | eager ms | compiled ms | ratio | graph breaks |',
                  '|---|---:|---:|---:|---:|---:|']
        for case, e in compiled['cases'].items():
            lines.append(f'| {case} | {_fmt(e.get("compile_s"))} | {_fmt(e.get("eager_median_ms"))} | '
                         f'{_fmt(e.get("compiled_median_ms") or e.get("error"))} | '
                         f'{_fmt(_ratio(e.get("compiled_median_ms"), e.get("eager_median_ms")), 2)} | '
                         f'{_fmt(e.get("graph_breaks"))} |')
    if s.get('goals'):
        lines += ['', '| goal | value | target | met |', '|---|---:|---|---|']
        lines += [f'| {_fmt(g["goal"])} | {_fmt(g["value"], 3)} | {g["target"]} | '
                  f'{"-" if g["met"] is None else ("yes" if g["met"] else "**no**")}'
                  f'{" (" + _fmt(g["note"]) + ")" if g.get("note") else ""} |' for g in s['goals']]
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true', help='every step on the CPU at tiny sizes (a couple of minutes)')
    p.add_argument('--out', default=str(REPO / 'output' / 'gpu_check'),
                   help='folder for summary.json, summary.md, gpu_check.log and logs.tar.gz')
    p.add_argument('--work', default=None, help='folder for data, runs and logs (default: a new temporary folder)')
    p.add_argument('--official_src', default=None,
                   help="a checkout of YigangZhao/LCoAN's src/ folder: the official model as a same-run baseline")
    p.add_argument('--budget', type=float, default=None,
                   help=f'seconds for the whole run (default {DEFAULT_BUDGET_S["full"]:.0f}, smoke '
                        f'{DEFAULT_BUDGET_S["smoke"]:.0f}); steps that no longer fit are skipped')
    p.add_argument('--only', default=None, help=f'comma-separated steps to run, in the usual order: '
                   f'{",".join(STEP_NAMES)}')
    p.add_argument('--fail_step', default=None, choices=STEP_NAMES,
                   help='make this step fail at its start (checks that the later steps still run)')
    p.add_argument('--python', default=sys.executable, help='interpreter for the steps (default: this one)')
    opts = p.parse_args(argv)
    if opts.only:
        unknown = sorted(set(opts.only.split(',')) - set(STEP_NAMES))
        if unknown:
            p.error(f'--only: unknown step(s) {", ".join(unknown)}; steps: {", ".join(STEP_NAMES)}')
    if opts.official_src and not (Path(opts.official_src) / 'model' / 'lcoan.py').is_file():
        p.error(f"--official_src {opts.official_src}: no model/lcoan.py there (expected the official checkout's src/)")
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix='gpu_check-'))
    cfg = Config(smoke=opts.smoke, out=str(Path(opts.out).resolve()), work=str(work.resolve()), python=opts.python,
                 official_src=str(Path(opts.official_src).resolve()) if opts.official_src else None,
                 fail_step=opts.fail_step)
    selected = set(opts.only.split(',')) if opts.only else set(STEP_NAMES)
    steps = tuple(s for s in STEPS if s.name in selected)
    budget = opts.budget if opts.budget is not None else DEFAULT_BUDGET_S['smoke' if opts.smoke else 'full']
    return Runner(cfg, steps, budget, argv).run()


if __name__ == '__main__':
    sys.exit(main())
