"""Stand-ins for ``data.Data`` and ``model.Model`` that make a ``Trainer`` run in a second, and the tiny
``main.py`` configuration of the end-to-end tests."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import skimage.data
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import helpers
import option
from helpers import MAIN_ENV, SRC, main_command
from loss import Loss
from metrics import quantize
from trainer import Trainer
from training import interrupts
from training.run_folder import RunFolder

PHOTOS = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())


# ----------------------------------------------------------------------------------------------
# stand-ins for data.Data and model.Model


class PairSet(Dataset):
    """(lr, hr, name) crops of photographs; lr is the 2x box-downsampled hr on the 8-bit grid."""

    def __init__(self, name: str, n: int, size: int, benchmark: bool = True, offset: int = 0) -> None:
        self.name, self.benchmark = name, benchmark
        self.items = []
        for i in range(n):
            photo = PHOTOS[i % len(PHOTOS)]
            y, x = 50 + 17 * (i + offset), 80 + 23 * (i + offset)
            hr = torch.from_numpy(photo[y:y + size, x:x + size].copy()).permute(2, 0, 1).float() / 255
            lr = quantize(F.avg_pool2d(hr[None], 2)[0], 1)
            self.items.append((lr, hr, f'{name.lower()}{i:02d}'))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        with torch.no_grad():  # start close to nearest-neighbour upsampling
            self.body.weight.mul_(0.01)
            self.body.bias.zero_()
        self.register_buffer('seen', torch.zeros(()))  # stands in for the centroid buffers

    def forward(self, x):
        if self.training:
            self.seen += 1
        return F.interpolate(x, scale_factor=2, mode='nearest') + self.up(self.body(x))


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Net()

    def forward(self, lr):
        return self.model(lr)

    def get_model(self):
        return self.model


def make_args(tmp_path, *extra) -> SimpleNamespace:
    return option.parse_args(['--template', 'demo', '--save_dir', str(tmp_path), '--save', 'run', '--cpu',
                              '--n_threads', '0', '--epochs', '3', '--print_every', '2', '--lr', '1e-3',
                              '--batch_size', '2', *map(str, extra)])


def make_data(train_items=None, batch_size=2) -> SimpleNamespace:
    train = train_items if train_items is not None else PairSet('Train', 8, 16)
    generator = torch.Generator()
    return SimpleNamespace(
        loader_train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        loader_test=[DataLoader(PairSet('Set5', 2, 32, offset=9), batch_size=1)])


def make_trainer(args, data=None, seed=0):
    torch.manual_seed(seed)
    ckp = RunFolder(args)
    model = Wrapper()
    loss = Loss(args, ckp) if not args.test_only else None
    return Trainer(args, data or make_data(), model, loss, ckp), ckp, model


def run_epochs(trainer, n):
    for _ in range(n):
        trainer.train()
        trainer.test()


def weights(model):
    return {k: v.clone() for k, v in model.get_model().state_dict().items()}


def log_text(ckp):
    return ckp.get_path('log.txt').read_text()


# -- main.py on the built-in Sample data with a tiny LCoAN

TINY = ['--template', 'demo', '--cpu', '--n_resgroups', '1', '--n_resblocks', '1', '--n_feats', '8',
        '--n_clusters', '4', '--window_size', '32', '--patch_size', '32', '--batch_size', '2', '--test_every', '4',
        '--epochs', '3', '--print_every', '1']


def main_cmd(base: Path, *flags) -> list[str]:
    return main_command(base, *TINY, *flags)


def run_main(base: Path, *flags) -> subprocess.CompletedProcess:
    """In this process (:func:`helpers.main_here`); :func:`start_held` runs it in another."""
    return helpers.main_here(base, *TINY, *flags)


def start_held(base: Path, batch: int, *flags) -> tuple[subprocess.Popen, list[str]]:
    """``main.py`` (the tiny configuration) started with the test-only hold of :mod:`training.interrupts`:
    returns once the run waits before training its ``batch``-th batch (counted over all epochs), with the
    lines it printed so far. The run is exactly there, however loaded the machine: signal or kill it.
    """
    return wait_held(launch_held(base, batch, *flags), batch)


def launch_held(base: Path, batch: int, *flags) -> subprocess.Popen:
    """:func:`start_held` without the wait (:func:`wait_held`): runs under different ``base`` folders start
    side by side."""
    env = {**MAIN_ENV, interrupts.HOLD_ENV: str(batch)}
    return subprocess.Popen(main_cmd(base, *flags), cwd=SRC, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_held(proc: subprocess.Popen, batch: int) -> tuple[subprocess.Popen, list[str]]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(interrupts.HOLD_LINE):
            return proc, seen
    _, err = proc.communicate()
    raise AssertionError(f'main.py ended (status {proc.returncode}) before batch {batch}:\n{"".join(seen)}{err}')
