"""Run folders as main.py leaves them, made in-process."""

from pathlib import Path

import torch

import option
from model import registry
from training.run_folder import RunFolder


def make_run(base: Path, *flags, save: str = 'run') -> Path:
    """A run folder as main.py leaves it: config.txt (written by the run folder itself) and model/model_latest.pt
    holding the weights of the network those flags build; returns the checkpoint."""
    args = option.parse_args(['--cpu', '--save_dir', str(base), '--save', save, '--scale', '2', *map(str, flags)])
    ckp = RunFolder(args)
    ckp.done()
    torch.manual_seed(0)
    net = registry.get(args.model).make_model(args)
    with torch.no_grad():
        net.train()(torch.rand(1, args.n_colors, 16, 16))  # a training step's forward initialises LCoA's centroids
    path = base / save / 'model' / 'model_latest.pt'
    torch.save(net.state_dict(), path)
    return path
