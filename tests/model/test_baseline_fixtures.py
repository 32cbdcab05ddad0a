"""EDSR, RCAN, RDN and NLSN reproduce the outputs of the official code for the same weights and input.

``tests/fixtures/official/{edsr,rcan,rdn,nlsn}_*.pt`` were written by running the official model files of
the NLSN repository (EDSR-PyTorch based: ``edsr.py``, ``rcan.py``, ``rdn.py``, ``nlsn.py``,
``attention.py``, ``common.py``; torch 2.13.0, CPU, fp32, eval) outside this repository, with
small configurations. Each holds our constructor's configuration, one LR input in [0, 255], the
official output and either the official ``state_dict`` (random weights) or, for RDN, whose dense
blocks are too large to store, ``weights='recipe'``: the deterministic weights of
:func:`recipe_weights`, which the fixture script loaded into the official model. NLSN fixtures also
hold the seed set with ``torch.manual_seed`` just before the official forward (its LSH rotations
are drawn from the global generator). No official code is here.
"""

import math

import pytest
import torch

import helpers
from model import edsr, nlsn, rcan, rdn

FIXTURES = helpers.FIXTURES / 'official'
NETWORKS = {'edsr': edsr.EDSR, 'rcan': rcan.RCAN, 'rdn': rdn.RDN, 'nlsn': nlsn.NLSN}


def recipe_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights: sines of the element index, scaled by 2/sqrt(fan_in) (0.02 for biases)."""
    out = {}
    for i, (key, shape) in enumerate(shapes.items()):
        t = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.61 + 1.7 * i)
        scale = 2.0 / math.sqrt(math.prod(shape[1:])) if len(shape) > 1 else 0.02
        out[key] = (t * scale).float().view(shape)
    return out


def load(name: str):
    fixture = torch.load(FIXTURES / f'{name}.pt', weights_only=True)
    with torch.device('meta'):  # no time spent on a random initialisation that is overwritten
        net = NETWORKS[name.split('_')[0]](**fixture['config']).eval()
    if fixture.get('weights') == 'recipe':
        state = recipe_weights({k: tuple(v.shape) for k, v in net.state_dict().items()})
    else:
        state = fixture['state_dict']
    net.load_state_dict(state, strict=True, assign=True)
    return net, fixture


def relative_error(out, expected):
    return ((out - expected).abs().max() / expected.abs().max()).item()


def run(net, fixture, seed=None):
    if seed is None:
        seed = fixture.get('seed')
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return net(fixture['input'])


@pytest.mark.parametrize('name', ['edsr_x3', 'rcan_x4', 'rdn_x2_configA_k5', 'rdn_x4_configA'])
def test_matches_official(name):
    net, fixture = load(name)
    out = run(net, fixture)
    scale = fixture['config']['scale']
    assert out.shape == fixture['output'].shape
    assert out.shape[-2:] == tuple(scale * s for s in fixture['input'].shape[-2:])
    assert relative_error(out, fixture['output']) <= 1e-5


@pytest.mark.parametrize('name', ['nlsn_x2_batch2_padded', 'nlsn_x3_one_round'])
def test_nlsn_matches_official_after_the_same_seed(name):
    net, fixture = load(name)
    out = run(net, fixture)
    assert out.shape == fixture['output'].shape
    assert relative_error(out, fixture['output']) <= 1e-5
    # Run after run with the same seed: identical; another seed draws other rotations.
    assert torch.equal(run(net, fixture), out)
    assert relative_error(run(net, fixture, seed=fixture['seed'] + 1), fixture['output']) > 1e-4


def test_nlsn_batch_shares_rotations_and_images_are_independent_of_their_batch():
    # The official code draws one rotation per forward for the whole batch, so each image of the
    # fixture's batch of two is also what a forward of that image alone gives after the same seed.
    net, fixture = load('nlsn_x2_batch2_padded')
    for i in range(2):
        torch.manual_seed(fixture['seed'])
        with torch.no_grad():
            single = net(fixture['input'][i:i + 1])
        assert relative_error(single, fixture['output'][i:i + 1]) <= 1e-5
