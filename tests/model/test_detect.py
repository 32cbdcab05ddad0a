"""model.checkpoint.detect: architecture and options from a state_dict alone, and ``--pre_train`` filling the flags.

The facts come from ``../shared/reference/`` (official key listings and the configurations its
README states); small configurations are derived from them by changing shapes consistently, and
LCoAN's from the real network. Baseline networks (``model.edsr`` ...) are used where they exist.
"""

import ast
from pathlib import Path

import pytest
import torch

import helpers
import model
import option
from core.errors import UserError
from model import checkpoint, registry, spec
from model.blocks import common
from model.checkpoint import detect
from model.lcoan import LCoAN

REFERENCE = helpers.SHARED / 'reference'
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason='../shared/reference is absent')

# The configurations ../shared/reference/README.md states for each listing.
PUBLISHED = {
    'lcoan_paper': ('LCoAN', dict(n_resgroups=10, n_resblocks=4, n_feats=128, reduction=1, n_clusters=128, n_hashes=1,
                                  n_colors=3)),
    'edsr_baseline': ('EDSR', dict(n_resblocks=16, n_feats=64, n_colors=3)),
    'edsr_paper': ('EDSR', dict(n_resblocks=32, n_feats=256, n_colors=3)),
    'rcan': ('RCAN', dict(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, n_colors=3)),
    'rdn': ('RDN', dict(G0=64, RDNkSize=3, RDNconfig='B', n_colors=3)),
    'nlsn': ('NLSN', dict(n_resblocks=32, n_feats=256, n_colors=3)),
}


def read_listing(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split('\t')
        out[key] = (ast.literal_eval(shape), dtype)
    return out


def synthesise(shapes: dict, rgb_range: float | None = 255) -> dict[str, torch.Tensor]:
    """Zeros of the given shapes (broadcast views: no memory), with a real mean-shift bias."""
    state = {k: torch.zeros((), dtype=torch.bool if k.endswith('initted') else torch.float32).expand(s)
             for k, s in shapes.items()}
    if 'add_mean.bias' in state and rgb_range is not None:
        n = state['add_mean.bias'].numel()
        mean = torch.tensor(common.DIV2K_RGB_MEAN)
        mean = mean if n == 3 else mean.mean().reshape(1)
        state['add_mean.bias'] = rgb_range * mean
        state['sub_mean.bias'] = -rgb_range * mean
    return state


def tiny_lcoan(**kw) -> LCoAN:
    cfg = dict(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
               n_hashes=1, n_colors=3, rgb_range=1)
    cfg.update(kw)
    return LCoAN(**cfg)


# ------------------------------------------------------------------------------------------ official layouts

@needs_reference
@pytest.mark.parametrize('prefix', sorted(PUBLISHED))
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_official_listings_are_detected_with_their_published_configuration(prefix, scale):
    listing = read_listing(REFERENCE / f'{prefix}_x{scale}_state_dict.txt')
    name, config = PUBLISHED[prefix]
    rgb_range = 1 if name == 'LCoAN' else 255  # LCoAN is trained with --rgb_range 1, EDSR-PyTorch with 255
    state = synthesise({k: s for k, (s, _) in listing.items()}, rgb_range=rgb_range)
    found = detect.detect_architecture(state)
    assert found.model == name
    assert found.options == {'scale': scale, **config, **({} if name == 'RDN' else {'rgb_range': rgb_range})}
    # The rebuilt layout is exactly the listing (keys, shapes), and detection says what it assumed.
    assert detect.expected_shapes(name, scale=scale, **config) == {k: s for k, (s, _) in listing.items()}
    expected_assumed = {
        'LCoAN': {'window_size': 384, 'res_scale': 0.1, 'ema_decay': 0.999},
        'EDSR': {'res_scale': 0.1 if prefix == 'edsr_paper' else 1},
        'RCAN': {'res_scale': 1.0}, 'RDN': {'rgb_range': 255},
        'NLSN': {'chunk_size': 144, 'n_hashes': 4, 'res_scale': 0.1},
    }[name]
    assert found.assumed == expected_assumed


@needs_reference
def test_our_lcoan_matches_the_official_listing():
    listing = read_listing(REFERENCE / 'lcoan_paper_x4_state_dict.txt')
    with torch.device('meta'):
        net = LCoAN(scale=4)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: s for k, (s, _) in listing.items()}


# ------------------------------------------------------------------------------------------ small configurations

@pytest.mark.parametrize('cfg', [
    dict(scale=2),
    dict(scale=3, n_colors=1, rgb_range=255),
    dict(scale=4, n_hashes=2, reduction=1, n_clusters=6, n_resgroups=3, n_resblocks=2),
])
def test_lcoan_round_trip_through_the_real_network(cfg):
    net = tiny_lcoan(**cfg)
    found = detect.detect_architecture(net.state_dict())
    full = dict(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, n_hashes=1, n_colors=3,
                rgb_range=1)
    full.update(cfg)
    assert found.model == 'LCoAN'
    assert found.options == {k: full[k] for k in found.options}
    assert set(found.options) == set(full)
    assert found.assumed == {'window_size': 384, 'res_scale': 0.1, 'ema_decay': 0.999}


SMALL = [
    ('EDSR', dict(scale=2, n_colors=3, n_feats=8, n_resblocks=3)),
    ('EDSR', dict(scale=4, n_colors=1, n_feats=16, n_resblocks=1)),
    ('RCAN', dict(scale=3, n_colors=3, n_feats=8, n_resgroups=2, n_resblocks=3, reduction=4)),
    ('NLSN', dict(scale=2, n_colors=3, n_feats=8, n_resblocks=17)),  # attention after blocks 8 and 16
    ('NLSN', dict(scale=4, n_colors=3, n_feats=12, n_resblocks=5)),
    ('RDN', dict(scale=3, n_colors=3, G0=8, RDNkSize=5, RDNconfig='A')),
    ('RDN', dict(scale=4, n_colors=1, G0=16, RDNkSize=3, RDNconfig='B')),
]


@pytest.mark.parametrize(('name', 'cfg'), SMALL)
def test_small_baseline_layouts_are_detected(name, cfg):
    state = synthesise(detect.expected_shapes(name, **cfg), rgb_range=1)
    found = detect.detect_architecture(state)
    assert found.model == name
    assert found.options == {**cfg, **({} if name == 'RDN' else {'rgb_range': 1})}


def test_nlsn_attention_positions_follow_every_eighth_block():
    keys = detect.expected_shapes('NLSN', scale=2, n_colors=3, n_feats=8, n_resblocks=17)
    attention = sorted({int(k.split('.')[1]) for k in keys if 'conv_match' in k})
    assert attention == [0, 9, 18]
    assert 'body.19.body.0.weight' in keys and 'body.20.weight' in keys  # block 17, then the body conv


@pytest.mark.parametrize(('name', 'cfg'), SMALL[:1] + SMALL[2:3])
def test_wrappers_and_module_prefix_are_unwrapped(tmp_path, name, cfg):
    state = {k: v.clone() for k, v in synthesise(detect.expected_shapes(name, **cfg)).items()}
    for i, obj in enumerate([
        {'state_dict': state, 'epoch': torch.tensor(3)},
        {'model': {'module.' + k: v for k, v in state.items()}, 'optimizer': {'lr': torch.tensor(1e-4)}},
        {'params': {k: v + 1 for k, v in state.items()}, 'params_ema': state},
    ]):
        path = tmp_path / f'w{i}.pt'
        torch.save(obj, path)
        ckpt = checkpoint.read(path)
        got, found = ckpt.state, ckpt.detected
        assert found.model == name and found.options['scale'] == cfg['scale']
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_unknown_checkpoint_names_the_foreign_keys(tmp_path):
    path = tmp_path / 'unet.pt'
    torch.save({'encoder.0.weight': torch.zeros(4, 3, 3, 3), 'decoder.up.bias': torch.zeros(4),
                'head.0.weight': torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(detect.UnknownCheckpoint) as info:
        checkpoint.read(path, what='--weights')
    msg = str(info.value)
    assert msg.startswith(f'--weights {path}: not a super-resolution checkpoint this program knows')
    assert '2 of its 3 keys are unknown' in msg and 'encoder.0.weight, decoder.up.bias' in msg
    assert 'head.0.weight' not in msg.split('unknown')[1] and '\n' not in msg


def test_known_keys_in_an_impossible_layout_are_refused_with_the_differences():
    shapes = detect.expected_shapes('EDSR', scale=2, n_colors=3, n_feats=8, n_resblocks=3)
    state = synthesise(shapes)
    state['body.1.body.2.weight'] = torch.zeros(8, 4, 3, 3)
    del state['tail.1.bias']
    with pytest.raises(detect.UnknownCheckpoint, match=r'looks like EDSR x2 .*missing: tail\.1\.bias; shape: '
                                                        r'body\.1\.body\.2\.weight \(8, 4, 3, 3\) \(expected '
                                                        r'\(8, 8, 3, 3\)\)'):
        detect.detect_architecture(state)
    rdn = synthesise(detect.expected_shapes('RDN', scale=2, n_colors=3, G0=8, RDNkSize=3, RDNconfig='A'))
    rdn = {k: v for k, v in rdn.items() if not k.startswith('RDBs.19.')}
    with pytest.raises(detect.UnknownCheckpoint, match=r'D=19 blocks, C=6 convs, G=32 channels, which is no '
                                                       r'--RDNconfig'):
        detect.detect_architecture(rdn)


def test_rgb_range_is_assumed_when_the_mean_shift_is_not_the_div2k_mean():
    state = synthesise(detect.expected_shapes('EDSR', scale=2, n_colors=3, n_feats=8, n_resblocks=1), rgb_range=None)
    found = detect.detect_architecture(state)  # zero bias: no rgb_range in it
    assert 'rgb_range' not in found.options and found.assumed['rgb_range'] == 255


# ------------------------------------------------------------------------------------------ real baselines

@pytest.mark.parametrize(('name', 'flags', 'expected'), [
    ('EDSR', ['--n_resblocks', '2', '--n_feats', '8', '--scale', '3', '--rgb_range', '1'],
     dict(n_resblocks=2, n_feats=8, scale=3, n_colors=3, rgb_range=1)),
    ('RCAN', ['--n_resgroups', '2', '--n_resblocks', '2', '--n_feats', '16', '--reduction', '4', '--scale', '4'],
     dict(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, scale=4, n_colors=3, rgb_range=255)),
    ('RDN', ['--G0', '8', '--RDNconfig', 'A', '--RDNkSize', '3', '--scale', '2'],
     dict(G0=8, RDNconfig='A', RDNkSize=3, scale=2, n_colors=3)),
    ('NLSN', ['--n_resblocks', '9', '--n_feats', '8', '--scale', '2', '--rgb_range', '1'],
     dict(n_resblocks=9, n_feats=8, scale=2, n_colors=3, rgb_range=1)),
])
def test_real_baseline_networks_round_trip(name, flags, expected):
    module = pytest.importorskip(f'model.{name.lower()}')
    args = option.parse_args(['--model', name, '--cpu', *flags])
    found = detect.detect_architecture(module.make_model(args).state_dict())
    assert found.model == name and found.options == expected


# ------------------------------------------------------------------------------------------ --pre_train

def save_tiny(path: Path, **kw) -> dict:
    state = tiny_lcoan(**kw).state_dict()
    torch.save(state, path)
    return state


def test_pre_train_fills_the_flags_that_were_not_given(tmp_path):
    ckpt = tmp_path / 'x3.pt'
    save_tiny(ckpt, scale=3, n_hashes=2, n_colors=1, rgb_range=255)
    args = option.parse_main_args(['--pre_train', str(ckpt), '--cpu', '--window_size', '16'])
    assert (args.model, args.scale, args.n_feats, args.n_resgroups, args.n_resblocks, args.reduction,
            args.n_clusters, args.n_hashes, args.n_colors, args.rgb_range) == ('LCoAN', [3], 8, 2, 1, 2, 4, 2, 1, 255)
    assert (args.window_size, args.res_scale, args.ema_decay) == (16, 0.1, 0.999)
    line = args.pre_train_detected
    assert line.startswith(f'--pre_train {ckpt}: LCoAN x3 checkpoint; options read from the weights: model=LCoAN, '
                           'scale=3, n_colors=1, n_feats=8, n_resgroups=2, n_resblocks=1, reduction=2, n_clusters=4, '
                           'n_hashes=2, rgb_range=255; assumed (not stored in the weights): res_scale=0.1, '
                           'ema_decay=0.999')
    assert '\n' not in line
    # The network built from the filled flags takes the checkpoint strictly.
    log = []

    class Ckp:
        def write_log(self, msg):
            log.append(msg)

    net = model.Model(args, Ckp())
    assert any('Loaded --pre_train' in m for m in log)
    assert net.get_model().body[0].attention[0].kmeans.means.shape == (2, 4, 4)


def test_given_flags_win_and_a_contradiction_is_the_loader_mismatch_error(tmp_path):
    ckpt = tmp_path / 'x2.pt'
    save_tiny(ckpt)
    args = option.parse_main_args(['--pre_train', str(ckpt), '--cpu', '--n_feats', '16'])
    assert args.n_feats == 16 and 'n_feats' in args.given
    assert args.pre_train_detected.endswith('; as given (flags or --template): n_feats.')
    with pytest.raises(UserError, match=r'does not fit this model; shape mismatch: head\.0\.weight checkpoint '
                                        r'\(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)'):
        model.Model(args, type('Ckp', (), {'write_log': lambda self, m: None})())


def test_paper_flags_are_all_given_and_keep_their_values(tmp_path):
    ckpt = tmp_path / 'x2.pt'
    save_tiny(ckpt)
    args = option.parse_main_args(['--template', 'LCoAN_paper', '--scale', '4', '--pre_train', str(ckpt), '--cpu'])
    # The paper's x4 fine-tuning from x2 weights: every model flag comes from the template and --scale.
    assert (args.scale, args.n_feats, args.n_resgroups, args.window_size) == ([4], 128, 10, 384)
    assert args.pre_train_detected == (
        f'--pre_train {ckpt}: LCoAN x2 checkpoint; options read from the weights: n_colors=3, n_hashes=1; as given '
        '(flags or --template): model, n_clusters, n_feats, n_resblocks, n_resgroups, reduction, rgb_range, scale.')


def test_pre_train_of_an_unknown_file_is_one_line(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'fc.weight': torch.zeros(2, 2)}, path)
    with pytest.raises(detect.UnknownCheckpoint, match=rf'^--pre_train {path}: not a super-resolution checkpoint .*'
                                                       r'fc\.weight$'):
        option.parse_main_args(['--pre_train', str(path), '--cpu'])
    # A missing file is left to the loader, which names it.
    missing = option.parse_main_args(['--pre_train', str(tmp_path / 'missing.pt'), '--cpu'])
    assert missing.pre_train_detected == ''
    with pytest.raises(UserError, match='missing.pt: no such file'):
        model.Model(missing, type('Ckp', (), {'write_log': lambda self, m: None})())


def test_given_flags_include_the_template_and_the_command_line():
    assert option.parse_args(['--n_feats', '8', '--cpu', '--scale=3']).given == {'n_feats', 'cpu', 'scale'}
    args = option.parse_args(['--template', 'demo', '--cpu'])
    assert {'cpu', 'n_feats', 'window_size'} <= args.given and 'n_hashes' not in args.given


def test_checkpoint_io_loads_wrapped_state_dicts(tmp_path):
    state = tiny_lcoan().state_dict()
    path = tmp_path / 'wrapped.pt'
    torch.save({'state_dict': state, 'epoch': torch.tensor(1)}, path)
    net = tiny_lcoan()
    checkpoint.read(path, recognise=False).load_into(net, log=lambda _: None)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_every_architecture_has_a_signature_key_of_its_own():
    signatures = [arch.signature for arch in registry.architectures().values()]
    assert len(set(signatures)) == len(signatures)
    for arch in registry.architectures().values():
        state = arch.shapes(scale=2, n_colors=3, **arch.defaults)
        assert arch.signature in state
        assert all(arch.knows_key(k) for k in state)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_the_upsampler_scale_does_not_depend_on_key_order(scale):
    """A safetensors file lists keys sorted as text: an output conv named ``out`` comes before ``upsample.*``."""
    shapes = {**spec.conv('stem.', 8, 3, 3), **spec.upsampler('upsample.', scale, 8), **spec.conv('out.', 3, 8, 3)}
    state = {k: torch.zeros(v) for k, v in shapes.items()}
    assert spec.upsampler_scale(state, 'upsample.') == scale
    assert spec.upsampler_scale(dict(sorted(state.items())), 'upsample.') == scale
