"""data.imresize (bicubic_pytorch underneath) against an independent numpy MATLAB imresize, and prepare_data.py."""

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import skimage.data
from PIL import Image

import prepare_data
from data.imresize import bicubic_downscale, crop_to_scale
from helpers.imresize_reference import matlab_imresize_reference

# ----------------------------------------------------------------------------------------------
# independent reference: MATLAB's imresize.m (contributions + imresizemex) for uint8 downscaling


def test_reference_reproduces_linear_ramps():
    # The cubic kernel reproduces linear functions: away from the borders a ramp maps to the means.
    ramp = np.tile((np.arange(96) * 2).astype(np.uint8), (48, 1))
    for s in (2, 3, 4):
        out = matlab_imresize_reference(ramp, s)[:, 3:-3].astype(np.float64)
        expected = 2 * (np.arange(96 // s) * s + (s - 1) / 2)[3:-3]
        assert np.abs(out - np.floor(expected + 0.5)).max() == 0


PHOTOS = {
    'astronaut': skimage.data.astronaut,  # 512x512
    'chelsea': skimage.data.chelsea,  # 300x451: not a multiple of 2, 3 or 4 in width
    'coffee': skimage.data.coffee,  # 400x600
    'rocket': skimage.data.rocket,  # 427x640: height not a multiple of 2, 3, 4
}


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_matches_matlab_reference_on_photographs(scale):
    total = mismatched = 0
    for load in PHOTOS.values():
        hr = crop_to_scale(load(), scale)
        ours = bicubic_downscale(hr, scale)
        ref = matlab_imresize_reference(hr, scale)
        assert ours.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
        diff = np.abs(ours.astype(np.int16) - ref)
        assert diff.max() <= 1
        mismatched += int((diff > 0).sum())
        total += diff.size
    # float32 in bicubic_pytorch vs float64 here: observed 0 values off of 682,338 (x2), 302,238 (x3)
    # and 170,232 (x4); allow 1 in 10^4 values off by one.
    assert mismatched <= total * 1e-4, (mismatched, total)


def test_intermediate_rounding_is_what_the_comparison_checks():
    # MATLAB rounds the uint8 image between its row and column passes; skipping that changes pixels,
    # so the comparison above would notice an implementation that did not do it.
    hr = crop_to_scale(skimage.data.astronaut(), 2)
    differs = (matlab_imresize_reference(hr, 2) != matlab_imresize_reference(hr, 2, round_between=False)).sum()
    assert differs > 1000
    assert (bicubic_downscale(hr, 2) == matlab_imresize_reference(hr, 2)).mean() > 0.9999


def test_grayscale_and_bad_input():
    gray = skimage.data.camera()[:300, :240]
    assert np.array_equal(bicubic_downscale(gray, 3), matlab_imresize_reference(gray, 3))
    with pytest.raises(ValueError, match='multiple of the scale'):
        bicubic_downscale(gray[:299], 2)
    with pytest.raises(TypeError):
        bicubic_downscale(gray.astype(np.float32), 2)


def test_prepare_data_writes_matlab_lr_images(tmp_path):
    hr_dir = tmp_path / 'MySet' / 'HR'
    hr_dir.mkdir(parents=True)
    # sizes not divisible by the scales: HR is cropped to a multiple first
    photos = {'astro': skimage.data.astronaut()[:101, :131], 'cat': skimage.data.chelsea()[50:150, 100:223]}
    for name, img in photos.items():
        Image.fromarray(img).save(hr_dir / f'{name}.png')
    assert prepare_data.main([str(hr_dir), '--scale', '2+3']) == 0
    for name, img in photos.items():
        for s in (2, 3):
            lr = np.asarray(Image.open(tmp_path / 'MySet' / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png'))
            assert lr.shape == (img.shape[0] // s, img.shape[1] // s, 3)
            assert np.array_equal(lr, matlab_imresize_reference(crop_to_scale(img, s), s))


def test_prepare_data_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / 'nowhere' / 'HR'
    assert prepare_data.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(missing) in err and err.startswith('error: ')

    (tmp_path / 'HR').mkdir()
    (tmp_path / 'HR' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    assert prepare_data.main([str(tmp_path / 'HR'), '--scale', '2']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'broken.png' in err

    assert prepare_data.main([str(tmp_path / 'HR'), '--scale', '2+x']) == 2
    assert '--scale' in capsys.readouterr().err


def test_prepare_data_pool_writes_the_same_bytes_and_keeps_shared_stems_apart(tmp_path, capsys, monkeypatch):
    from data import storage
    monkeypatch.setattr(storage, 'POOL_MIN_PIXELS', 0)  # a pool even for these small images
    calls = []
    monkeypatch.setattr(storage, 'ProcessPoolExecutor',
                        lambda **kw: calls.append(kw) or ProcessPoolExecutor(**kw))
    photos = {'astro.png': skimage.data.astronaut()[:101, :131], 'astro.bmp': skimage.data.coffee()[:90, :120],
              'cat.png': skimage.data.chelsea()[50:150, 100:223]}
    for run in ('seq', 'pool'):
        hr_dir = tmp_path / run / 'HR'
        hr_dir.mkdir(parents=True)
        for name, img in photos.items():
            Image.fromarray(img).save(hr_dir / name)
            os.utime(hr_dir / name, ns=(10 ** 18, 10 ** 18))  # made LR images record their HR's time stamp
    assert prepare_data.main([str(tmp_path / 'seq' / 'HR'), '--scale', '2+3', '--workers', '1']) == 0
    assert prepare_data.main([str(tmp_path / 'pool' / 'HR'), '--scale', '2+3', '--workers', '2']) == 0
    assert 'wrote 6 LR images' in capsys.readouterr().out
    assert [kw['max_workers'] for kw in calls] == [2]  # the second run, not the first
    for s in (2, 3):
        names = sorted(p.name for p in (tmp_path / 'pool' / 'LR_bicubic' / f'X{s}').iterdir())
        assert names == [f'astro_bmpx{s}.png', f'astro_pngx{s}.png', f'catx{s}.png']
        for name in names:
            seq, pool = (tmp_path / run / 'LR_bicubic' / f'X{s}' / name for run in ('seq', 'pool'))
            assert seq.read_bytes() == pool.read_bytes()
        lr = np.asarray(Image.open(tmp_path / 'pool' / 'LR_bicubic' / f'X{s}' / f'astro_bmpx{s}.png'))
        assert np.array_equal(lr, matlab_imresize_reference(crop_to_scale(photos['astro.bmp'], s), s))
    assert prepare_data.main([str(tmp_path / 'seq' / 'HR'), '--workers', '0']) == 2
    assert '--workers 0' in capsys.readouterr().err
