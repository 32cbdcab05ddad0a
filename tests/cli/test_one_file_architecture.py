"""An architecture is one file: ``docs/adding_a_model.md`` followed to the letter.

A throwaway architecture (a few convolutions) is written as one new file into a copy of ``src/``;
without touching any other file, it trains one epoch with ``main.py``, is evaluated with
``--test_only``, upscales an image with ``upscale.py`` from its weights alone (detected), tiled and
untiled, and is exported to ONNX.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data
from PIL import Image

import helpers
from helpers import MAIN_ENV, SRC

# Everything docs/adding_a_model.md asks a model file to define, for a network of four convolutions.
TINYNET = '''
"""TinyNet: four convolutions and a sub-pixel upsampler, the smallest network this codebase can train."""

import argparse

from torch import Tensor, nn

from model import spec
from model.blocks import common


def make_model(args: argparse.Namespace) -> 'TinyNet':
    return TinyNet(scale=args.scale[0], n_feats=args.n_feats, n_colors=args.n_colors, rgb_range=args.rgb_range)


class TinyNet(nn.Module):
    def __init__(self, *, scale: int, n_feats: int, n_colors: int = 3, rgb_range: float = 255) -> None:
        super().__init__()
        self.sub_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=-1)
        self.stem = nn.Conv2d(n_colors, n_feats, 3, padding=1)
        self.mix = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU())
        self.upsample = common.Upsampler(scale=scale, n_feats=n_feats)
        self.out = nn.Conv2d(n_feats, n_colors, 3, padding=1)
        self.add_mean = common.div2k_mean_shift(n_colors=n_colors, rgb_range=rgb_range, sign=1)
        self.upsampler_prefix = 'upsample.'

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.sub_mean(x))
        return self.add_mean(self.out(self.upsample(x + self.mix(x))))


def _read_options(state: spec.StateDict) -> dict:
    n_feats, n_colors = spec.shape(state, 'stem.weight')[:2]
    return dict(scale=spec.upsampler_scale(state, 'upsample.') or 0, n_colors=n_colors, n_feats=n_feats)


def _shapes(*, scale: int, n_colors: int, n_feats: int, **_) -> spec.Shapes:
    return {**spec.mean_shifts(n_colors), **spec.conv('stem.', n_feats, n_colors, 3),
            **spec.conv('mix.0.', n_feats, n_feats, 3), **spec.upsampler('upsample.', scale, n_feats),
            **spec.conv('out.', n_colors, n_feats, 3)}


ARCH = spec.Architecture(
    name='TinyNet',
    description='four convolutions (a test of the one-file rule)',
    make_model=make_model,
    flags=(spec.N_FEATS,),
    defaults=dict(n_feats=16),
    scales=(2, 3, 4),
    demo=dict(n_feats=8),
    tiny=dict(n_feats=4),
    local=True,
    signature='stem.weight',
    key_pattern=r"""(sub|add)_mean\\.(weight|bias) | (stem|mix\\.0|out)\\.(weight|bias)
                  | upsample\\.\\d+\\.(weight|bias)""",
    read_options=_read_options,
    shapes=_shapes,
)
'''


def run_all(cwd, *commands) -> list[subprocess.CompletedProcess]:
    """``python <program>.py ARGS`` for each ``(program, ARGS)`` in turn, run from ``cwd`` in one subprocess
    (helpers/entry_points.py); each must succeed."""
    script = helpers.TESTS / 'helpers' / 'entry_points.py'
    todo = json.dumps([[program, [str(a) for a in argv]] for program, argv in commands])
    done = subprocess.run([sys.executable, str(script), todo], cwd=cwd, env=MAIN_ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = [subprocess.CompletedProcess([program, *argv], r['status'], r['stdout'], r['stderr'])
               for (program, argv), r in zip(commands, json.loads(done.stdout), strict=True)]
    for result in results:
        assert result.returncode == 0, (result.args, result.stdout + result.stderr)
    return results


@pytest.mark.slow
def test_a_new_architecture_is_one_file(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns('__pycache__'))
    before = sorted(p.relative_to(src) for p in src.rglob('*') if p.is_file())
    (src / 'model' / 'tinynet.py').write_text(textwrap.dedent(TINYNET).lstrip())
    after = sorted(p.relative_to(src) for p in src.rglob('*') if p.is_file() and '__pycache__' not in p.parts)
    assert sorted(set(after) - set(before)) == [src.joinpath('model', 'tinynet.py').relative_to(src)]
    data, exp = tmp_path / 'data', tmp_path / 'exp'
    common = ['--dir_data', data, '--save_dir', exp, '--cpu', '--n_threads', '0']
    weights = exp / 'tiny' / 'model' / 'model_latest.pt'
    image = tmp_path / 'in' / 'coffee.png'
    image.parent.mkdir()
    Image.fromarray(skimage.data.coffee()[100:160, 200:270]).save(image)
    helpers.sample_data(data)

    # In one process, in this order: --help; train one epoch (the demo template takes the architecture's own
    # demo configuration); evaluate the weights with every architecture flag read from the checkpoint; upscale
    # an image from the weights alone, untiled and in tiles of 16 LR pixels; convert to .safetensors and upscale
    # from it; export to ONNX (export.py compares onnxruntime with PyTorch itself).
    helped, _, evaluated, whole, _, _, _, exported = run_all(
        src,
        ('main', ['--help']),
        ('main', ['--template', 'demo', '--model', 'tinynet', '--epochs', '1', '--test_every', '3', '--save', 'tiny',
                  *common]),
        ('main', ['--test_only', '--pre_train', weights, '--data_test', 'Sample', '--save', 'tiny_eval', *common]),
        ('upscale', ['--weights', weights, image, '-o', tmp_path / 'whole', '--cpu']),
        ('upscale', ['--weights', weights, image, '-o', tmp_path / 'tiled', '--cpu', '--tile', '16']),
        ('convert', [weights, tmp_path / 'tiny.safetensors']),
        ('upscale', ['--weights', tmp_path / 'tiny.safetensors', image, '-o', tmp_path / 'st', '--cpu']),
        ('export', ['--weights', weights, '--onnx', tmp_path / 'tiny.onnx']))

    assert 'TinyNet (four convolutions' in ' '.join(helped.stdout.split())
    config = (exp / 'tiny' / 'config.txt').read_text()
    assert 'model: TinyNet' in config and 'n_feats: 8' in config

    out = evaluated.stdout
    assert 'TinyNet x2 checkpoint' in out and 'n_feats=8' in out and 'rgb_range=1' in out
    assert '[Sample x2]\tPSNR: ' in out

    # A local network tiles exactly.
    assert 'TinyNet x2' in whole.stdout
    untiled = np.asarray(Image.open(tmp_path / 'whole' / 'coffee_x2.png'))
    tiled = np.asarray(Image.open(tmp_path / 'tiled' / 'coffee_x2.png'))
    assert untiled.shape == (120, 140, 3)
    assert np.abs(untiled.astype(int) - tiled.astype(int)).max() <= 1

    # Its .safetensors (keys sorted as text: out before upsample) is detected as its .pt, the same pixels.
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'st' / 'coffee_x2.png')), untiled)

    assert (tmp_path / 'tiny.onnx').stat().st_size > 0
    assert 'max abs difference' in exported.stdout
