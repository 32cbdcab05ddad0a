"""main.py on two CPU processes (gloo) with a tiny LCoAN, for the tests of torch.distributed."""

import subprocess
from pathlib import Path

import helpers

FLAGS = ['--template', 'demo', '--cpu', '--n_GPUs', '2', '--n_threads', '0', '--n_resgroups', '1',
         '--n_resblocks', '1', '--n_feats', '8', '--n_clusters', '4', '--window_size', '32', '--patch_size', '32',
         '--batch_size', '4', '--test_every', '3', '--print_every', '1', '--dist_timeout', '300']


def command(base: Path, *flags) -> list[str]:
    return helpers.main_command(base, *FLAGS, *flags)


def run(base: Path, *flags) -> subprocess.CompletedProcess:
    return helpers.run_main(base, *FLAGS, *flags)
