"""model.checkpoint: a weights file is read once per use, and every option of its network says where it came from."""

import shutil
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

import api
import model
import option
from core.io_utils import save_weights
from helpers.runs import make_run
from model import checkpoint
from model.checkpoint import run_config
from model.lcoan import LCoAN
from training import resume

EDSR = ['--model', 'EDSR', '--n_resblocks', '1', '--n_feats', '8', '--res_scale', '0.1', '--rgb_range', '1']
TINY_LCOAN = dict(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
                  n_hashes=1, n_colors=3, rgb_range=1)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files opened as weights (torch.load or safetensors), in order."""
    opened: list[str] = []
    torch_load, safetensors_load = torch.load, safetensors.torch.load_file

    def counted_torch(path, *args, **kwargs):
        opened.append(str(path))
        return torch_load(path, *args, **kwargs)

    def counted_safetensors(path, *args, **kwargs):
        opened.append(str(path))
        return safetensors_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', counted_torch)
    monkeypatch.setattr(safetensors.torch, 'load_file', counted_safetensors)
    return opened


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_log(self, msg: str) -> None:
        self.lines.append(msg)


def tiny_lcoan_file(path):
    torch.manual_seed(0)
    net = LCoAN(**TINY_LCOAN)
    torch.save(net.state_dict(), path)
    return net.state_dict()


@pytest.mark.parametrize('all_flags', [False, True])
def test_main_reads_the_pre_train_file_once(tmp_path, reads, all_flags):
    path = tmp_path / 'x2.pt'
    saved = tiny_lcoan_file(path)
    flags = ['--model', 'LCoAN', '--scale', '2', '--n_resgroups', '2', '--n_resblocks', '1', '--n_feats', '8',
             '--reduction', '2', '--n_clusters', '4', '--window_size', '16', '--n_hashes', '1', '--rgb_range', '1']
    args = option.parse_main_args(['--pre_train', str(path), '--cpu', *(flags if all_flags else [])])
    log = Log()
    net = model.Model(args, log)
    assert reads == [str(path)]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    assert log.lines[-1] == f'Loaded --pre_train {path} ({len(saved)} tensors).'


def test_pre_train_set_after_parsing_is_read_by_the_wrapper(tmp_path, reads):
    path = tmp_path / 'x2.pt'
    saved = tiny_lcoan_file(path)
    args = option.parse_args(['--template', 'demo', '--cpu', '--n_feats', '8', '--n_resgroups', '2', '--n_resblocks',
                              '1', '--reduction', '2', '--n_clusters', '4', '--scale', '2', '--rgb_range', '1'])
    args.pre_train = str(path)
    net = model.Model(args, Log())
    assert reads == [str(path)]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize('suffix', ['.pt', '.safetensors'])
def test_load_pretrained_reads_the_file_once(tmp_path, reads, suffix):
    weights = make_run(tmp_path, *EDSR)
    path = weights.with_suffix(suffix)
    if suffix != '.pt':
        save_weights(torch.load(weights, weights_only=True), path)
        reads.clear()
    net = api.load_pretrained(path, device='cpu')
    assert reads == [str(path)]
    assert net.sr_args.res_scale == 0.1


def test_evaluating_a_run_reads_its_network_file_once(tmp_path, reads):
    weights = make_run(tmp_path, *EDSR)
    reads.clear()
    args = option.parse_main_args(['--cpu', '--save_dir', str(tmp_path), '--load', 'run', '--test_only'])
    net = model.Model(args, Log()).get_model()
    lines: list[str] = []
    resume.load_for_test(net, SimpleNamespace(run_dir=tmp_path / 'run', write_log=lines.append), args)
    assert reads == [str(weights)]
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    assert lines[-1].startswith(f'--test_only: evaluating {weights} (the latest epoch of run run')


def test_sources_say_where_each_option_came_from(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    ckpt = checkpoint.read(weights, what='weights')
    assert ckpt.options == {'model': 'EDSR', 'scale': 2, 'n_colors': 3, 'n_feats': 8, 'n_resblocks': 1,
                            'rgb_range': 1, 'res_scale': 0.1}
    assert ckpt.sources == {'model': 'weights', 'scale': 'weights', 'n_colors': 'weights', 'n_feats': 'weights',
                            'n_resblocks': 'weights', 'rgb_range': 'weights', 'res_scale': 'config.txt'}
    assert type(ckpt.options['scale']) is int and ckpt.config == config and ckpt.seed == 1
    given = checkpoint.read(weights, given={'res_scale': 0.5, 'n_feats': 8})
    assert (given.options['res_scale'], given.sources['res_scale']) == (0.5, 'flag')
    assert (given.options['n_feats'], given.sources['n_feats']) == (8, 'flag')
    alone = tmp_path / 'alone.pt'
    shutil.copy(weights, alone)
    bare = checkpoint.read(alone)
    assert (bare.options['res_scale'], bare.sources['res_scale']) == (1.0, 'assumed')
    assert bare.config is None and bare.seed is None


def test_parsing_fills_real_values_and_keeps_the_checkpoint(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    args = option.parse_main_args(['--pre_train', str(weights), '--cpu'])
    assert (args.model, args.scale, args.n_feats, args.res_scale, args.rgb_range) == ('EDSR', [2], 8, 0.1, 1)
    assert args.checkpoint.path == weights and args.checkpoint.sources['res_scale'] == 'config.txt'
    assert args.pre_train_detected == args.checkpoint.description
    assert option.parse_main_args(['--cpu']).checkpoint is None


def test_weights_read_without_recognising_them_carry_no_options(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'module.fc.weight': torch.ones(2, 2)}, path)
    ckpt = checkpoint.read(path, what='--pre_train', recognise=False)
    assert ckpt.detected is None and ckpt.options == {} and ckpt.description == ''
    assert list(ckpt.state) == ['fc.weight']
    assert ckpt.notes == ("Checkpoint was saved from a wrapper (DataParallel, torch.compile, a module holding the "
                          "network): removed the leading 'module.' of its 1 keys.",)
    with pytest.raises(checkpoint.UnknownCheckpoint, match=rf'^--pre_train {path}: not a super-resolution'):
        checkpoint.read(path, what='--pre_train')


def test_the_run_config_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / 'config.txt'
    options = {'model': 'EDSR', 'scale': [2], 'res_scale': 0.1, 'pre_train': '', 'checkpoint': object()}
    run_config.write(path, options, 'main.py --model EDSR')
    run_config.write(path, {**options, 'res_scale': 0.25}, 'main.py --model EDSR --res_scale 0.25')
    assert run_config.written_here(path)
    assert run_config.read(path) == {'model': 'EDSR', 'scale': [2], 'res_scale': 0.25, 'pre_train': ''}
    assert 'checkpoint' not in path.read_text()
    assert run_config.beside(tmp_path / 'model' / 'model_latest.pt') == path
