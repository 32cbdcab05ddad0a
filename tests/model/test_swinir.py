"""SwinIR: the official release layout loads as it is, is detected from its weights and gives the official test
script's outputs (``tests/fixtures/swinir/README.md`` says how the fixtures were made); padding, masks, flags,
refused variants, fine-tuning, tiling and ONNX."""

import numpy as np
import pytest
import torch
from PIL import Image

import api
import helpers
import option
import upscale
from helpers.architectures import tiny_network
from model import checkpoint, swinir
from model.checkpoint import detect
from model.spec import UnknownCheckpoint

FIXTURES = helpers.FIXTURES / 'swinir'
# name -> the options detection must read from the weights (the official constructor's arguments).
CASES = {
    'classical_x2': dict(scale=2, n_colors=3, embed_dim=12, depths='2+1', num_heads='2+3', window_size=4,
                         mlp_ratio=2.0, upsampler='pixelshuffle', resi_connection='1conv', img_size=8),
    'lightweight_x4': dict(scale=4, n_colors=3, embed_dim=12, depths='2', num_heads='3', window_size=4,
                           mlp_ratio=2.0, upsampler='pixelshuffledirect', resi_connection='1conv', img_size=8),
    'classical_3conv_x3': dict(scale=3, n_colors=3, embed_dim=8, depths='2', num_heads='2', window_size=6,
                               mlp_ratio=1.5, upsampler='pixelshuffle', resi_connection='3conv', img_size=12),
}
# Float rounding only: the largest differences measured are 3.6e-7, 2.1e-7 and 1.2e-7 (torch 2.13, CPU).
TOLERANCE = 2e-6


def io(name: str) -> dict:
    return torch.load(FIXTURES / f'{name}.io.pt', weights_only=True)


def official_state(name: str) -> dict:
    return torch.load(FIXTURES / f'{name}.pth', weights_only=True)['params']


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy().astype(np.uint8)


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
    name = request.param
    return name, api.load_pretrained(FIXTURES / f'{name}.pth', device='cpu'), io(name)


# ------------------------------------------------------------------------------ the official outputs

def test_release_layout_is_detected_with_the_official_configuration(case):
    name, net, data = case
    found = checkpoint.read(FIXTURES / f'{name}.pth').detected
    assert (found.model, found.options) == ('SwinIR', CASES[name])
    assert found.assumed == {'rgb_range': 1}  # the released weights run on [0, 1] images
    assert net.sr_args.rgb_range == 1
    h, w = data['input'].shape[-2:]
    window = CASES[name]['window_size']
    assert h % window or w % window  # the crop is not a multiple of the window on both sides


def test_the_official_test_script_output_is_reproduced(case):
    name, net, data = case
    with torch.no_grad():
        out = net(data['input'])
    assert out.shape == data['output'].shape
    assert (out - data['output']).abs().max() < TOLERANCE


def test_the_output_does_not_depend_on_rgb_range(case):
    name, _, data = case
    net = api.load_pretrained(FIXTURES / f'{name}.pth', device='cpu', rgb_range=255)
    with torch.no_grad():
        out = net(data['input'] * 255) / 255
    assert (out - data['output']).abs().max() < TOLERANCE


def test_upscale_cli_reproduces_the_official_8_bit_output(case, tmp_path):
    name, _, data = case
    Image.fromarray(to_uint8(data['input'])).save(tmp_path / 'lr.png')
    assert upscale.main(['--weights', str(FIXTURES / f'{name}.pth'), str(tmp_path / 'lr.png'), '-o',
                         str(tmp_path / 'out'), '--cpu']) == 0
    scale = CASES[name]['scale']
    got = np.asarray(Image.open(tmp_path / 'out' / f'lr_x{scale}.png')).astype(int)
    want = to_uint8(data['output']).astype(int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1


def test_the_network_class_padding_is_another_function(case):
    """Training mode pads as the official network class (reflect to the next multiple): a different output."""
    name, net, data = case
    net.train()
    try:
        with torch.no_grad():
            out = net(data['input'])
    finally:
        net.eval()
    assert out.shape == data['output'].shape
    assert (out - data['output']).abs().max() * 255 > 10


# ------------------------------------------------------------------------------ the release configurations

# The official state_dict listings of the released SwinIR-M x2 (DIV2K, s48w8) and SwinIR-S x3 (s64w8), written from
# the official network class, with the options detection must read from them.
RELEASES = {
    'swinir_m_x2': dict(scale=2, n_colors=3, embed_dim=180, depths='6+6+6+6+6+6', num_heads='6+6+6+6+6+6',
                        window_size=8, mlp_ratio=2.0, upsampler='pixelshuffle', resi_connection='1conv', img_size=48),
    'swinir_s_x3': dict(scale=3, n_colors=3, embed_dim=60, depths='6+6+6+6', num_heads='6+6+6+6', window_size=8,
                        mlp_ratio=2.0, upsampler='pixelshuffledirect', resi_connection='1conv', img_size=64),
}


def listing(name: str) -> list[tuple[str, tuple, str]]:
    text = (helpers.FIXTURES / 'reference' / f'{name}_state_dict.txt').read_text()
    rows = [line.split('\t') for line in text.splitlines()]
    return [(key, tuple(int(n) for n in shape.strip('()').split(',') if n.strip()), dtype)
            for key, shape, dtype in rows]


@pytest.mark.parametrize('name', list(RELEASES))
def test_release_configurations_have_the_official_state_dict_and_are_detected(name):
    cfg = RELEASES[name]
    with torch.device('meta'):
        net = swinir.SwinIR(**{k: v for k, v in cfg.items() if k != 'n_colors'})
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in net.state_dict().items()]
    assert ours == listing(name)
    dtypes = {'float32': torch.float32, 'int64': torch.int64}
    state = {key: torch.zeros(shape, dtype=dtypes[dtype]) for key, shape, dtype in listing(name)}
    found = detect.detect_architecture({'params': state}['params'])
    assert (found.model, found.options, found.assumed) == ('SwinIR', cfg, {'rgb_range': 1})


# ------------------------------------------------------------------------------ padding and constants

@pytest.mark.parametrize(('size', 'window', 'pad'), [(13, 4, 3), (16, 4, 4), (16, 8, 8), (1, 8, 7), (9, 8, 7)])
def test_test_padding_always_adds_one_to_a_whole_window(size, window, pad):
    assert swinir.test_padding(size, window) == pad


def test_test_padding_mirrors_the_edge_as_the_official_script():
    x = torch.rand(1, 3, 13, 10)
    got = swinir.pad_for_test(x, 8)
    # main_test_swinir.py: concatenate the flipped image, cut to (h // 8 + 1) * 8 rows, then the same for columns
    want = torch.cat([x, x.flip(2)], 2)[:, :, :16]
    want = torch.cat([want, want.flip(3)], 3)[:, :, :, :16]
    assert torch.equal(got, want)
    small = swinir.pad_for_test(torch.arange(3.0).view(1, 1, 1, 3), 8)  # shorter than its padding: periodic
    assert small.shape == (1, 1, 8, 8) and small[0, 0, 0].tolist() == [0, 1, 2, 2, 1, 0, 0, 1]


def test_constant_buffers_load_strictly_and_the_stored_mask_is_not_used(case):
    name, net, data = case
    state = official_state(name)
    assert set(state) == set(net.state_dict())
    own = net.state_dict()
    for key in [k for k in state if k.endswith(('relative_position_index', 'attn_mask'))]:
        assert torch.equal(own[key], state[key]), key
    masks = [k for k in state if k.endswith('attn_mask')]
    assert masks
    cfg = CASES[name]
    window = cfg['window_size']
    assert torch.equal(state[masks[0]], swinir.shift_mask(cfg['img_size'], cfg['img_size'], window, window // 2))
    broken = {k: (torch.full_like(v, 7.0) if k in masks else v) for k, v in state.items()}
    other = api.load_pretrained(FIXTURES / f'{name}.pth', device='cpu')
    other.load_state_dict(broken, strict=True)
    with torch.no_grad():
        assert torch.equal(other(data['input']), net(data['input']))


# ------------------------------------------------------------------------------ refused variants

def refused(state: dict) -> str:
    with pytest.raises(UnknownCheckpoint) as e:
        detect.detect_architecture(state)
    assert '\n' not in str(e.value)
    return str(e.value)


def test_real_world_sr_checkpoint_is_refused_in_one_line():
    state = official_state('classical_x2')
    state = {k: v for k, v in state.items() if not k.startswith('upsample.')}
    for key in ('conv_up1', 'conv_up2', 'conv_hr'):
        state[f'{key}.weight'], state[f'{key}.bias'] = torch.zeros(64, 64, 3, 3), torch.zeros(64)
    assert "upsampler 'nearest+conv'" in refused(state)


def test_other_variants_are_refused_in_one_line():
    state = official_state('classical_x2')
    assert 'absolute_pos_embed' in refused({**state, 'absolute_pos_embed': torch.zeros(1, 64, 12)})
    denoising = {k: v for k, v in state.items() if not k.startswith(('upsample.', 'conv_before_upsample.'))}
    denoising['conv_last.weight'] = torch.zeros(3, 12, 3, 3)
    assert 'no upsampler' in refused(denoising)
    assert 'unknown' in refused({**state, 'layers.0.something.weight': torch.zeros(1)})


# ------------------------------------------------------------------------------ flags

def test_list_flags_take_plus_or_comma_form_and_are_checked():
    args = option.parse_args(['--model', 'swinir', '--cpu', '--embed_dim', '12', '--depths', '2,1',
                              '--num_heads', '3', '--window_size', '4', '--img_size', '8'])
    assert (args.model, args.depths, args.num_heads) == ('SwinIR', '2+1', '3')
    net = swinir.make_model(args)
    assert len(net.layers) == 2 and len(net.layers[1].residual_group.blocks) == 1
    for flags, message in ((['--depths', '2+x'], '--depths'), (['--num_heads', '2+2'], 'one per layer'),
                           (['--num_heads', '7'], 'divide --embed_dim'), (['--img_size', '12'], '--img_size'),
                           (['--upsampler', 'nearest+conv'], 'pixelshuffle, pixelshuffledirect')):
        with pytest.raises(Exception, match=message):
            option.parse_args(['--model', 'SwinIR', '--cpu', *flags])


def test_templates_give_the_published_configurations():
    paper = option.parse_args(['--template', 'SwinIR_paper', '--cpu'])
    assert (paper.model, paper.rgb_range, paper.embed_dim, paper.depths, paper.num_heads, paper.window_size,
            paper.mlp_ratio, paper.img_size, paper.upsampler, paper.resi_connection) == (
        'SwinIR', 1, 180, '6+6+6+6+6+6', '6+6+6+6+6+6', 8, 2.0, 48, 'pixelshuffle', '1conv')
    with torch.device('meta'):
        assert sum(p.numel() for p in swinir.make_model(paper).parameters()) == 11_752_487  # SwinIR-M x2
    light = option.parse_args(['--template', 'SwinIR_light', '--cpu'])
    assert (light.embed_dim, light.depths, light.upsampler, light.img_size) == (60, '6+6+6+6', 'pixelshuffledirect',
                                                                                 64)
    with torch.device('meta'):
        assert sum(p.numel() for p in swinir.make_model(light).parameters()) == 910_152  # SwinIR-S x2


# ------------------------------------------------------------------------------ training, fine-tuning, tiles

def test_training_forward_pads_to_the_window_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = tiny_network('SwinIR', scale=3, rgb_range=1, drop_path_rate=0.5).train()
    out = net(torch.rand(2, 3, 5, 7))
    assert out.shape == (2, 3, 15, 21)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():  # stochastic depth draws in training only
        x = torch.rand(2, 3, 8, 8)
        assert not torch.equal(net(x), net(x))
        net.eval()
        assert torch.equal(net(x), net(x))


def test_fine_tuning_x2_to_x4_loads_all_but_the_upsampler(tmp_path):
    torch.manual_seed(0)
    x2 = tiny_network('SwinIR', scale=2)
    torch.save({'params': x2.state_dict()}, tmp_path / 'x2.pth')
    x4 = tiny_network('SwinIR', scale=4)
    lines = []
    skipped = checkpoint.read(tmp_path / 'x2.pth', what='--pre_train', recognise=False).load_into(x4, log=lines.append)
    assert skipped == ['upsample.0.weight', 'upsample.0.bias']
    assert torch.equal(x4.state_dict()['conv_last.weight'], x2.state_dict()['conv_last.weight'])
    assert 'kept the new x4 upsampler' in lines[0]


def test_one_tile_is_the_untiled_output_and_small_tiles_stay_close(case):
    name, net, data = case
    image = to_uint8(torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(0)))
    whole = api.upscale(net, image, tile=64)
    assert np.array_equal(whole, to_uint8(net(torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0).detach()))
    tiled = api.upscale(net, image, tile=24, halo=4)
    assert tiled.shape == whole.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 8


@pytest.mark.slow
def test_onnx_export_has_dynamic_sizes(tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime')
    import export
    net = api.load_pretrained(FIXTURES / 'classical_x2.pth', device='cpu')
    path = export.export_onnx(net, tmp_path / 'swinir.onnx')
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    data = io('classical_x2')
    for lr in (data['input'], torch.rand(1, 3, 8, 12)):  # 8 x 12: multiples of the window get a whole one
        got = session.run(None, {'lr': lr.numpy()})[0]
        with torch.no_grad():
            want = net(lr).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    assert np.abs(session.run(None, {'lr': data['input'].numpy()})[0] - data['output'].numpy()).max() < 1e-5
