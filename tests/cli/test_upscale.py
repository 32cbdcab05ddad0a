"""upscale.py, the Python API (api.load_pretrained / api.upscale) and tiled inference (model.inference)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from torch import nn

import api
import option
import upscale
from core.errors import UserError
from model import checkpoint, inference, registry
from model.lcoan import LCoAN

TINY = dict(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16, rgb_range=1)


def make_checkpoint(path: Path, **kw) -> Path:
    torch.manual_seed(0)
    net = LCoAN(**{**TINY, **kw}).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the centroids initialise from this first batch
        net(torch.rand(1, kw.get('n_colors', 3), 24, 24))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp('w') / 'tiny_x2.pt')


@pytest.fixture(scope='module')
def net(weights):
    return api.load_pretrained(weights, device='cpu', window_size=16)


def rgb(h=20, w=24) -> np.ndarray:
    return skdata.astronaut()[100:100 + h, 200:200 + w].copy()


def run_cli(*argv) -> int:
    return upscale.main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------ tiling

class ConvChain(nn.Module):
    """Purely local: four 3x3 LR convs (radius 4), x2 PixelShuffle, one 3x3 HR conv."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.ReLU())
                                    for i in range(4)])
        self.up = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return self.up(self.body(x))


@pytest.mark.parametrize(('length', 'tile', 'halo'), [(10, 16, 3), (37, 16, 3), (100, 24, 5), (64, 64, 0),
                                                       (65, 20, 0)])
def test_spans_cover_every_pixel_once_with_the_halo_as_context(length, tile, halo):
    parts = inference.halo_spans(length, tile, halo)
    covered = [i for _, _, a, b in parts for i in range(a, b)]
    assert covered == list(range(length))
    for start, stop, a, b in parts:
        assert stop - start <= tile
        assert a - start == min(halo, a) and stop - b == min(halo, length - b)


def test_receptive_radius_of_a_conv_chain():
    assert inference.receptive_radius(ConvChain()) == 6  # 4 LR convs + upsampler conv + HR conv


def test_tiling_a_convolutional_network_is_exact_with_the_receptive_radius_as_halo():
    torch.manual_seed(0)
    net = ConvChain().double()
    lr = torch.rand(1, 3, 45, 38, dtype=torch.float64)
    whole = net(lr)
    halo = inference.receptive_radius(net)
    calls = []
    tiled = inference.tiled_forward(lambda x: (calls.append(x.shape), net(x))[1].double(), lr, scale=2,
                                    rows=inference.halo_spans(45, 20, halo), cols=inference.halo_spans(38, 20, halo))
    assert len(calls) > 4 and max(max(s[-2:]) for s in calls) <= 20
    # .float() in tiled_forward: compare at float32 resolution
    torch.testing.assert_close(tiled, whole.float(), rtol=0, atol=1e-6)
    # One pixel less context than the LR receptive radius (5: four convs + the upsampler's) shows seams.
    short = inference.tiled_forward(net, lr, scale=2, rows=inference.halo_spans(45, 20, 4),
                                    cols=inference.halo_spans(38, 20, 4))
    assert (short - whole.float()).abs().max() > 1e-4


def test_peak_memory_per_pixel_is_measured_and_drives_the_tile(net):
    forward = api.make_forward(net)
    per_px = inference.peak_bytes_per_pixel(forward, 3, 'cpu', size=32)
    # At least the x2 float32 output (4 HR pixels x 3 channels x 4 bytes per LR pixel) and the features.
    assert per_px > 4 * 3 * 4 + 8 * 4
    assert inference.auto_tile(per_px, available=int(per_px * 128 * 128 / inference.MEMORY_FRACTION)) == 128
    assert inference.auto_tile(per_px, available=1) == inference.MIN_TILE


def test_lcoan_tiles_change_little_and_keep_the_size(net):
    image = rgb(48, 56)
    whole = api.upscale(net, image, tile=256)
    seen = []
    tiled = api.upscale(net, image, tile=24, halo=4, progress=lambda tiles: seen.append(len(tiles)) or tiles)
    assert tiled.shape == whole.shape == (96, 112, 3) and seen == [3 * 4]  # cores of at most 24 - 2 * 4
    radius = inference.receptive_radius(net)
    assert inference.default_halo(net, local=False) == (min(radius, inference.NONLOCAL_HALO), False)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert 0 < diff.max() and diff.mean() < 2


# ------------------------------------------------------------------------------------------ API

def test_load_pretrained_detects_and_applies_overrides(weights):
    net = api.load_pretrained(weights, device='cpu', window_size=16)
    assert not net.training and next(net.parameters()).device.type == 'cpu'
    assert net.sr_args.scale == [2] and net.sr_args.n_feats == 8 and net.sr_args.window_size == 16
    assert net.body[0].attention[0].window_size == 16
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(TypeError, match="unknown option 'colour'"):
        api.load_pretrained(weights, device='cpu', colour=3)
    with pytest.raises(UserError, match=r'scale 4 requested, but .*tiny_x2.pt is a x2 LCoAN checkpoint'):
        api.load_pretrained(weights, device='cpu', scale=4)
    with pytest.raises(UserError, match=r'does not fit this model; shape mismatch: head\.0\.weight'):
        api.load_pretrained(weights, device='cpu', n_feats=16)


def test_upscale_matches_the_network_on_rgb(net):
    image = rgb()
    sr = api.upscale(net, image)
    assert sr.dtype == np.uint8 and sr.shape == (40, 48, 3)
    with torch.no_grad():
        ref = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    ref = (ref.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(sr, ref)


def test_upscale_gray_rgba_and_16_bit(net):
    image = rgb()
    plain = api.upscale(net, image)
    gray = image[:, :, 1]
    out = api.upscale(net, gray)
    assert out.shape == (40, 48) and out.dtype == np.uint8
    three = api.upscale(net, np.repeat(gray[:, :, None], 3, axis=2)).astype(np.float64).mean(axis=2)
    assert np.abs(out - three).max() <= 1
    alpha = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))
    rgba = api.upscale(net, np.dstack([image, alpha]))
    np.testing.assert_array_equal(rgba[:, :, :3], plain)  # colour does not depend on the alpha
    expected_alpha = F.interpolate(torch.from_numpy(alpha)[None, None].float() / 255, scale_factor=2, mode='bicubic')
    expected_alpha = (expected_alpha.clamp(0, 1) * 255).round()[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(rgba[:, :, 3], expected_alpha)
    sixteen = api.upscale(net, image.astype(np.uint16) * 257)
    assert sixteen.dtype == np.uint16 and sixteen.shape == (40, 48, 3)
    assert np.abs(sixteen / 257 - plain).max() <= 1.0
    assert len(np.unique(sixteen % 257)) > 1  # finer than 8-bit steps
    with pytest.raises(TypeError, match='uint8 or uint16'):
        api.upscale(net, image.astype(np.float32))


def test_y_network_on_an_rgb_image(tmp_path):
    net = api.load_pretrained(make_checkpoint(tmp_path / 'y.pt', n_colors=1), device='cpu')
    assert net.sr_args.n_colors == 1
    image = rgb()
    sr = api.upscale(net, image)
    assert sr.shape == (40, 48, 3) and sr.dtype == np.uint8
    # Reference from scikit-image's BT.601 conversion: the network on Y, bicubic Cb/Cr.
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    ycc = torch.from_numpy(rgb2ycbcr(image)).permute(2, 0, 1)[None].float()  # Y in [16, 235]
    with torch.no_grad():
        y = net(ycc[:, :1] / 255) * 255
    cbcr = F.interpolate(ycc[:, 1:], scale_factor=2, mode='bicubic')
    ref = ycbcr2rgb(torch.cat([y, cbcr], 1)[0].permute(1, 2, 0).double().numpy())
    ref = (np.clip(ref, 0, 1) * 255).round()
    assert np.abs(sr - ref).max() <= 2


def test_self_ensemble_is_the_mean_of_the_eight_transforms(net):
    image = rgb(16, 20)
    sr = api.upscale(net, image, self_ensemble=True)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    outs = []
    with torch.no_grad():
        for flip_w in (False, True):
            for flip_h in (False, True):
                for transpose in (False, True):
                    t = x.flip(-1) if flip_w else x
                    t = t.flip(-2) if flip_h else t
                    t = t.transpose(-2, -1) if transpose else t
                    y = net(t.contiguous())
                    y = y.transpose(-2, -1) if transpose else y
                    y = y.flip(-2) if flip_h else y
                    outs.append(y.flip(-1) if flip_w else y)
    ref = (torch.stack(outs).mean(0).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(sr.astype(int) - ref.astype(int)).max() <= 1
    assert not np.array_equal(sr, api.upscale(net, image))


# ------------------------------------------------------------------------------------------ upscale.py

def write_inputs(folder: Path) -> dict[str, np.ndarray]:
    import png
    folder.mkdir(parents=True)
    image = rgb()
    Image.fromarray(image).save(folder / 'rgb.png')
    Image.fromarray(image[:, :, 0]).save(folder / 'gray.bmp')
    Image.fromarray(image).save(folder / 'photo.jpg', quality=95)
    Image.fromarray(np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])).save(folder / 'rgba.png')
    Image.fromarray(image).convert('P').save(folder / 'palette.png')
    sixteen = image.astype(np.uint16) * 257 + 3
    png.Writer(width=24, height=20, bitdepth=16, greyscale=False).write(
        open(folder / 'deep.png', 'wb'), sixteen.reshape(20, -1))
    import tifffile
    tifffile.imwrite(folder / 'deep.tif', sixteen[:, :, 0])
    return {'rgb': image, 'sixteen': sixteen}


def test_upscale_cli_writes_every_kind(tmp_path, weights, capsys):
    src = write_inputs(tmp_path / 'in')
    assert run_cli('--weights', weights, tmp_path / 'in', '-o', tmp_path / 'out', '--cpu') == 0
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.iterdir()) == ['deep_x2.png', 'deep_x2.tif', 'gray_x2.bmp', 'palette_x2.png',
                                                      'photo_x2.jpg', 'rgb_x2.png', 'rgba_x2.png']
    expect = {'rgb_x2.png': ((40, 48, 3), np.uint8), 'gray_x2.bmp': ((40, 48), np.uint8),
              'rgba_x2.png': ((40, 48, 4), np.uint8), 'palette_x2.png': ((40, 48, 3), np.uint8),
              'deep_x2.png': ((40, 48, 3), np.uint16), 'deep_x2.tif': ((40, 48), np.uint16),
              'photo_x2.jpg': ((40, 48, 3), np.uint8)}
    for name, (shape, dtype) in expect.items():
        got = upscale.read_image(out / name)
        assert got.shape == shape and got.dtype == dtype, name
    net = api.load_pretrained(weights, device='cpu')
    np.testing.assert_array_equal(upscale.read_image(out / 'rgb_x2.png'), api.upscale(net, src['rgb']))
    np.testing.assert_array_equal(upscale.read_image(out / 'deep_x2.png'), api.upscale(net, src['sixteen']))
    assert (upscale.read_image(out / 'rgba_x2.png')[:, :, 3] == 200).all()
    text = capsys.readouterr().out
    assert '7 image(s) in ' in text and ' s per image.' in text and 'LCoAN x2' in text


def test_upscale_cli_bad_inputs_overwrite_suffix_and_recursion(tmp_path, weights, capsys):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    Image.fromarray(rgb()).save(tmp_path / 'in' / 'a.png')
    Image.fromarray(rgb(12, 12)).save(tmp_path / 'in' / 'sub' / 'b.png')
    (tmp_path / 'in' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    out = tmp_path / 'out'
    assert run_cli('--weights', weights, tmp_path / 'in', tmp_path / 'nothing.png', '-o', out, '-r', '--cpu') == 1
    err = capsys.readouterr().err
    assert f'error: {tmp_path / "in" / "broken.png"}: cannot read it as an image' in err
    assert f'error: {tmp_path / "nothing.png"}: no such file or folder' in err
    assert (out / 'a_x2.png').is_file() and (out / 'sub' / 'b_x2.png').is_file()

    stamp = (out / 'a_x2.png').stat().st_mtime_ns
    (out / 'a_x2.png').write_bytes(b'keep me')
    assert run_cli('--weights', weights, tmp_path / 'in' / 'a.png', '-o', out, '--cpu') == 1
    assert 'exists (--overwrite replaces it)' in capsys.readouterr().err
    assert (out / 'a_x2.png').read_bytes() == b'keep me'
    assert run_cli('--weights', weights, tmp_path / 'in' / 'a.png', '-o', out, '--cpu', '--overwrite') == 0
    assert upscale.read_image(out / 'a_x2.png').shape == (40, 48, 3) and stamp

    assert run_cli('--weights', weights, tmp_path / 'in' / 'a.png', '-o', out, '--cpu', '--suffix', '_sr{scale}') == 0
    assert (out / 'a_sr2.png').is_file()


def test_upscale_cli_weights_errors_exit_2(tmp_path, weights, capsys):
    Image.fromarray(rgb()).save(tmp_path / 'a.png')
    assert run_cli('--weights', tmp_path / 'missing.pt', tmp_path / 'a.png', '-o', tmp_path / 'o') == 2
    assert capsys.readouterr().err.strip() == f'error: weights {tmp_path / "missing.pt"}: no such file'
    torch.save({'fc.weight': torch.zeros(2, 2)}, tmp_path / 'other.pt')
    assert run_cli('--weights', tmp_path / 'other.pt', tmp_path / 'a.png', '-o', tmp_path / 'o') == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: weights {tmp_path / "other.pt"}: not a super-resolution checkpoint')
    assert err.endswith('fc.weight') and '\n' not in err
    assert run_cli('--weights', weights, tmp_path / 'a.png', '-o', tmp_path / 'o', '--scale', '3') == 2
    assert 'scale 3 requested, but' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_upscale_cli_precision_and_tiles(tmp_path, weights, capsys):
    Image.fromarray(rgb(40, 36)).save(tmp_path / 'a.png')
    Image.fromarray(rgb(8, 8)).save(tmp_path / 'b.png')
    assert run_cli('--weights', weights, tmp_path / 'a.png', '-o', tmp_path / 'o', '--cpu', '--tile', '24',
                   '--tile_halo', '4') == 0
    assert run_cli('--weights', weights, tmp_path / 'b.png', '-o', tmp_path / 'o', '--cpu', '--precision', 'bf16') == 0
    net = api.load_pretrained(weights, device='cpu')
    tiled = upscale.read_image(tmp_path / 'o' / 'a_x2.png').astype(int)
    ref = api.upscale(net, rgb(40, 36)).astype(int)
    assert tiled.shape == ref.shape == (80, 72, 3) and np.abs(tiled - ref).mean() < 2
    np.testing.assert_array_equal(tiled, api.upscale(net, rgb(40, 36), tile=24, halo=4))
    bf16 = upscale.read_image(tmp_path / 'o' / 'b_x2.png').astype(int)
    assert bf16.shape == (16, 16, 3) and np.abs(bf16 - api.upscale(net, rgb(8, 8)).astype(int)).mean() < 4


def test_detected_options_reach_the_cli_description(weights):
    ckpt = checkpoint.read(weights)
    state, found = ckpt.state, ckpt.detected
    assert found.describe().startswith('LCoAN x2 (n_colors=3, n_feats=8, n_resgroups=1')
    assert option.parse_main_args(['--pre_train', str(weights), '--cpu']).n_feats == 8 and state


# ------------------------------------------------------------------------------------------ baselines

# RDN is exact by the same halo rule, but its smallest configuration (A: 120 dense 3x3 convs) needs a
# halo of ~120 LR pixels, i.e. minutes of CPU per tiled image: EDSR stands for the convolutional models.
@pytest.mark.parametrize(('name', 'flags'), [
    ('EDSR', ['--n_resblocks', '2', '--n_feats', '8', '--rgb_range', '1']),
])
def test_baseline_convolutional_models_tile_exactly(tmp_path, name, flags):
    module = pytest.importorskip(f'model.{name.lower()}')
    args = option.parse_args(['--model', name, '--cpu', '--scale', '2', *flags])
    torch.manual_seed(0)
    torch.save(module.make_model(args).state_dict(), tmp_path / 'w.pt')
    net = api.load_pretrained(tmp_path / 'w.pt', device='cpu')
    halo, exact = inference.default_halo(net, registry.get(name).local)
    assert exact and halo >= 3
    lr = torch.rand(1, 3, 2 * halo + 30, 2 * halo + 17)
    whole = api.super_resolve(net, lr, tile=10 ** 6)
    tiled = api.super_resolve(net, lr, tile=inference.min_tile(halo))
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ issue #22

@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    from PIL import ImageOps
    image = rgb(6, 10)
    exif = Image.Exif()
    exif[upscale.EXIF_ORIENTATION] = orientation
    Image.fromarray(image).save(tmp_path / 'a.png', exif=exif)
    with Image.open(tmp_path / 'a.png') as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(upscale.read_image(tmp_path / 'a.png'), expected)
    import tifffile
    tifffile.imwrite(tmp_path / 'a.tif', image, photometric='rgb', extratags=[(274, 'H', 1, orientation, True)])
    np.testing.assert_array_equal(upscale.read_image(tmp_path / 'a.tif'), expected)


def test_a_portrait_jpeg_comes_out_upright(tmp_path, weights):
    stored = rgb(20, 24)  # stored landscape; the camera says: turn it 90 degrees clockwise
    exif = Image.Exif()
    exif[upscale.EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / 'portrait.jpg', quality=95, exif=exif)
    assert run_cli('--weights', weights, tmp_path / 'portrait.jpg', '-o', tmp_path / 'o', '--cpu') == 0
    with Image.open(tmp_path / 'o' / 'portrait_x2.jpg') as out:
        assert out.size == (40, 48) and out.getexif().get(upscale.EXIF_ORIENTATION, 1) == 1


def test_random_networks_give_the_same_output_on_every_run(tmp_path, capsys):
    from helpers.architectures import tiny_network
    def draws_random_numbers(net) -> bool:
        x = torch.rand(1, 3, 12, 12)
        with torch.no_grad():
            net.train()(x)  # initialises LCoA's centroids
            net.eval()
            return not torch.equal(*[(torch.manual_seed(seed), net(x))[1] for seed in (0, 1)])

    nets = [tiny_network(name, rgb_range=1) for name in registry.names()]
    random = [net for net in nets if draws_random_numbers(net)]  # NLSN: its hashing
    if not random:
        pytest.skip('no architecture draws random numbers in its forward')
    torch.save(random[0].state_dict(), tmp_path / 'w.pt')
    Image.fromarray(rgb(16, 18)).save(tmp_path / 'a.png')
    outputs = []
    for seed in ([], [], ['--seed', '5']):
        folder = tmp_path / f'o{len(outputs)}'
        assert run_cli('--weights', tmp_path / 'w.pt', tmp_path / 'a.png', '-o', folder, '--cpu', *seed) == 0
        outputs.append(upscale.read_image(folder / 'a_x2.png'))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
    # The API draws after its seed and leaves the caller's generator where it was.
    net = api.load_pretrained(tmp_path / 'w.pt', device='cpu')
    state = torch.get_rng_state()
    np.testing.assert_array_equal(api.upscale(net, rgb(16, 18)), outputs[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_a_tile_too_small_for_the_halo_is_raised_with_one_warning(tmp_path, capsys):
    from helpers.architectures import tiny_network
    torch.manual_seed(0)
    net = tiny_network('RDN', rgb_range=1)  # a halo of over a hundred LR pixels: its receptive field
    torch.save(net.state_dict(), tmp_path / 'w.pt')
    halo = inference.receptive_radius(net)
    assert halo > 100
    for name in 'ab':
        Image.fromarray(rgb(10, 12)).save(tmp_path / f'{name}.png')
    assert run_cli('--weights', tmp_path / 'w.pt', tmp_path / 'a.png', tmp_path / 'b.png', '-o', tmp_path / 'o',
                   '--cpu', '--tile', '64') == 0
    err = capsys.readouterr().err
    assert err == (f'warning: --tile 64 is too small for a context of {halo} LR pixels on each side (--tile_halo): '
                   f'using --tile {2 * halo + inference.MIN_CORE}, the smallest that keeps a core of '
                   f'{inference.MIN_CORE} pixels; a smaller --tile_halo allows smaller tiles, with visible seams\n')
    assert (tmp_path / 'o' / 'a_x2.png').is_file() and (tmp_path / 'o' / 'b_x2.png').is_file()
    # The API does the same; spans of the raised tile keep a core.
    loaded = api.load_pretrained(tmp_path / 'w.pt', device='cpu')
    with pytest.warns(UserWarning, match='--tile 20 is too small'):
        assert api.fit_tiling(loaded, 20, None) == (2 * halo + inference.MIN_CORE, halo)
    assert api.fit_tiling(loaded, 20, 2) == (20, 2)
    assert inference.halo_spans(300, inference.min_tile(halo), halo)[0][3] == inference.MIN_CORE


def test_write_failures_are_one_line_each_and_the_others_are_written(tmp_path, weights, capsys, monkeypatch):
    import errno
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    for name in ('a', 'b', 'c', 'sub/d'):
        Image.fromarray(rgb()).save(tmp_path / 'in' / f'{name}.png')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'sub').write_text('a file where the subfolder goes')
    real = upscale.write_image

    def write_image(path, image):
        if path.name == 'b_x2.png':
            raise OSError(errno.ENOSPC, 'No space left on device', str(path))
        if path.name == 'c_x2.png':
            raise PermissionError(errno.EROFS, 'Read-only file system', str(path))
        real(path, image)

    monkeypatch.setattr(upscale, 'write_image', write_image)
    assert run_cli('--weights', weights, tmp_path / 'in', '-r', '-o', out, '--cpu') == 1
    err = capsys.readouterr().err.splitlines()
    src = tmp_path / 'in'
    assert err == [f'error: {src / "b.png"}: cannot write {out / "b_x2.png"}: no space left on device',
                   f'error: {src / "c.png"}: cannot write {out / "c_x2.png"}: read-only file system',
                   f'error: {src / "sub" / "d.png"}: cannot write {out / "sub" / "d_x2.png"}: file exists',
                   '3 input(s) failed (see above).']
    assert sorted(p.name for p in out.iterdir()) == ['a_x2.png', 'sub']
    # -o naming a file: one line before any work, exit status 2.
    assert run_cli('--weights', weights, src / 'a.png', '-o', out / 'sub', '--cpu') == 2
    assert capsys.readouterr().err == f'error: -o {out / "sub"}: a file, not a folder\n'


@pytest.mark.parametrize(('suffix', 'message'), [
    ('_{foo}', "--suffix '_{foo}': only {scale} is replaced (write {{ and }} for braces)"),
    ('_{0}', "--suffix '_{0}': only {scale} is replaced (write {{ and }} for braces)"),
    ('_{scale', "--suffix '_{scale': only {scale} is replaced (write {{ and }} for braces)"),
    ('/../x', "--suffix '/../x': part of a file name, without / or \\ (outputs go to -o)"),
    ('_x\\y', "--suffix '_x\\\\y': part of a file name, without / or \\ (outputs go to -o)"),
])
def test_bad_suffixes_are_refused_before_any_work(tmp_path, weights, capsys, suffix, message):
    Image.fromarray(rgb()).save(tmp_path / 'a.png')
    assert run_cli('--weights', weights, tmp_path / 'a.png', '-o', tmp_path / 'o', '--cpu', '--suffix', suffix) == 2
    assert capsys.readouterr().err == f'error: {message}\n'
    assert not (tmp_path / 'o').exists() and sorted(p.name for p in tmp_path.iterdir()) == ['a.png']


def test_a_second_run_into_the_input_folder_does_not_upscale_its_own_outputs(tmp_path, weights, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    Image.fromarray(rgb()).save(folder / 'a.png')
    Image.fromarray(rgb(12, 12)).save(folder / 'b.jpg')
    assert run_cli('--weights', weights, folder, '-o', folder, '--cpu') == 0
    capsys.readouterr()
    assert run_cli('--weights', weights, folder, '-o', folder, '--cpu', '--overwrite') == 0
    out = capsys.readouterr().out
    assert f'Skipped 2 file(s) that are the outputs of other inputs (e.g. {folder / "a_x2.png"}, of ' \
           f'{folder / "a.png"}).' in out
    assert sorted(p.name for p in folder.iterdir()) == ['a.png', 'a_x2.png', 'b.jpg', 'b_x2.jpg']
    # With another output folder, an earlier output is an input like any other.
    assert run_cli('--weights', weights, folder / 'a_x2.png', '-o', tmp_path / 'again', '--cpu') == 0
    assert (tmp_path / 'again' / 'a_x2_x2.png').is_file()
