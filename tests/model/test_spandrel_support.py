"""model.spandrel_support: tools built on spandrel load our weights and compute what our networks compute.

Runs where spandrel imports (it needs torchvision, which does not import beside the CPU build of
torch 2.13 pinned here): a separate environment with torch 2.14.1, torchvision 0.29.1 and
spandrel 0.4.2 plus this project's other requirements, e.g.
``/path/to/venv/bin/python -m pytest tests/model/test_spandrel_support.py``. Skipped elsewhere.
"""

import pytest
import torch

import api
import convert
import helpers
from core.io_utils import save_weights
from model import registry, spandrel_support

spandrel = pytest.importorskip('spandrel')
pytestmark = pytest.mark.filterwarnings('ignore:k-means centroids are not initialised')


def network(tmp_path, name: str, scale: int = 2):
    """A small network of ours as this program reads it from its weights (options the weights do not hold
    take their published values, as in spandrel)."""
    arch = registry.get(name)
    net = arch.build(scale=scale, rgb_range=1 if name == 'LCoAN' else 255, **arch.tiny).eval()
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))  # LCoAN: initialises its k-means centroids, as a trained checkpoint has them
    torch.save(net.state_dict(), tmp_path / 'ours.pt')
    return api.load_pretrained(tmp_path / 'ours.pt', device='cpu')


def ours(net, x):
    """Our network on [0, 1] images, as spandrel returns them (clamped)."""
    rgb_range = float(net.sr_args.rgb_range)
    torch.manual_seed(0)
    with torch.no_grad():
        return (net(x * rgb_range) / rgb_range).clamp(0, 1)


def theirs(model, x):
    torch.manual_seed(0)
    return model(x.clone())


@pytest.fixture
def loader():
    target = spandrel.MAIN_REGISTRY.copy()
    added = spandrel_support.register(target)
    assert len(added) == len(registry.names()) and spandrel_support.register(target) == []
    return spandrel.ModelLoader(registry=target)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('name', registry.names())
def test_our_weights_load_in_spandrel(tmp_path, loader, name, suffix):
    net = network(tmp_path, name, scale=3 if name == 'RDN' else 2)
    path = tmp_path / f'w{suffix}'
    save_weights(net.state_dict(), path)
    model = loader.load_from_file(path)
    assert model.architecture.name == name and model.scale == (3 if name == 'RDN' else 2)
    assert model.input_channels == model.output_channels == 3
    x = torch.rand(1, 3, 10, 12)
    assert (theirs(model, x) - ours(net, x)).abs().max() < 1e-5


def test_our_rcan_needs_the_spandrel_layout_for_spandrel_s_own_rcan(tmp_path, capsys):
    net = network(tmp_path, 'RCAN', scale=4)
    torch.save(net.state_dict(), tmp_path / 'rcan.pt')
    with pytest.raises(RuntimeError, match='Unexpected key'):
        spandrel.ModelLoader().load_from_file(tmp_path / 'rcan.pt')  # strict load: the placeholder a
    assert convert.main([str(tmp_path / 'rcan.pt'), str(tmp_path / 'rcan.safetensors'), '--layout', 'spandrel']) == 0
    model = spandrel.ModelLoader().load_from_file(tmp_path / 'rcan.safetensors')
    assert model.architecture.id == 'RCAN'  # spandrel's own
    x = torch.rand(1, 3, 10, 12)
    assert (theirs(model, x) - ours(net, x)).abs().max() < 1e-5


def test_basicsr_files_load_through_the_registration(loader):
    io = torch.load(helpers.FIXTURES / 'thirdparty' / 'basicsr_rcan_x4.io.pt', weights_only=True)
    model = loader.load_from_file(helpers.FIXTURES / 'thirdparty' / 'basicsr_rcan_x4.pth')
    assert (theirs(model, io['input']) - io['output'].clamp(0, 1)).abs().max() < 1e-5
