"""Detection of checkpoints as people save them: half precision, wrapper prefixes, empty files, safetensors,
and a checkpoint of one model given to a run of another."""

import pytest
import torch

import api
import model
import option
from core.errors import UserError
from core.io_utils import save_weights
from model import checkpoint_io, detect, registry


def network(name: str, **options):
    arch = registry.get(name)
    args = option.for_model(name, cpu=True, **{'scale': 2, **arch.tiny, **options})
    return arch.make_model(args).eval()


def output(net, x):
    torch.manual_seed(0)
    with torch.no_grad():
        return net(x)


@pytest.mark.filterwarnings('ignore:k-means centroids are not initialised')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(('name', 'rgb_range'), [('LCoAN', 1), ('EDSR', 255), ('RCAN', 1), ('NLSN', 1)])
def test_half_precision_checkpoints_keep_their_rgb_range(tmp_path, dtype, name, rgb_range):
    net = network(name, rgb_range=rgb_range)
    path = tmp_path / 'half.pt'
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    _, found = detect.read_checkpoint(path)
    assert found.options['rgb_range'] == rgb_range and 'rgb_range' not in found.assumed
    # The network loaded from the half weights computes (nearly) what the float one does.
    loaded = api.load_pretrained(path, device='cpu')
    x = torch.rand(1, 3, 12, 12) * rgb_range
    levels = (output(loaded, x) - output(net, x)).abs().max() / rgb_range * 255
    assert levels < 3


@pytest.mark.parametrize('prefix', ['_orig_mod.', 'model.', 'module._orig_mod.', 'module.model.'])
def test_wrapper_prefixes_are_removed(tmp_path, prefix):
    net = network('EDSR')
    path = tmp_path / 'wrapped.pt'
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    state, found = detect.read_checkpoint(path)
    assert found.model == 'EDSR' and set(state) == set(net.state_dict())
    log = []
    checkpoint_io.load_checkpoint(network('EDSR'), path, log=log.append)
    assert any(f"removed the leading '{prefix}'" in m for m in log)


def test_empty_checkpoints_say_so(tmp_path):
    for obj, message in (({}, 'an empty state_dict: it holds no weights'),
                         ({'state_dict': {}}, "its 'state_dict' entry is empty: the file holds no weights"),
                         ({'params_ema': {}, 'iter': 3}, "its 'params_ema' entry is empty")):
        path = tmp_path / 'empty.pt'
        torch.save(obj, path)
        with pytest.raises(UserError, match=rf'^--weights {path}: {message}'):
            detect.read_checkpoint(path, what='--weights')
    with pytest.raises(detect.UnknownCheckpoint, match='an empty state_dict'):
        detect.detect_architecture({})


def test_safetensors_files_are_read_like_pt_files(tmp_path):
    net = network('RCAN')
    path = tmp_path / 'rcan.safetensors'
    save_weights(net.state_dict(), path)  # channels_last weights: written as contiguous copies
    state, found = detect.read_checkpoint(path)
    assert found.model == 'RCAN' and all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    with pytest.raises(UserError, match=rf'^checkpoint {bad}: not a readable safetensors file'):
        detect.read_checkpoint(bad)


def test_a_checkpoint_of_another_model_than_the_template_s_is_named(tmp_path):
    path = tmp_path / 'nlsn.pt'
    torch.save(network('NLSN').state_dict(), path)
    with pytest.raises(UserError, match=rf'^--pre_train {path}: a checkpoint of NLSN x2, but the model is LCoAN '
                                        r'\(--model or --template demo\); give --model NLSN'):
        api.parse_args(['--template', 'demo', '--pre_train', str(path), '--cpu'])
    with pytest.raises(UserError, match=r'a checkpoint of NLSN x2, but the model is EDSR; give --model NLSN'):
        api.parse_args(['--model', 'EDSR', '--pre_train', str(path), '--cpu'])
    args = api.parse_args(['--model', 'NLSN', '--pre_train', str(path), '--cpu'])
    model.Model(args, type('Ckp', (), {'write_log': lambda self, m: None})())
