"""PSNR/SSIM of metrics.py against scikit-image with MATLAB's settings on real photographs."""

import math

import numpy as np
import pytest
import skimage.data
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

import metrics


def _degraded_pair(image: np.ndarray, scale: int, seed: int, size: int = 120):
    """HR: a crop of a photograph (uint8); SR: bicubic down- and upsampling plus noise (float, unquantised)."""
    hr = image[40:40 + size, 60:60 + size]
    lr = resize(hr.astype(np.float64) / 255, (size // scale, size // scale) + hr.shape[2:], order=3,
                anti_aliasing=True)
    sr = resize(lr, hr.shape, order=3) + np.random.default_rng(seed).normal(0, 0.01, hr.shape)
    return hr, sr.astype(np.float32)  # slightly outside [0, 1] on purpose: quantisation clamps it


def _to_tensor(img: np.ndarray, rgb_range: float) -> torch.Tensor:
    img = img.astype(np.float32)
    t = torch.from_numpy(img if img.ndim == 3 else img[..., None]).permute(2, 0, 1)[None]
    return t * rgb_range


def _reference(hr_u8: np.ndarray, sr01: np.ndarray, shave: int, on_y: bool, psnr_on_rgb: bool = False):
    """skimage's PSNR and SSIM (MATLAB settings) of the 8-bit quantised SR."""
    sr_u8 = np.clip(np.round(sr01 * np.float32(255)), 0, 255).astype(np.uint8)

    def y(img):
        return rgb2ycbcr(img)[..., 0] if on_y else img.astype(np.float64)

    def crop(img):
        return img[shave:-shave, shave:-shave]

    a_psnr, b_psnr = (hr_u8.astype(np.float64), sr_u8.astype(np.float64)) if psnr_on_rgb else (y(hr_u8), y(sr_u8))
    psnr = peak_signal_noise_ratio(crop(a_psnr), crop(b_psnr), data_range=255)
    ssim = structural_similarity(crop(y(hr_u8)), crop(y(sr_u8)), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)
    return psnr, ssim


@pytest.mark.parametrize('name, scale, rgb_range', [
    ('astronaut', 2, 1), ('chelsea', 3, 255), ('coffee', 4, 1), ('rocket', 2, 255),
])
def test_benchmark_metrics_match_skimage_on_y(name, scale, rgb_range):
    hr, sr = _degraded_pair(getattr(skimage.data, name)(), scale, seed=scale)
    ref_psnr, ref_ssim = _reference(hr, sr, shave=scale, on_y=True)
    sr_t, hr_t = _to_tensor(sr, rgb_range), _to_tensor(hr / 255, rgb_range)
    psnr = metrics.calc_psnr(sr_t, hr_t, scale, rgb_range, benchmark=True)
    ssim = metrics.calc_ssim(sr_t, hr_t, scale, rgb_range, benchmark=True)
    assert 20 < ref_psnr < 45 and 0.5 < ref_ssim < 0.999  # a realistic, non-trivial degradation
    assert psnr == pytest.approx(ref_psnr, abs=1e-4)
    assert ssim == pytest.approx(ref_ssim, abs=1e-5)


def test_div2k_validation_psnr_is_rgb_with_scale_plus_6_shave():
    scale = 2
    hr, sr = _degraded_pair(skimage.data.astronaut(), scale, seed=7)
    ref_psnr, ref_ssim = _reference(hr, sr, shave=scale + 6, on_y=True, psnr_on_rgb=True)
    sr_t, hr_t = _to_tensor(sr, 1), _to_tensor(hr / 255, 1)
    assert metrics.calc_psnr(sr_t, hr_t, scale, 1, benchmark=False) == pytest.approx(ref_psnr, abs=1e-4)
    assert metrics.calc_ssim(sr_t, hr_t, scale, 1, benchmark=False) == pytest.approx(ref_ssim, abs=1e-5)
    # The two protocols differ measurably on the same pair.
    assert abs(metrics.calc_psnr(sr_t, hr_t, scale, 1, benchmark=True) - ref_psnr) > 0.1


def test_one_channel_input_is_taken_as_y():
    scale = 3
    hr, sr = _degraded_pair(skimage.data.camera(), scale, seed=3)
    ref_psnr, ref_ssim = _reference(hr, sr, shave=scale, on_y=False)
    sr_t, hr_t = _to_tensor(sr, 255), _to_tensor(hr / 255, 255)
    assert sr_t.shape == (1, 1, 120, 120)
    assert metrics.calc_psnr(sr_t, hr_t, scale, 255) == pytest.approx(ref_psnr, abs=1e-4)
    assert metrics.calc_ssim(sr_t, hr_t, scale, 255) == pytest.approx(ref_ssim, abs=1e-5)


def test_y_conversion_and_shave():
    # A constant RGB difference gives a known Y difference: d * sum(coeffs) / 256 on the 8-bit scale.
    hr = torch.full((1, 3, 20, 20), 100 / 255)
    sr = hr.clone()
    sr[:, 0] += 10 / 255  # +10 on R only
    expected = 10 * math.log10(255 ** 2 / (10 * 65.738 / 256) ** 2)
    assert metrics.calc_psnr(sr, hr, 2, 1) == pytest.approx(expected, abs=1e-9)
    # Errors inside the shaved border are not counted.
    sr = hr.clone()
    sr[..., :2, :] = 0
    sr[..., :, -2:] = 1
    assert metrics.calc_psnr(sr, hr, 2, 1) == math.inf
    assert metrics.calc_psnr(sr, hr, 1, 1) < 20
    # SSIM is computed on Y with the +16 offset: a uniform image compares equal to itself.
    assert metrics.calc_ssim(hr, hr, 2, 1) == pytest.approx(1.0, abs=1e-12)


def test_sr_is_quantised_before_measuring():
    hr = torch.from_numpy(skimage.data.astronaut()[:48, :48].astype(np.float32) / 255).permute(2, 0, 1)[None]
    off_grid = hr + 0.3 / 255  # rounds back onto hr
    assert metrics.calc_psnr(off_grid, hr, 2, 1) == math.inf
    assert metrics.calc_ssim(off_grid, hr, 2, 1) == pytest.approx(1.0, abs=1e-12)
    clipped = hr.clone()
    clipped[0, :, 10, 10] = 2.0  # out of range: clamped to 255 first
    at_max = hr.clone()
    at_max[0, :, 10, 10] = 1.0
    assert metrics.calc_psnr(clipped, hr, 2, 1) == pytest.approx(metrics.calc_psnr(at_max, hr, 2, 1), abs=1e-12)
    assert metrics.quantize(torch.tensor([0.1, 254.6, 300.0, -3.0]), 255).tolist() == [0.0, 255.0, 255.0, 0.0]


def test_batch_is_the_mean_of_per_image_values():
    a, sa = _degraded_pair(skimage.data.astronaut(), 2, seed=1, size=64)
    b, sb = _degraded_pair(skimage.data.coffee(), 2, seed=2, size=64)
    hr = torch.cat([_to_tensor(a / 255, 1), _to_tensor(b / 255, 1)])
    sr = torch.cat([_to_tensor(sa, 1), _to_tensor(sb, 1)])
    for fn in (metrics.calc_psnr, metrics.calc_ssim):
        single = [fn(sr[i:i + 1], hr[i:i + 1], 2, 1) for i in range(2)]
        assert fn(sr, hr, 2, 1) == pytest.approx(sum(single) / 2, abs=1e-12)


def test_shape_errors():
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match='differ in shape'):
        metrics.calc_psnr(x, torch.zeros(1, 3, 32, 30), 2, 1)
    with pytest.raises(ValueError, match='differ in shape'):
        metrics.calc_ssim(x, torch.zeros(1, 1, 32, 32), 2, 1)
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        metrics.calc_psnr(x[0], x[0], 2, 1)
    with pytest.raises(ValueError, match='too small'):
        metrics.calc_psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), 4, 1)
    with pytest.raises(ValueError, match='SSIM window'):
        metrics.calc_ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 3, 1)


@pytest.mark.parametrize('name, crop_border, rgb_range', [('astronaut', 0, 1), ('coffee', 5, 255)])
def test_explicit_arguments_match_skimage_on_rgb(name, crop_border, rgb_range):
    # BasicSR's interface: any crop_border, every RGB channel (test_y_channel=False); SSIM is the channel mean.
    hr, sr = _degraded_pair(getattr(skimage.data, name)(), 2, seed=11)
    sr_u8 = np.clip(np.round(sr * np.float32(255)), 0, 255).astype(np.uint8)
    c = slice(crop_border, hr.shape[0] - crop_border)
    ref_psnr = peak_signal_noise_ratio(hr[c, c].astype(np.float64), sr_u8[c, c].astype(np.float64), data_range=255)
    ref_ssim = structural_similarity(hr[c, c].astype(np.float64), sr_u8[c, c].astype(np.float64), channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    sr_t, hr_t = _to_tensor(sr, rgb_range), _to_tensor(hr / 255, rgb_range)
    kwargs = dict(rgb_range=rgb_range, crop_border=crop_border, test_y_channel=False)
    assert 20 < ref_psnr < 45 and 0.5 < ref_ssim < 0.999
    assert metrics.psnr(sr_t, hr_t, **kwargs) == pytest.approx(ref_psnr, abs=1e-4)
    assert metrics.ssim(sr_t, hr_t, **kwargs) == pytest.approx(ref_ssim, abs=1e-5)
    # test_y_channel=True measures skimage's Y instead, a different number on the same pair.
    ref_y = peak_signal_noise_ratio(rgb2ycbcr(hr)[c, c, 0], rgb2ycbcr(sr_u8)[c, c, 0], data_range=255)
    y_psnr = metrics.psnr(sr_t, hr_t, rgb_range=rgb_range, crop_border=crop_border, test_y_channel=True)
    assert y_psnr == pytest.approx(ref_y, abs=1e-4) and abs(y_psnr - ref_psnr) > 0.1


def test_protocols_are_the_explicit_functions():
    hr, sr = _degraded_pair(skimage.data.chelsea(), 3, seed=5, size=96)
    sr_t, hr_t = _to_tensor(sr, 1), _to_tensor(hr / 255, 1)
    assert metrics.calc_psnr(sr_t, hr_t, 3, 1) == metrics.psnr(sr_t, hr_t, rgb_range=1, crop_border=3,
                                                               test_y_channel=True)
    assert metrics.calc_psnr(sr_t, hr_t, 3, 1, benchmark=False) == metrics.psnr(
        sr_t, hr_t, rgb_range=1, crop_border=9, test_y_channel=False)
    assert metrics.calc_ssim(sr_t, hr_t, 3, 1, benchmark=False) == metrics.ssim(
        sr_t, hr_t, rgb_range=1, crop_border=9, test_y_channel=True)
    with pytest.raises(ValueError, match='crop_border -1: must not be negative'):
        metrics.psnr(sr_t, hr_t, rgb_range=1, crop_border=-1, test_y_channel=True)
    with pytest.raises(TypeError):
        metrics.psnr(sr_t, hr_t, 1, 3, True)  # keyword-only: no silent swap of rgb_range and crop_border


def test_data_and_metrics_share_the_y_coefficients():
    from data.common import rgb_to_y
    rgb = skimage.data.astronaut()[:40, :40]
    y = torch.from_numpy(rgb_to_y(rgb)[..., 0].astype(np.float64))
    expected = metrics._luma(torch.from_numpy(rgb).permute(2, 0, 1)[None].double())[0, 0]
    assert torch.equal(y, torch.floor(expected + 0.5))
    assert np.array_equal(rgb_to_y(rgb)[..., 0], np.round(rgb2ycbcr(rgb)[..., 0]).astype(np.uint8))


def _whole_image_float64(sr, hr, *, rgb_range, crop_border, test_y_channel):
    """PSNR and SSIM as metrics.py computed them before the strips: the whole image at once in float64."""
    p = 255 / rgb_range
    x = metrics.quantize(sr, rgb_range).double().mul(p).round()
    y = hr.double().mul(p).clamp(0, 255).round()
    if test_y_channel:
        x, y = metrics._luma(x), metrics._luma(y)
    b = crop_border
    x, y = x[..., b:x.shape[-2] - b, b:x.shape[-1] - b], y[..., b:y.shape[-2] - b, b:y.shape[-1] - b]
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    psnr = sum(10 * math.log10(255 ** 2 / m) for m in mse.tolist()) / len(mse)
    xs, ys = x.flatten(0, 1)[:, None], y.flatten(0, 1)[:, None]
    ssim_map = metrics._ssim_map(xs, ys, metrics._gaussian_window(x.device))
    return psnr, float(ssim_map.reshape(sr.shape[0], -1).mean(dim=1).mean())


@pytest.mark.parametrize('strip_pixels', [metrics.STRIP_PIXELS, 700, 100])
@pytest.mark.parametrize('name, crop_border, y', [('astronaut', 2, True), ('coffee', 4, False), ('chelsea', 0, True)])
def test_strips_give_the_whole_image_values(monkeypatch, strip_pixels, name, crop_border, y):
    # Strips of 1 row (100 pixels), of 7 rows (the last strip shorter) and the default (one strip here).
    hr, sr = _degraded_pair(getattr(skimage.data, name)(), 2, seed=4, size=97)
    sr_t, hr_t = _to_tensor(sr, 1), _to_tensor(hr / 255, 1)
    sr_t, hr_t = torch.cat([sr_t, sr_t.flip(-1)]), torch.cat([hr_t, hr_t.flip(-1)])  # a batch of two
    kwargs = dict(rgb_range=1, crop_border=crop_border, test_y_channel=y)
    ref_psnr, ref_ssim = _whole_image_float64(sr_t, hr_t, **kwargs)
    monkeypatch.setattr(metrics, 'STRIP_PIXELS', strip_pixels)
    assert metrics.psnr(sr_t, hr_t, **kwargs) == pytest.approx(ref_psnr, abs=1e-9)
    assert metrics.ssim(sr_t, hr_t, **kwargs) == pytest.approx(ref_ssim, abs=1e-12)


def test_size_limits_of_the_metrics():
    assert not metrics.psnr_fits((1, 3, 4, 10), 2) and metrics.psnr_fits((1, 3, 6, 10), 2)
    assert not metrics.ssim_fits((1, 3, 14, 40), 2) and metrics.ssim_fits((1, 3, 15, 15), 2)
    x = torch.rand(1, 3, 6, 10)
    assert metrics.calc_psnr(x, x.clone(), 2, 1) == math.inf  # 2x6 left after shaving: scored
