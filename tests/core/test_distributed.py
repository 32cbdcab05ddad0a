"""torch.distributed: two CPU processes (gloo) train exactly like one process on the whole batch, resume
exactly, compile, and train every baseline (test_distributed_failures.py: a process that fails ends the run
with one line).

The tests marked slow start two or more processes.
"""

import shutil
import subprocess
import sys

import pytest
import torch

import helpers
from core.io_utils import load_state
from helpers import two_processes
from helpers.architectures import BASELINES, tiny_flags

WORKER = helpers.TESTS / 'helpers' / 'ddp_worker.py'
TINY = ['--scale', '2', '--n_resgroups', '3', '--n_resblocks', '1', '--n_feats', '16', '--reduction', '2',
        '--n_clusters', '8', '--window_size', '32', '--ema_decay', '0.9', '--batch_size', '4', '--patch_size', '24',
        '--res_scale', '0.5', '--n_hashes', '2']


def run(cmd, out):
    proc = subprocess.run(cmd + [str(out)] + TINY, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
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

@pytest.fixture(scope='module')
def two_process_runs(tmp_path_factory):
    """Runs of main.py --n_GPUs 2: 'straight' (2 epochs), 'eager' (1 epoch), 'resumed' ('eager' copied, then
    resumed to 2 epochs) and 'compiled' (1 epoch, --compile eager); returns ``{name: completed process}``
    and the base folder."""
    base = tmp_path_factory.mktemp('ddp')
    done = {'straight': two_processes.run(base, '--save', 'straight', '--epochs', '2'),
            'eager': two_processes.run(base, '--save', 'eager', '--epochs', '1')}
    assert done['eager'].returncode == 0, done['eager'].stdout + done['eager'].stderr
    shutil.copytree(base / 'exp' / 'eager', base / 'exp' / 'resumed')
    done['resumed'] = two_processes.run(base, '--load', 'resumed', '--resume', '-1', '--epochs', '2')
    done['compiled'] = two_processes.run(base, '--save', 'compiled', '--epochs', '1', '--compile', 'eager')
    for name, proc in done.items():
        assert proc.returncode == 0, (name, proc.stdout + proc.stderr)
    return done, base


@pytest.mark.slow
def test_two_process_run_resumes_exactly(two_process_runs):
    _, base = two_process_runs
    # Rank 0 alone writes: one log line per batch, not two.
    log = (base / 'exp' / 'straight' / 'log.txt').read_text()
    assert log.count('[Epoch 2]\tLearning rate') == 1 and log.count('[Sample x2]\tPSNR') == 2
    ref = load_state(base / 'exp' / 'straight' / 'training_state.pt')
    got = load_state(base / 'exp' / 'resumed' / 'training_state.pt')
    assert got['epoch'] == ref['epoch'] == 2
    assert torch.equal(got['loss_log'], ref['loss_log'])
    assert all(torch.equal(got['model'][k], ref['model'][k]) for k in ref['model'])


@pytest.mark.slow
def test_a_compiled_two_process_run_trains_like_the_eager_one(two_process_runs):
    # --compile eager: dynamo traces the network (no code generation). The centroids' collectives stay
    # outside the graph (traced, they become asynchronous collectives that torch reports as never waited
    # for), and so does the evaluation's self-weight statistic: nothing of dynamo reaches the output.
    done, base = two_process_runs
    runs = {}
    for name in ('eager', 'compiled'):
        output = done[name].stdout + done[name].stderr
        assert 'unwaited' not in output and '_dynamo' not in output and 'Graph break' not in output, output
        runs[name] = load_state(base / 'exp' / name / 'training_state.pt')
    eager, compiled = runs['eager'], runs['compiled']
    assert eager['epoch'] == compiled['epoch'] == 1
    assert torch.allclose(compiled['loss_log'], eager['loss_log'], rtol=1e-4, atol=1e-6)
    for key, value in eager['model'].items():
        assert torch.allclose(compiled['model'][key].float(), value.float(), rtol=1e-3, atol=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize('name', BASELINES)
def test_baselines_train_on_two_processes(tmp_path, name):
    # DDP of a network without LCoA's centroids: no unused-parameter error (RCAN's placeholder 'a' is
    # frozen), NLSN's random rotations drawn per rank, rank 0 alone writes. Resuming is the same code
    # for every model (test_two_process_run_resumes_exactly).
    flags = ['--template', 'demo', '--cpu', '--n_GPUs', '2', '--n_threads', '0', *tiny_flags(name),
             '--patch_size', '32', '--batch_size', '4', '--test_every', '2',
             '--print_every', '1', '--dist_timeout', '300']
    done = helpers.run_main(tmp_path, *flags, '--save', 'r', '--epochs', '1')
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / 'exp' / 'r' / 'log.txt').read_text()
    assert log.count('[Epoch 1]\tLearning rate') == 1 and log.count('[Sample x2]\tPSNR') == 1
    state = load_state(tmp_path / 'exp' / 'r' / 'training_state.pt')
    assert state['epoch'] == 1 and torch.isfinite(state['loss_log']).all()
