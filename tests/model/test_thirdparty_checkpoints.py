"""Checkpoints written by other code bases load and reproduce that code's output.

``tests/fixtures/thirdparty/`` (``make_fixtures.py`` there says how it was made) holds BasicSR's EDSR
and RCAN (``{'params', 'params_ema'}``, keys ``conv_first``, ``body.N.conv1`` ...), spandrel's RCAN
and super-image's EDSR, saved by that code with random weights, with an LR input and its output.
RCAN's own releases (``RCAN_BIX2.pt``) lack the placeholder ``a``, as spandrel's files do; the
official fixture ``rcan_x4.pt`` without it stands for them.
"""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import api
import helpers
import model
import option
from model import checkpoint
from model.checkpoint import detect

FIXTURES = helpers.FIXTURES / 'thirdparty'
# name -> options the weights cannot tell (BasicSR's x3 fixture was built with res_scale 0.1), read layout.
CASES = {
    'basicsr_edsr_x2': ({}, None), 'basicsr_edsr_x3': ({'res_scale': 0.1}, None), 'basicsr_rcan_x4': ({}, None),
    'spandrel_rcan_x2': ({}, None), 'spandrel_rcan_x3': ({}, None), 'superimage_edsr_x2': ({}, 'super-image'),
    'superimage_rcan_x2': ({}, 'super-image'),
}


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f'{name}.io.pt', weights_only=True)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy().astype(np.uint8)


@pytest.mark.parametrize('name', sorted(CASES))
def test_third_party_checkpoints_reproduce_their_output(name):
    overrides, layout = CASES[name]
    io = fixture(name)
    net = api.load_pretrained(FIXTURES / f'{name}.pth', device='cpu', layout=layout, **overrides)
    rgb_range = float(net.sr_args.rgb_range)
    with torch.no_grad():
        out = net(io['input'] * rgb_range) / rgb_range
    if name.startswith('spandrel'):
        out = out.clamp(0, 1)  # spandrel clamps its output
    assert (out - io['output']).abs().max() < 1e-6 * max(1.0, float(io['output'].abs().max()))
    # As images: api.upscale on the 8-bit input gives the other code's output rounded to 8 bits.
    ours = api.upscale(net, to_uint8(io['input'])).astype(int)
    assert np.abs(ours - to_uint8(io['output']).astype(int)).max() <= 1


def test_basicsr_layout_is_detected_with_its_defaults_as_assumed():
    found = checkpoint.read(FIXTURES / 'basicsr_rcan_x4.pth').detected
    assert (found.model, found.options) == ('RCAN', dict(scale=4, n_colors=3, n_feats=16, n_resgroups=2,
                                                         n_resblocks=2, reduction=4))
    assert found.assumed == {'res_scale': 1.0, 'rgb_range': 255}
    assert 'in the layout of BasicSR' in found.describe()
    ckpt = checkpoint.read(FIXTURES / 'basicsr_edsr_x2.pth')
    state, found = ckpt.state, ckpt.detected
    ema = torch.load(FIXTURES / 'basicsr_edsr_x2.pth', weights_only=True)['params_ema']
    assert torch.equal(state['head.0.weight'], ema['conv_first.weight'])  # params_ema, not params


@pytest.mark.parametrize('name', ['superimage_edsr_x2', 'superimage_rcan_x2'])
def test_super_image_weights_without_the_layout_load_but_compute_another_function(name):
    """Its keys are the official ones: only the user can say that its forward runs on [0, 1] images."""
    io = fixture(name)
    net = api.load_pretrained(FIXTURES / f'{name}.pth', device='cpu')
    with torch.no_grad():
        wrong = net(io['input'] * 255) / 255
    assert (wrong - io['output']).abs().max() > 0.1


def test_rcan_without_its_placeholder_loads_everywhere(tmp_path):
    official = torch.load(helpers.FIXTURES / 'official' / 'rcan_x4.pt', weights_only=True)
    state = {k: v for k, v in official['state_dict'].items() if k != 'a'}
    path = tmp_path / 'RCAN_BIX4.pt'
    torch.save(state, path)
    found = detect.detect_architecture(state)
    assert found.model == 'RCAN' and found.scale == 4
    net = api.load_pretrained(path, device='cpu')
    with torch.no_grad():
        out = net(official['input'])
    torch.testing.assert_close(out, official['output'], rtol=1e-5, atol=1e-4)
    # --pre_train with every architecture flag given, and with none.
    log = []
    ckp = type('Ckp', (), {'write_log': lambda self, m: log.append(m)})()
    for flags in ([], ['--model', 'RCAN', '--scale', '4', '--n_resgroups', str(official['config']['n_resgroups']),
                       '--n_resblocks', str(official['config']['n_resblocks'])]):
        args = option.parse_main_args(['--pre_train', str(path), '--cpu', *flags])
        loaded = model.Model(args, ckp).get_model().eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(official['input']), official['output'], rtol=1e-5, atol=1e-4)
    assert any('has no a (a placeholder' in m for m in log)


def test_basicsr_checkpoint_through_pre_train_uses_the_given_rgb_range(tmp_path):
    io = fixture('basicsr_edsr_x2')
    log = []
    args = option.parse_main_args(['--pre_train', str(FIXTURES / 'basicsr_edsr_x2.pth'), '--cpu'])
    assert 'assumed (not stored in the weights): res_scale=1.0, rgb_range=255' in args.pre_train_detected
    assert 'in the layout of BasicSR' in args.pre_train_detected
    net = model.Model(args, type('Ckp', (), {'write_log': lambda self, m: log.append(m)})()).get_model().eval()
    assert any('keys were renamed to ours; rgb_range 255 and the DIV2K mean assumed' in m for m in log)
    with torch.no_grad():
        assert (net(io['input'] * 255) / 255 - io['output']).abs().max() < 1e-6
    # A model trained in BasicSR with img_range 1: --rgb_range 1 builds that mean shift.
    args = option.parse_main_args(['--pre_train', str(FIXTURES / 'basicsr_edsr_x2.pth'), '--cpu', '--rgb_range', '1'])
    net = model.Model(args, type('Ckp', (), {'write_log': lambda self, m: None})()).get_model()
    assert torch.allclose(net.add_mean.bias, torch.tensor([0.4488, 0.4371, 0.4040]))


def test_upscale_py_writes_the_png_spandrel_writes(tmp_path):
    io = fixture('spandrel_rcan_x2')
    image = tmp_path / 'in.png'
    iio.imwrite(image, to_uint8(io['input']))
    run = subprocess.run([sys.executable, 'upscale.py', '--weights', str(FIXTURES / 'spandrel_rcan_x2.pth'), str(image),
                          '-o', str(tmp_path / 'out'), '--cpu'], cwd=helpers.SRC, env=helpers.MAIN_ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    written = iio.imread(tmp_path / 'out' / 'in_x2.png').astype(int)
    assert np.abs(written - to_uint8(io['output']).astype(int)).max() <= 1
