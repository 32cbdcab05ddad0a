"""torch.distributed: two CPU processes (gloo) train exactly like one process on the whole batch."""

import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).resolve().parent / 'helpers' / 'ddp_worker.py'
TINY = ['--scale', '2', '--n_resgroups', '3', '--n_resblocks', '1', '--n_feats', '16', '--reduction', '2',
        '--n_clusters', '8', '--window_size', '32', '--ema_decay', '0.9', '--batch_size', '4', '--patch_size', '24',
        '--res_scale', '0.5']


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
    assert torch.allclose(rank0['body.0.attention.0.kmeans.means'].norm(dim=-1), torch.ones(1, 8))
