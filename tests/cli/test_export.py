"""export.py: ONNX export with dynamic height/width, checked with onnxruntime against PyTorch."""

import warnings

import pytest
import torch

import api
import export
import option
from model.lcoan import LCoAN

onnxruntime = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

WINDOW = 16


@pytest.fixture(scope='module')
def lcoan_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp('onnx')
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=WINDOW,
                n_hashes=2, rgb_range=255).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # centroids initialise from this batch
        net(torch.rand(1, 3, 24, 24) * 255)
    torch.save(net.state_dict(), folder / 'w.pt')
    loaded = api.load_pretrained(folder / 'w.pt', device='cpu', window_size=WINDOW)
    return loaded, export.export_onnx(loaded, folder / 'w.onnx'), folder


@pytest.mark.parametrize(('h', 'w'), [(20, 24), (17, 31)])
def test_onnxruntime_equals_pytorch_at_two_sizes(lcoan_onnx, h, w):
    net, path, _ = lcoan_onnx
    assert (h * w) % WINDOW == 0 or (h, w) == (17, 31)  # 527 positions: the last window is padded
    lr = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
    assert export.max_difference(path, net, lr) <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == 'lr' and out.name == 'sr'
    assert isinstance(inp.shape[2], str) and isinstance(inp.shape[3], str)  # dynamic height and width
    assert session.run(None, {'lr': lr.numpy()})[0].shape == (1, 3, 2 * h, 2 * w)


def test_export_leaves_the_network_unchanged(lcoan_onnx):
    net, _, _ = lcoan_onnx
    attention = net.body[0].attention[0]
    assert attention.attention_impl == 'fast' and isinstance(attention.kmeans.initted, torch.Tensor)
    assert 'body.0.attention.0.kmeans.initted' in net.state_dict()


@pytest.mark.slow
def test_export_cli(lcoan_onnx, capsys):
    _, _, folder = lcoan_onnx
    # The CLI detects the options (window_size takes the assumed 384, so 29x37 = 1073 positions pad too).
    assert export.main(['--weights', str(folder / 'w.pt'), '--onnx', str(folder / 'cli.onnx')]) == 0
    text = capsys.readouterr().out
    assert 'LCoAN x2' in text and 'max abs difference' in text and (folder / 'cli.onnx').is_file()
    diff = float(text.split('max abs difference ')[1].split()[0])
    assert diff <= 1e-4
    assert export.main(['--weights', str(folder / 'missing.pt'), '--onnx', str(folder / 'x.onnx')]) == 2
    assert capsys.readouterr().err.startswith('error: weights ')


@pytest.mark.slow
@pytest.mark.parametrize(('name', 'flags'), [
    ('EDSR', ['--n_resblocks', '2', '--n_feats', '8']),
    ('RCAN', ['--n_resgroups', '1', '--n_resblocks', '2', '--n_feats', '16', '--reduction', '4']),
    ('RDN', ['--G0', '8', '--RDNconfig', 'A']),
    ('NLSN', ['--n_resblocks', '2', '--n_feats', '16']),
])
def test_baselines_export(tmp_path, name, flags):
    module = pytest.importorskip(f'model.{name.lower()}')
    args = option.parse_args(['--model', name, '--cpu', '--scale', '2', *flags])
    torch.manual_seed(0)
    torch.save(module.make_model(args).state_dict(), tmp_path / 'w.pt')
    net = api.load_pretrained(tmp_path / 'w.pt', device='cpu')
    path = export.export_onnx(net, tmp_path / 'w.onnx')
    lr = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        deterministic = torch.equal(net(lr), net(lr))
    if deterministic:  # NLSN's hashing draws random rotations in every forward: then only the shape is checked
        assert export.max_difference(path, net, lr) <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert session.run(None, {'lr': lr.numpy()})[0].shape == (1, 3, 38, 46)


def test_export_refuses_centroids_that_were_never_initialised(tmp_path, capsys):
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=WINDOW)
    torch.save(net.state_dict(), tmp_path / 'w.pt')  # saved before any forward: no centroids
    assert export.main(['--weights', str(tmp_path / 'w.pt'), '--onnx', str(tmp_path / 'w.onnx')]) == 2
    assert capsys.readouterr().err == (
        f'error: weights {tmp_path / "w.pt"}: the k-means centroids of its attention were never initialised (weights '
        'saved before the first training step?): there is no trained attention pattern to export\n')
    assert not (tmp_path / 'w.onnx').exists()


@pytest.mark.slow
def test_export_cli_of_a_network_that_draws_random_numbers_checks_the_shape(tmp_path, capsys):
    """NLSN's hashing draws random rotations in every forward: its ONNX output is checked in shape, exit status 0."""
    from helpers.architectures import tiny_network
    from model import registry
    lr = torch.rand(1, 3, 12, 12)
    nets = {}
    for name in registry.names():
        nets[name] = tiny_network(name, rgb_range=1)
        with torch.no_grad():
            nets[name].train()(lr)  # a training forward initialises LCoA's centroids
        nets[name].eval()
    random = [name for name, net in nets.items() if export.draws_random_numbers(net, lr)]
    if not random:
        pytest.skip('no architecture draws random numbers in its forward')
    torch.save(nets[random[0]].state_dict(), tmp_path / 'w.pt')
    assert export.main(['--weights', str(tmp_path / 'w.pt'), '--onnx', str(tmp_path / 'w.onnx')]) == 0
    out = capsys.readouterr()
    assert ('onnxruntime on a 29x37 input: output 1x3x58x74 as PyTorch\'s; the values are not compared: this network '
            'draws random numbers in every forward') in out.out
    assert out.err == ''  # nor the exporter's notes (torchvision is not installed ...)
