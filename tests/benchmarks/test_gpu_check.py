"""benchmarks/gpu_check.sh: the prepared GPU check, kept alive on the CPU by its --smoke run.

The slow test runs every step of the script on the CPU at tiny sizes, with one step made to fail on
purpose, and checks that the later steps still ran and that the summary holds every step and its
numbers. The other tests check the driver's pieces (timeouts, statuses, goals, log parsing) directly.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

import helpers

BENCH = helpers.ROOT / 'benchmarks'
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402
import gpu_check_steps  # noqa: E402

# A stand-in for the official checkout: the file layout the benchmarks import, a tiny network.
FAKE_OFFICIAL_LCOAN = textwrap.dedent('''
    import torch.nn as nn


    def make_model(args, parent=False):
        scale = args.scale[0]
        return nn.Sequential(nn.Conv2d(3, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
''')


@pytest.fixture
def fake_official(tmp_path):
    src = tmp_path / 'official' / 'src'
    (src / 'model').mkdir(parents=True)
    (src / 'model' / '__init__.py').write_text('')
    (src / 'model' / 'lcoan.py').write_text(FAKE_OFFICIAL_LCOAN)
    return src


@pytest.mark.slow
def test_smoke_runs_every_step_and_a_failing_step_does_not_stop_the_others(tmp_path, fake_official):
    out, work = tmp_path / 'out', tmp_path / 'work'
    # One thread a process: the suite runs beside this test in another process (make test)
    env = {**os.environ, 'PYTHON': sys.executable, 'OMP_NUM_THREADS': '1'}
    done = subprocess.run(['bash', str(BENCH / 'gpu_check.sh'), '--smoke', '--out', str(out), '--work', str(work),
                           '--official_src', str(fake_official), '--fail_step', 'attention'],
                          capture_output=True, text=True, env=env, timeout=600)
    summary = json.loads((out / 'summary.json').read_text())
    steps = summary['steps']
    report = done.stdout + done.stderr

    assert done.returncode == 1, report  # the injected failure
    assert summary['mode'] == 'smoke' and summary['failed'] == ['attention'], report
    assert list(steps) == list(gpu_check.STEP_NAMES)
    assert steps['attention']['status'] == 'failed'
    assert 'injected failure (--fail_step)' in steps['attention']['reason']
    others = {name: e['status'] for name, e in steps.items() if name != 'attention'}
    assert set(others.values()) <= {'ok', 'skipped'}, {n: steps[n].get('reason') for n in others}
    skipped = {name: steps[name]['reason'] for name, status in others.items() if status == 'skipped'}
    # Only what needs CUDA itself may skip on the CPU: the tests marked cuda.
    assert set(skipped) <= {'pytest_cuda'}, skipped
    if skipped:
        assert re.match(r'no CUDA: [1-9]\d* tests selected, all skipped', skipped['pytest_cuda'])

    results = {name: e['result'] for name, e in steps.items()}
    assert results['environment']['machine']['torch']
    assert all(c['ok'] for name, e in steps.items() if name != 'attention' for c in e['checks'])
    for name in ('train_fp32', 'train_bf16'):
        assert len(results[name]['psnr']) == 2 and results[name]['device'] == 'cpu'
    assert isinstance(results['train_bf16']['psnr_minus_fp32_db'], float)
    assert len(results['train_compile']['psnr']) == 2 and results['train_compile']['backend'] == 'eager'
    assert isinstance(results['train_compile']['psnr_minus_fp32_db'], float)
    assert results['resume']['resumed_psnr'] == results['resume']['straight_psnr']  # exact on the CPU
    assert results['torchrun']['backend'] == 'gloo' and len(results['torchrun']['psnr']) == 1
    forward = ['forward x2 LR 16 fp32', 'forward x2 LR 16 bf16', 'forward x4 LR 16 fp32', 'forward x4 LR 16 bf16']
    cases = [*forward, 'train x2 2x16x16 fp32', 'train x2 2x16x16 bf16']
    for name in ('bench_ours', 'bench_official'):
        assert list(results[name]['cases']) == cases
        assert all(c['median_ms'] > 0 and c['peak_mb'] is None for c in results[name]['cases'].values())
    compiled = results['bench_compile']
    assert compiled['backend'] == 'eager' and list(compiled['cases']) == ['forward x2 LR 16 fp32', cases[4]]
    assert all(c['eager_median_ms'] > 0 and c['compiled_median_ms'] > 0 for c in compiled['cases'].values())
    assert compiled['compile_failed'] == []
    assert results['pytest_fast']['counts']['collected'] > 100
    assert results['cpu_vs_device']['rel_max_fp32'] == 0  # the CPU against itself in --smoke
    assert {g['goal'] for g in summary['goals']} >= {'short training run: |PSNR bf16 - fp32| (dB)'}

    markdown = (out / 'summary.md').read_text()
    assert '| attention | failed |' in markdown and '| forward x2 LR 16 fp32 |' in markdown
    assert '[attention] failed: RuntimeError: injected failure' in (out / 'gpu_check.log').read_text()
    with tarfile.open(out / 'logs.tar.gz') as tar:
        names = set(tar.getnames())
    assert {f'logs/{name}.log' for name in gpu_check.STEP_NAMES} <= names
    assert 'runs/train_fp32/log.txt' in names and 'results/bench_ours.json' in names
    assert sorted(p.name for p in out.iterdir()) == ['gpu_check.log', 'logs.tar.gz', 'summary.json', 'summary.md']


def test_steps_that_do_not_fit_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / 'out'
    argv = ['--smoke', '--budget', '1', '--out', str(out), '--work', str(tmp_path / 'work'), '--only',
            'environment,resume,upscale']
    assert gpu_check.main(argv) == 0
    steps = json.loads((out / 'summary.json').read_text())['steps']
    assert {name: (e['status'], e['reason']) for name, e in steps.items()} == {
        'environment': ('skipped', 'out of time (0 s of the budget left)'),
        'resume': ('skipped', 'needs train_fp32 (not run)'), 'upscale': ('skipped', 'needs train_fp32 (not run)')}
    assert (out / 'summary.md').is_file() and (out / 'logs.tar.gz').is_file()


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie too: ended, not yet reaped by its new parent)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except OSError:
        return True


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / 'grandchild.pid'
    grandchild = (f'import os, pathlib, time; p = pathlib.Path({str(pid_file)!r}); t = p.with_suffix(".tmp"); '
                  't.write_text(str(os.getpid())); t.rename(p); time.sleep(60)')
    child = f'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", {grandchild!r}]); time.sleep(60)'
    # The timeout must strike after the grandchild started, which a loaded machine delays: doubled until it does.
    timeout_s = 1
    while True:
        run = gpu_check.run_command([sys.executable, '-c', child], log_path=tmp_path / 'step.log',
                                    timeout_s=timeout_s, cwd=tmp_path)
        assert run['timed_out'] and run['returncode'] is None
        if pid_file.exists():
            break
        timeout_s *= 2
        assert timeout_s <= 64, 'the grandchild never started'
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 30  # the signal reached it already; a bound that only a survivor reaches
    while not _ended(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _ended(pid)
    assert (tmp_path / 'step.log').read_text().startswith('$ ')


@pytest.mark.parametrize(('run', 'result', 'expected'), [
    (dict(timed_out=True, returncode=None, timeout_s=60), {'status': 'running'}, ('timeout', 'killed after 60 s')),
    (dict(timed_out=False, returncode=-9), None, ('failed', 'exit status -9, no result written')),
    (dict(timed_out=False, returncode=1), {'status': 'failed', 'error': 'ValueError: x'}, ('failed', 'ValueError: x')),
    (dict(timed_out=False, returncode=-11), {'status': 'running'}, ('failed', 'exit status -11')),
    (dict(timed_out=False, returncode=0), {'status': 'skipped', 'reason': 'no CUDA'}, ('skipped', 'no CUDA')),
    (dict(timed_out=False, returncode=0), {'status': 'ok'}, ('ok', None)),
], ids=['timeout', 'no-result', 'exception', 'crash-mid-step', 'skipped', 'ok'])
def test_step_status(run, result, expected):
    assert gpu_check.step_status(run, result) == expected


def _bench(median_ms, peak_mb):
    return {'status': 'ok', 'result': {'cases': {
        'forward x4 LR 192 fp32': {'median_ms': median_ms, 'peak_mb': peak_mb},
        'forward x4 LR 192 bf16': {'median_ms': median_ms / 2, 'peak_mb': peak_mb},
        'train x2 16x48x48 fp32': {'median_ms': 3 * median_ms, 'peak_mb': peak_mb},
        'train x2 16x48x48 bf16': {'error': 'OutOfMemoryError: CUDA out of memory.'}}}}


def test_goals_are_same_run_ratios():
    steps = {'bench_ours': _bench(40.0, 1000.0), 'bench_official': _bench(100.0, 2000.0),
             'train_bf16': {'result': {'psnr_minus_fp32_db': -0.03}},
             'bench_compile': {'result': {'cases': {
                 'forward x4 LR 192 fp32': {'eager_median_ms': 40.0, 'compiled_median_ms': 30.0},
                 'train x2 16x48x48 fp32': {'eager_median_ms': 120.0, 'error': 'Unsupported: graph break'}}}}}
    goals = {g['goal']: g for g in gpu_check.goals(steps)}
    assert goals['forward x4 LR 192 fp32: time ours / official'] == {
        'goal': 'forward x4 LR 192 fp32: time ours / official', 'value': 0.4, 'target': '<= 0.5', 'met': True,
        'note': None}
    assert goals['forward x4 LR 192 fp32: peak CUDA memory ours / official']['value'] == 0.5
    assert goals['train x2 16x48x48 fp32: time ours / official']['met'] is True
    assert goals['forward x4 LR 192 fp32: bf16 speed-up over fp32 (ours)']['value'] == 2.0
    unmeasured = goals['train x2 16x48x48 fp32: bf16 speed-up over fp32 (ours)']
    assert unmeasured['value'] is None and unmeasured['met'] is None
    psnr = goals['short training run: |PSNR bf16 - fp32| (dB)']
    assert psnr['value'] == 0.03 and psnr['met'] is False
    assert goals['forward x4 LR 192 fp32: torch.compile / eager time']['value'] == 0.75
    assert goals['train x2 16x48x48 fp32: torch.compile / eager time']['note'] == 'Unsupported: graph break'
    summary = {'mode': 'full', 'started': 'now', 'wall_s': 1.0, 'budget_s': 285.0, 'machine': None,
               'steps': {name: {'status': 'ok', **entry} for name, entry in steps.items()},
               'goals': list(goals.values())}
    markdown = gpu_check.render_markdown(summary)
    assert '| forward x4 LR 192 fp32 | 40.0 | 100.0 | 0.40 | 1000 | 2000 | 0.50 |' in markdown
    assert '| train x2 16x48x48 bf16 | OutOfMemoryError: CUDA out of memory. |' in markdown
    assert '| short training run: \\|PSNR bf16 - fp32\\| (dB) | 0.030 | <= 0.02 | **no** |' in markdown  # escaped pipes
    assert '(Unsupported: graph break)' in markdown


def test_pytest_summaries_are_parsed():
    out = 'sss\n7 skipped, 588 deselected in 3.90s\n'
    assert gpu_check_steps.parse_pytest(out) == {'counts': {'skipped': 7, 'deselected': 588}, 'problems': []}
    out = ('FAILED tests/test_x.py::test_a - AssertionError\nERROR tests/test_y.py - ImportError\n'
           '1 failed, 10 passed, 1 error, 2 warnings in 9.1s\n')
    parsed = gpu_check_steps.parse_pytest(out)
    assert parsed['counts'] == {'failed': 1, 'passed': 10, 'errors': 1, 'warnings': 2}
    assert parsed['problems'] == ['FAILED tests/test_x.py::test_a - AssertionError',
                                  'ERROR tests/test_y.py - ImportError']
    assert gpu_check_steps.parse_pytest('570/595 tests collected (25 deselected) in 4.1s')['counts'] == {
        'collected': 570, 'deselected': 25}


def test_a_run_folder_is_read(tmp_path):
    (tmp_path / 'psnr_log.csv').write_text('epoch,set,scale,psnr,ssim\n1,Sample,2,28.5,0.8\n2,Sample,2,29.25,0.85\n')
    (tmp_path / 'loss_log.csv').write_text('epoch,L1\n1,0.25\n2,0.125\n')
    (tmp_path / 'log.txt').write_text('Made LCoAN with 1,234 parameters on cuda:0.\n[Epoch 1] mean [L1: 0.25] in 3.0s\n'
                                      'Resumed /x/training_state.pt after epoch 1: learning rate in use 5.00e-04\n'
                                      '[Epoch 2] mean [L1: 0.125] in 1.5s\n')
    run = gpu_check_steps.read_run(tmp_path)
    assert run == {'psnr': [28.5, 29.25], 'loss': [0.25, 0.125], 'epoch_s': [3.0, 1.5], 'parameters': 1234,
                   'device': 'cuda:0', 'resumed': True, 'final_psnr': 29.25, 'epoch_s_after_first': 1.5}


def test_bad_flags_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(['--only', 'environment,nonsense'])
    assert stop.value.code == 2 and 'unknown step(s) nonsense' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--official_src', str(tmp_path)])
    assert 'no model/lcoan.py there' in capsys.readouterr().err
