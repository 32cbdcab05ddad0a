"""src/convert.py: every architecture round-trips through .safetensors and the spandrel/BasicSR layouts with
identical outputs; bad input is one line and leaves nothing behind."""

import subprocess
import sys

import pytest
import torch

import api
import convert
import helpers
from helpers.architectures import tiny_flags
from helpers.runs import make_run
from model import registry
from model.checkpoint import read as read_checkpoint

THIRDPARTY = helpers.FIXTURES / 'thirdparty'


def checkpoint(path, name: str, scale: int = 2, **options):
    arch = registry.get(name)
    net = arch.build(**{'scale': scale, **arch.tiny, **options}).eval()
    torch.save(net.state_dict(), path)
    return net


def output(net, x):
    torch.manual_seed(0)
    with torch.no_grad():
        return net(x)


def run(*argv):
    return convert.main([str(a) for a in argv])


@pytest.mark.filterwarnings('ignore:k-means centroids are not initialised')
@pytest.mark.parametrize('name', registry.names())
def test_every_architecture_round_trips_through_safetensors_and_the_other_layouts(tmp_path, name, capsys):
    net = checkpoint(tmp_path / 'in.pt', name)
    layouts = ['ours', 'spandrel'] + [lay.name for lay in registry.get(name).layouts if lay.from_ours]
    for layout in layouts:
        there = tmp_path / f'{layout}.safetensors'
        assert run(tmp_path / 'in.pt', there, '--layout', layout) == 0
        back = tmp_path / f'{layout}_back.pt'
        assert run(there, back) == 0
        state = torch.load(back, weights_only=True)  # a plain state_dict, read with weights_only
        assert list(state) == list(net.state_dict())
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        assert all(v.is_contiguous() for v in state.values())
    out = capsys.readouterr().out
    assert out.count('read back, the same output (max |difference| ') == 2 * len(layouts)


def test_layouts_hold_what_the_other_code_expects(tmp_path, capsys):
    checkpoint(tmp_path / 'rcan.pt', 'RCAN', scale=4, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4)
    assert run(tmp_path / 'rcan.pt', tmp_path / 'spandrel.pt', '--layout', 'spandrel') == 0
    assert 'a' not in torch.load(tmp_path / 'spandrel.pt', weights_only=True)
    assert run(tmp_path / 'rcan.pt', tmp_path / 'basicsr.pth', '--layout', 'basicsr') == 0
    keys = list(torch.load(tmp_path / 'basicsr.pth', weights_only=True))
    assert keys[:2] == ['conv_first.weight', 'conv_first.bias'] and keys[-2:] == ['conv_last.weight', 'conv_last.bias']
    assert 'body.0.residual_group.0.rcab.3.attention.1.weight' in keys and not any('mean' in k for k in keys)
    # The same keys as BasicSR's own file for the same configuration.
    theirs = torch.load(THIRDPARTY / 'basicsr_rcan_x4.pth', weights_only=True)['params']
    assert sorted(keys) == sorted(theirs)
    assert 'In BasicSR: network_g: {type: RCAN, num_in_ch: 3, num_out_ch: 3, num_feat: 16, num_group: 2, ' \
           'num_block: 2, squeeze_factor: 4, upscale: 4, res_scale: 1.0, img_range: 255}' in capsys.readouterr().out


def test_basicsr_layout_of_a_model_trained_with_rgb_range_1(tmp_path, capsys):
    net = checkpoint(tmp_path / 'edsr.pt', 'EDSR', rgb_range=1)
    assert run(tmp_path / 'edsr.pt', tmp_path / 'b.safetensors', '--layout', 'basicsr') == 0
    assert 'img_range: 1}' in capsys.readouterr().out
    ckpt = read_checkpoint(tmp_path / 'b.safetensors', given={'rgb_range': 1})
    state, found = ckpt.state, ckpt.detected
    assert found.assumed['rgb_range'] == 1 and torch.equal(state['add_mean.bias'], net.state_dict()['add_mean.bias'])


@pytest.mark.parametrize('name', ['superimage_edsr_x2', 'superimage_rcan_x2'])
def test_super_image_weights_are_converted_on_request(tmp_path, name):
    io = torch.load(THIRDPARTY / f'{name}.io.pt', weights_only=True)
    assert run(THIRDPARTY / f'{name}.pth', tmp_path / 'ours.safetensors', '--from', 'super-image') == 0
    net = api.load_pretrained(tmp_path / 'ours.safetensors', device='cpu')  # no flag needed any more
    difference = (output(net, io['input'] * 255) / 255 - io['output']).abs().max()
    assert difference < 1e-6 * max(1.0, float(io['output'].abs().max()))


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / 'text.pt').write_text('hello')
    torch.save({'fc.weight': torch.zeros(2, 2)}, tmp_path / 'other.pt')
    checkpoint(tmp_path / 'rdn.pt', 'RDN')
    (tmp_path / 'exists.pt').write_bytes(b'keep')
    (tmp_path / 'folder.pt').mkdir()
    for argv, message in (
            (['missing.pt', 'o.pt'], 'checkpoint {d}/missing.pt: no such file'),
            (['text.pt', 'o.pt'], 'checkpoint {d}/text.pt: a text file, not a PyTorch checkpoint'),
            (['other.pt', 'o.pt'], 'checkpoint {d}/other.pt: not a super-resolution checkpoint'),
            (['rdn.pt', 'o.onnx'], '{d}/o.onnx: the extension says the format'),
            (['rdn.pt', 'o.pt', '--layout', 'basicsr'], '--layout basicsr: no basicsr layout of RDN is known'),
            (['rdn.pt', 'o.pt', '--from', 'nope'], "--from 'nope': allowed: basicsr, super-image"),
            (['rdn.pt', 'exists.pt'], '{d}/exists.pt exists; give --overwrite to replace it'),
            (['rdn.pt', 'folder.pt', '--overwrite'], '{d}/folder.pt: a folder; give the file to write (e.g. '
                                                     '{d}/folder.pt/rdn.pt)')):
        assert run(*[tmp_path / a if a.endswith(('.pt', '.onnx')) else a for a in argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ' + message.format(d=tmp_path)) and err.count('\n') == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exists.pt', 'folder.pt', 'other.pt', 'rdn.pt', 'text.pt']
    assert not any((tmp_path / 'folder.pt').iterdir())
    assert (tmp_path / 'exists.pt').read_bytes() == b'keep'


def test_a_failed_check_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    checkpoint(tmp_path / 'edsr.pt', 'EDSR')
    (tmp_path / 'out.pt').write_bytes(b'old')
    monkeypatch.setattr(convert, 'CHECK_TOLERANCE', -1.0)
    assert run(tmp_path / 'edsr.pt', tmp_path / 'out.pt', '--overwrite') == 2
    assert 'the written weights give another output' in capsys.readouterr().err
    assert (tmp_path / 'out.pt').read_bytes() == b'old' and len(list(tmp_path.iterdir())) == 2


def test_command_line(tmp_path):
    checkpoint(tmp_path / 'nlsn.pt', 'NLSN')
    done = subprocess.run([sys.executable, 'convert.py', str(tmp_path / 'nlsn.pt'), str(tmp_path / 'n.safetensors')],
                          cwd=helpers.SRC, env=helpers.MAIN_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f'{tmp_path / "nlsn.pt"}: NLSN x2 checkpoint; options read from ')


EDSR_RUN = ['--model', 'EDSR', '--n_resblocks', '1', '--n_feats', '8', '--res_scale', '0.1', '--rgb_range', '1']


def test_a_runs_options_survive_the_basicsr_layout_and_back(tmp_path, capsys):
    """res_scale and rgb_range come from the run's config.txt; BasicSR's file does not hold them, so the way
    back takes them as flags, and the result upscales as the run's own network."""
    weights = make_run(tmp_path, *EDSR_RUN)
    x = torch.rand(1, 3, 10, 12)
    want = output(api.load_pretrained(weights, device='cpu'), x)
    assert run(weights, tmp_path / 'b.pth', '--layout', 'basicsr') == 0
    out = capsys.readouterr().out
    assert f'from {weights.parent.parent / "config.txt"}: res_scale=0.1' in out.splitlines()[0]
    assert 'num_block: 1, upscale: 2, res_scale: 0.1, img_range: 1}' in out
    assert run(tmp_path / 'b.pth', tmp_path / 'back.pt', '--rgb_range', '1', '--res_scale', '0.1') == 0
    assert 'as given: rgb_range=1, res_scale=0.1' in capsys.readouterr().out
    back = api.load_pretrained(tmp_path / 'back.pt', device='cpu', rgb_range=1, res_scale=0.1)
    assert torch.equal(output(back, x), want)


def test_the_safetensors_of_a_run_take_its_config(tmp_path, capsys):
    weights = make_run(tmp_path, *tiny_flags('RDN'), '--rgb_range', '1')
    assert run(weights, weights.with_suffix('.safetensors')) == 0
    assert run(weights.with_suffix('.safetensors'), tmp_path / 'out.pt') == 0
    config = weights.parent.parent / 'config.txt'
    read = [line for line in capsys.readouterr().out.splitlines() if ': RDN x2 checkpoint; ' in line]
    assert [line.split(': RDN')[0] for line in read] == [str(weights), str(weights.with_suffix('.safetensors'))]
    assert all(f'; from {config}: rgb_range=1.' in line for line in read)
