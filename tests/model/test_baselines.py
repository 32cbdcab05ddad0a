"""EDSR, RCAN, RDN and NLSN: official checkpoint layout and sizes, save/load, fine-tuning to another
scale, and NLSN on any input size."""


import functools

import pytest
import torch
import torch.nn.functional as F

import helpers
from helpers.architectures import BASELINES, tiny_network
from model import checkpoint, edsr, nlsn, rcan, rdn
from model.blocks import nlsa

# Copies of ../shared/reference/ (the official checkpoints' key lists), kept in the repo so this always runs.
REFERENCE = helpers.FIXTURES / 'reference'

# The published configurations and their parameter counts at x2/x3/x4 (../shared/reference/README.md).
PUBLISHED = {
    'edsr_baseline': (lambda s: edsr.EDSR(scale=s, n_resblocks=16, n_feats=64, res_scale=1),
                      (1_369_883, 1_554_523, 1_517_595)),
    'edsr_paper': (lambda s: edsr.EDSR(scale=s, n_resblocks=32, n_feats=256, res_scale=0.1),
                   (40_729_627, 43_680_027, 43_089_947)),
    'rcan': (lambda s: rcan.RCAN(scale=s, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16),
             (15_444_668, 15_629_308, 15_592_380)),
    'rdn': (lambda s: rdn.RDN(scale=s, G0=64, RDNkSize=3, RDNconfig='B'), (22_123_395, 22_308_035, 22_271_107)),
    'nlsn': (lambda s: nlsn.NLSN(scale=s, n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4),
             (41_796_187, 44_746_587, 44_156_507)),
}

# The tiny configurations (model.registry) of the architectures, for the tests that run the networks.
TINY = {name.lower(): functools.partial(tiny_network, name, rgb_range=1) for name in BASELINES}


def layout(net: torch.nn.Module) -> list[str]:
    return [f'{k}\t{tuple(v.shape)}\t{str(v.dtype).removeprefix("torch.")}' for k, v in net.state_dict().items()]


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', list(PUBLISHED))
def test_published_config_has_official_state_dict_layout_and_size(name, scale):
    build, counts = PUBLISHED[name]
    with torch.device('meta'):
        net = build(scale)
    assert layout(net) == (REFERENCE / f'{name}_x{scale}_state_dict.txt').read_text().splitlines()
    assert sum(p.numel() for p in net.parameters()) == counts[scale - 2]


@pytest.mark.parametrize('name', list(TINY))
def test_state_dict_round_trip_gives_the_same_outputs(name, tmp_path):
    torch.manual_seed(0)
    net = TINY[name](2).eval()
    path = tmp_path / 'net.pt'
    torch.save(net.state_dict(), path)
    torch.manual_seed(1)
    other = TINY[name](2).eval()
    assert checkpoint.read(path, recognise=False).load_into(other, log=lambda _: None) == []
    for key, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    x = torch.rand(2, 3, 7, 9)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = net(x)
    torch.manual_seed(5)
    with torch.no_grad():
        assert torch.equal(other(x), expected)


@pytest.mark.parametrize(('name', 'upsampler'), [('edsr', 'tail.0.'), ('rcan', 'tail.0.'), ('nlsn', 'tail.0.'),
                                                 ('rdn', 'UPNet.')])
def test_fine_tuning_x2_to_x4_loads_all_but_the_upsampler(name, upsampler, tmp_path):
    torch.manual_seed(0)
    x2 = TINY[name](2)
    path = tmp_path / 'x2.pt'
    torch.save(x2.state_dict(), path)
    torch.manual_seed(1)
    x4 = TINY[name](4)
    fresh = {k: v.clone() for k, v in x4.state_dict().items()}
    lines = []
    skipped = checkpoint.read(path, what='--pre_train', recognise=False).load_into(x4, log=lines.append)
    assert skipped == [k for k in x2.state_dict() if k.startswith(upsampler)] and skipped
    for key, value in x4.state_dict().items():
        expected = fresh[key] if key.startswith(upsampler) else x2.state_dict()[key]
        assert torch.equal(value, expected), key
    assert 'kept the new x4 upsampler' in lines[0] and 'trained for x2' in lines[0]
    assert all(k in lines[0] for k in skipped)


def test_another_width_is_refused_with_the_key_and_both_shapes(tmp_path):
    path = tmp_path / 'edsr.pt'
    torch.save(edsr.EDSR(scale=2, n_resblocks=2, n_feats=8).state_dict(), path)
    with pytest.raises(Exception, match=r'head\.0\.weight checkpoint \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)'):
        checkpoint.read(path, recognise=False).load_into(edsr.EDSR(scale=2, n_resblocks=2, n_feats=16), log=print)


def test_rcan_checkpoint_without_the_placeholder_a_loads(tmp_path):
    # RCAN's own RCAN_BIX2.pt has no `a`; the NLSN/LCoAN-repository RCAN (and the reference list) has it.
    torch.manual_seed(0)
    net = TINY['rcan'](2)
    state = {k: v for k, v in net.state_dict().items() if k != 'a'}
    path = tmp_path / 'rcan.pt'
    torch.save(state, path)
    other = TINY['rcan'](2)
    lines = []
    assert checkpoint.read(path, recognise=False).load_into(other, log=lines.append) == []
    assert 'has no a' in lines[0]
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize('name', list(TINY))
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_output_shapes_and_gradients(name, scale):
    torch.manual_seed(0)
    net = TINY[name](scale)
    x = torch.rand(2, 3, 5, 7)
    out = net(x)
    assert out.shape == (2, 3, 5 * scale, 7 * scale)
    out.mean().backward()
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    # every trainable parameter is used (DistributedDataParallel needs no search for unused ones)
    assert all(p.grad is not None for _, p in trainable), [k for k, p in trainable if p.grad is None]
    assert {k for k, p in net.named_parameters() if not p.requires_grad} <= {
        'a', 'sub_mean.weight', 'sub_mean.bias', 'add_mean.weight', 'add_mean.bias'}


def test_scale_8_where_the_official_upsampler_allows_it():
    for name in ('edsr', 'rcan', 'nlsn'):
        assert TINY[name](8)(torch.rand(1, 3, 3, 2)).shape == (1, 3, 24, 16)
    with pytest.raises(ValueError, match='2, 3 or 4'):
        rdn.RDN(scale=8, G0=8, RDNconfig='A')


def test_rcan_res_scale_scales_the_block_residual():
    torch.manual_seed(0)
    block = rcan.RCAB(n_feats=8, reduction=4, res_scale=0.5)
    x = torch.rand(1, 8, 4, 4)
    torch.testing.assert_close(block(x), x + 0.5 * block.body(x))


# NLSN on any input size ---------------------------------------------------------------------------

def dense_attention(module: nlsa.NonLocalSparseAttention, x: torch.Tensor) -> torch.Tensor:
    """What NLSA computes when all positions share one chunk: softmax(q . normalised k) v, as a plain formula."""
    n, c, h, w = x.shape
    q = module.conv_match(x).flatten(2).transpose(1, 2)
    v = module.conv_assembly(x).flatten(2).transpose(1, 2)
    k = F.normalize(q, dim=-1, eps=nlsa.KEY_NORM_EPS)
    out = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    return x + module.res_scale * out.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (5, 7)])  # all fewer positions than one chunk (36)
def test_nlsa_with_fewer_positions_than_a_chunk_is_dense_attention(size):
    torch.manual_seed(0)
    module = nlsa.NonLocalSparseAttention(channels=8, chunk_size=36, n_hashes=3, reduction=2, res_scale=0.5)
    x = torch.randn(2, 8, *size)
    state = torch.get_rng_state()
    out = module(x)
    # no buckets: the zero-size rotation draw consumes no random numbers
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out, dense_attention(module, x), rtol=1e-5, atol=1e-5)


def test_nlsa_rotations_are_drawn_as_the_official_code_draws_them():
    torch.manual_seed(0)
    module = nlsa.NonLocalSparseAttention(channels=8, chunk_size=4, n_hashes=3, reduction=2)
    x = torch.randn(2, 8, 5, 7)  # 35 positions: 35 // 4 = 8 chunks -> 8 buckets, 4 rotations per round
    assert nlsa.n_buckets(35, 4) == 8 and nlsa.n_buckets(36, 4) == 10 and nlsa.n_buckets(10**6, 4) == 128
    torch.manual_seed(3)
    module(x)
    after = torch.randn(1)
    torch.manual_seed(3)
    torch.randn((1, 4, 3, 4))
    assert torch.equal(torch.randn(1), after)


@pytest.mark.parametrize('size', [(1, 1), (3, 5), (7, 11), (12, 12), (13, 17)])
def test_nlsn_any_input_size_and_batch(size):
    torch.manual_seed(0)
    net = TINY['nlsn'](2).eval()
    x = torch.rand(3, 3, *size)
    torch.manual_seed(1)
    with torch.no_grad():
        batch = net(x)
    assert batch.shape == (3, 3, 2 * size[0], 2 * size[1])
    assert torch.isfinite(batch).all()
    # one rotation per forward is shared by the batch: each image alone, after the same seed, is the same
    for i in range(3):
        torch.manual_seed(1)
        with torch.no_grad():
            torch.testing.assert_close(net(x[i:i + 1]), batch[i:i + 1], rtol=1e-5, atol=1e-6)


def test_nlsn_under_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    net = TINY['nlsn'](2).eval()
    x = torch.rand(1, 3, 6, 5)
    torch.manual_seed(1)
    with torch.no_grad():
        ref = net(x)
    torch.manual_seed(1)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()
