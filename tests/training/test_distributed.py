"""torch.distributed: two CPU processes (gloo) train exactly like one process on the whole batch."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import conftest
from conftest import MAIN_ENV, SRC, main_command
from core.io_utils import load_state
from helpers.architectures import BASELINES, tiny_flags

pytestmark = pytest.mark.slow  # every test here starts two or more processes

WORKER = conftest.TESTS / 'helpers' / 'ddp_worker.py'
TINY = ['--scale', '2', '--n_resgroups', '3', '--n_resblocks', '1', '--n_feats', '16', '--reduction', '2',
        '--n_clusters', '8', '--window_size', '32', '--ema_decay', '0.9', '--batch_size', '4', '--patch_size', '24',
        '--res_scale', '0.5', '--n_hashes', '2']


def run(cmd, out):
    proc = subprocess.run(cmd + [str(out)] + TINY, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    single, pair = tmp_path / 'single', tmp_path / 'pair'
    single.mkdir()
    pair.mkdir()
    run([sys.executable, str(WORKER)], single)
    run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(WORKER)], pair)

    one = torch.load(single / 'rank0.pt', weights_only=True)
    rank0 = torch.load(pair / 'rank0.pt', weights_only=True)
    rank1 = torch.load(pair / 'rank1.pt', weights_only=True)
    assert rank0.keys() == rank1.keys() == one.keys()
    for key in one:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.allclose(rank0[key].float(), one[key].float(), rtol=0, atol=1e-5), key
    # The centroids were initialised from the gathered samples and then moved by the moving average.
    assert bool(rank0['body.0.attention.0.kmeans.initted'])
    # Two rounds: each initialised from its own rows, the same rows on every rank.
    means = rank0['body.0.attention.0.kmeans.means']
    assert torch.allclose(means.norm(dim=-1), torch.ones(2, 8))
    assert not torch.allclose(means[0], means[1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# main.py --n_GPUs 2 on the CPU: two gloo processes spawned by main.py itself

MAIN_TINY = ['--template', 'demo', '--cpu', '--n_GPUs', '2', '--n_threads', '0', '--n_resgroups', '1',
             '--n_resblocks', '1', '--n_feats', '8', '--n_clusters', '4', '--window_size', '32', '--patch_size', '32',
             '--batch_size', '4', '--test_every', '3', '--print_every', '1', '--dist_timeout', '60']


def main_cmd(base: Path, *flags) -> list[str]:
    return main_command(base, *MAIN_TINY, *flags)


def run_main(base: Path, *flags) -> subprocess.CompletedProcess:
    return conftest.run_main(base, *MAIN_TINY, *flags)


def test_two_process_run_resumes_exactly(tmp_path):
    straight = run_main(tmp_path, '--save', 'straight', '--epochs', '3')
    assert straight.returncode == 0, straight.stdout + straight.stderr
    first = run_main(tmp_path, '--save', 'resumed', '--epochs', '2')
    assert first.returncode == 0, first.stdout + first.stderr
    resumed = run_main(tmp_path, '--load', 'resumed', '--resume', '-1', '--epochs', '3')
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # Rank 0 alone writes: one log line per batch, not two.
    log = (tmp_path / 'exp' / 'straight' / 'log.txt').read_text()
    assert log.count('[Epoch 3]\tLearning rate') == 1 and log.count('[Sample x2]\tPSNR') == 3
    ref = load_state(tmp_path / 'exp' / 'straight' / 'training_state.pt')
    got = load_state(tmp_path / 'exp' / 'resumed' / 'training_state.pt')
    assert got['epoch'] == ref['epoch'] == 3
    assert torch.equal(got['loss_log'], ref['loss_log'])
    assert all(torch.equal(got['model'][k], ref['model'][k]) for k in ref['model'])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _ranks(pid: int) -> list[int]:
    """The spawned training processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    ranks = []
    for child in _children(pid):
        try:
            cmdline = (Path('/proc') / str(child) / 'cmdline').read_bytes()
        except OSError:
            continue
        if b'spawn_main' in cmdline:
            ranks.append(child)
    return ranks


def test_a_killed_rank_ends_the_run_with_an_error(tmp_path):
    proc = subprocess.Popen(main_cmd(tmp_path, '--save', 'killed', '--epochs', '50'), cwd=SRC, env=MAIN_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith('[Epoch 2]'):
                ranks = _ranks(proc.pid)
                assert len(ranks) == 2, ''.join(seen)
                os.kill(ranks[-1], signal.SIGKILL)
                break
        start = time.monotonic()
        rest, _ = proc.communicate(timeout=120)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
    output = ''.join(seen) + rest
    assert proc.returncode == 1, output
    assert 'terminated with signal SIGKILL; the other processes were stopped' in output
    assert elapsed < 60
    assert not [p for p in _children(proc.pid)]


@pytest.mark.parametrize('name', BASELINES)
def test_baselines_train_on_two_processes(tmp_path, name):
    # DDP of a network without LCoA's centroids: no unused-parameter error (RCAN's placeholder 'a' is
    # frozen), NLSN's random rotations drawn per rank, rank 0 alone writes. Resuming is the same code
    # for every model (test_two_process_run_resumes_exactly).
    flags = ['--template', 'demo', '--cpu', '--n_GPUs', '2', '--n_threads', '0', *tiny_flags(name),
             '--patch_size', '32', '--batch_size', '4', '--test_every', '2',
             '--print_every', '1', '--dist_timeout', '60']
    done = conftest.run_main(tmp_path, *flags, '--save', 'r', '--epochs', '2')
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / 'exp' / 'r' / 'log.txt').read_text()
    assert log.count('[Epoch 2]\tLearning rate') == 1 and log.count('[Sample x2]\tPSNR') == 2
    state = load_state(tmp_path / 'exp' / 'r' / 'training_state.pt')
    assert state['epoch'] == 2 and torch.isfinite(state['loss_log']).all()
