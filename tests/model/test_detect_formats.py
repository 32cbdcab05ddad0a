"""Detection of checkpoints as people save them: half precision, wrapper prefixes, empty files, safetensors,
and a checkpoint of one model given to a run of another."""

import pytest
import torch

import api
import convert
import model
import option
from core.errors import UserError
from core.io_utils import save_weights
from model import checkpoint, registry
from model.checkpoint import detect, loading


def network(name: str, **options):
    arch = registry.get(name)
    return arch.build(**{'scale': 2, **arch.tiny, **options}).eval()


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
    found = checkpoint.read(path).detected
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
    ckpt = checkpoint.read(path)
    state, found = ckpt.state, ckpt.detected
    assert found.model == 'EDSR' and set(state) == set(net.state_dict())
    log = []
    checkpoint.read(path, recognise=False).load_into(network('EDSR'), log=log.append)
    assert any(f"removed the leading '{prefix}'" in m for m in log)


def test_empty_checkpoints_say_so(tmp_path):
    for obj, message in (({}, 'an empty state_dict: it holds no weights'),
                         ({'state_dict': {}}, "its 'state_dict' entry is empty: the file holds no weights"),
                         ({'params_ema': {}, 'iter': 3}, "its 'params_ema' entry is empty")):
        path = tmp_path / 'empty.pt'
        torch.save(obj, path)
        with pytest.raises(UserError, match=rf'^--weights {path}: {message}'):
            checkpoint.read(path, what='--weights')
    with pytest.raises(detect.UnknownCheckpoint, match='an empty state_dict'):
        detect.detect_architecture({})


def test_safetensors_files_are_read_like_pt_files(tmp_path):
    net = network('RCAN')
    path = tmp_path / 'rcan.safetensors'
    save_weights(net.state_dict(), path)  # channels_last weights: written as contiguous copies
    ckpt = checkpoint.read(path)
    state, found = ckpt.state, ckpt.detected
    assert found.model == 'RCAN' and all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    with pytest.raises(UserError, match=rf'^checkpoint {bad}: not a readable safetensors file'):
        checkpoint.read(bad)


def test_a_checkpoint_of_another_model_than_the_template_s_is_named(tmp_path):
    path = tmp_path / 'nlsn.pt'
    torch.save(network('NLSN').state_dict(), path)
    with pytest.raises(UserError, match=rf'^--pre_train {path}: a checkpoint of NLSN x2, but the model is LCoAN '
                                        r'\(--model or --template demo\); give --model NLSN'):
        option.parse_main_args(['--template', 'demo', '--pre_train', str(path), '--cpu'])
    with pytest.raises(UserError, match=r'a checkpoint of NLSN x2, but the model is EDSR; give --model NLSN'):
        option.parse_main_args(['--model', 'EDSR', '--pre_train', str(path), '--cpu'])
    args = option.parse_main_args(['--model', 'NLSN', '--pre_train', str(path), '--cpu'])
    model.Model(args, type('Ckp', (), {'write_log': lambda self, m: None})())


@pytest.mark.parametrize(('dtype', 'why'), [
    (torch.int64, 'tensor body.0.body.0.weight is int64, but the network holds it as float32; refusing weights '
                  'that are not floating point'),
    (torch.bool, 'tensor body.0.body.0.weight is bool, but the network holds it as float32'),
    (torch.complex64, 'tensor body.0.body.0.weight is complex64, but the network holds it as float32'),
    (torch.float8_e4m3fn, 'tensor body.0.body.0.weight is float8_e4m3fn: 8-bit float weights are not read; save '
                          'them as float32, float16 or bfloat16'),
])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, capsys, dtype, why):
    state = network('EDSR').state_dict()
    state['body.0.body.0.weight'] = state['body.0.body.0.weight'].to(dtype)
    path = tmp_path / 'w.pt'
    torch.save(state, path)
    with pytest.raises(UserError) as e:
        api.load_pretrained(path, device='cpu')
    assert str(e.value).startswith(f'weights {path}: ') and why in str(e.value)
    with pytest.raises(UserError, match=why.split(';')[0].replace('(', r'\(')):  # --pre_train's loader
        checkpoint.read(path, what='--pre_train', recognise=False).load_into(network('EDSR'), log=lambda _: None)
    assert convert.main([str(path), str(tmp_path / 'out.pt')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: checkpoint {path}: ') and why in err and err.count('\n') == 1
    assert not (tmp_path / 'out.pt').exists()


def test_a_network_s_own_integer_buffers_load(tmp_path):
    """An index buffer (SwinIR's relative_position_index) is integer in the network and in its weights."""
    class WithIndex(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)
            self.register_buffer('index', torch.zeros(4, dtype=torch.int64))

    net, saved = WithIndex(), WithIndex()
    saved.index += 3
    loading.load_into(net, saved.state_dict(), source='weights w.pt', log=lambda _: None)
    assert net.index.tolist() == [3, 3, 3, 3] and net.index.dtype == torch.int64
