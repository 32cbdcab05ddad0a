"""data.Data: layouts, pairing, patches, caches, the Sample set, reproducibility and every bad-data error.

Small DIV2K and benchmark trees are written to a temporary folder from scikit-image photographs, with
LR images made by the independent MATLAB reference of helpers/imresize_reference.py.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.distributed
from PIL import Image
from torch.utils.data import DistributedSampler

import data
import helpers
import option
from core.errors import UserError
from data import sample, storage
from data.common import augment
from data.imresize import crop_to_scale
from data.srdata import DataWarning
from helpers.imresize_reference import matlab_imresize_reference

PHOTOS = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]


def photo(i: int, h: int = 96, w: int = 120) -> np.ndarray:
    img = PHOTOS[i % len(PHOTOS)]
    top, left = 37 * i % (img.shape[0] - h), 53 * i % (img.shape[1] - w)
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def save(path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def make_div2k(dir_data, numbers, part: str = 'train', scales=(2,), size=(96, 120)) -> dict:
    images = {}
    for n in numbers:
        hr = photo(n, *size)
        save(dir_data / 'DIV2K' / f'DIV2K_{part}_HR' / f'{n:04d}.png', hr)
        for s in scales:
            lr = matlab_imresize_reference(crop_to_scale(hr, s), s)
            save(dir_data / 'DIV2K' / f'DIV2K_{part}_LR_bicubic' / f'X{s}' / f'{n:04d}x{s}.png', lr)
        images[f'{n:04d}'] = hr
    return images


def make_benchmark(dir_data, name: str, images: dict, scales=(2,), with_lr: bool = True) -> None:
    for stem, hr in images.items():
        save(dir_data / 'benchmark' / name / 'HR' / f'{stem}.png', hr)
        if with_lr:
            for s in scales:
                lr = matlab_imresize_reference(crop_to_scale(hr, s), s)
                save(dir_data / 'benchmark' / name / 'LR_bicubic' / f'X{s}' / f'{stem}x{s}.png', lr)


def parse(dir_data, *flags):
    base = ['--dir_data', str(dir_data), '--n_threads', '0', '--ext', 'img', '--scale', '2', '--patch_size', '32',
            '--batch_size', '4', '--test_every', '3', '--data_train', 'DIV2K', '--data_test', 'Set5',
            '--data_range', '1-4/5-6', '--rgb_range', '255', '--cpu']
    weights = ['--untrained'] if '--test_only' in flags else []  # the data alone is under test
    return option.parse_args(base + list(flags) + weights)


def to8(t: torch.Tensor, rgb_range: float = 255) -> np.ndarray:
    """(C, H, W) tensor in [0, rgb_range] -> (H, W, C) uint8, asserting it is on the 8-bit grid."""
    x = t.double() * 255 / rgb_range
    assert torch.allclose(x, x.round(), atol=1e-4)
    return x.round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user-cache'))


@pytest.fixture(scope='session')
def sample_dir(tmp_path_factory):
    return helpers.sample_data(tmp_path_factory.mktemp('sample-data') / 'data')


# ----------------------------------------------------------------------------------------------
# layouts and pairing


def test_div2k_pairs_and_data_range(tmp_path):
    train = make_div2k(tmp_path, range(1, 7))
    valid = make_div2k(tmp_path, [7], part='valid')
    d = data.Data(parse(tmp_path, '--data_range', '2-3/5-7', '--data_test', 'DIV2K'))

    pairs = d.loader_train.dataset.pairs
    assert [p.name for p in pairs] == ['0002', '0003']
    assert pairs[0].hr == tmp_path / 'DIV2K' / 'DIV2K_train_HR' / '0002.png'
    assert pairs[0].lr == tmp_path / 'DIV2K' / 'DIV2K_train_LR_bicubic' / 'X2' / '0002x2.png'
    assert (pairs[0].hr_size, pairs[0].lr_size) == ((96, 120), (48, 60))

    loader = d.loader_test[0]
    assert (loader.dataset.name, loader.dataset.benchmark, loader.batch_size) == ('DIV2K', False, 1)
    seen = []
    for lr, hr, name in loader:
        seen.append(name[0])
        expected = {**train, **valid}[name[0]]
        assert np.array_equal(to8(hr[0]), expected)
        assert np.array_equal(to8(lr[0]), matlab_imresize_reference(expected, 2))
    assert seen == ['0005', '0006', '0007']  # 0007 from DIV2K_valid_HR

    with pytest.raises(UserError, match=r'0008 \(--data_range: 5-9\)') as err:
        data.Data(parse(tmp_path, '--data_range', '1-4/5-9', '--data_test', 'DIV2K'))
    assert str(tmp_path / 'DIV2K' / 'DIV2K_train_HR' / '0008.png') in str(err.value)


def test_benchmark_test_batches(tmp_path):
    images = {f'img{i}': photo(i) for i in range(3)}
    make_benchmark(tmp_path, 'Set5', images)
    make_benchmark(tmp_path, 'Urban100', {'u': photo(5)})
    d = data.Data(parse(tmp_path, '--data_test', 'Set5+Urban100', '--test_only', '--rgb_range', '1'))
    assert d.loader_train is None
    assert [(ld.dataset.name, ld.dataset.benchmark, len(ld)) for ld in d.loader_test] == \
        [('Set5', True, 3), ('Urban100', True, 1)]
    for lr, hr, name in d.loader_test[0]:
        assert lr.dtype == torch.float32 and lr.shape == (1, 3, 48, 60) and hr.shape == (1, 3, 96, 120)
        assert np.array_equal(to8(hr[0], 1), images[name[0]])
        assert np.array_equal(to8(lr[0], 1), load(tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic' / 'X2' /
                                                  f'{name[0]}x2.png'))


def test_y_channel_and_rgb_range(tmp_path):
    img = photo(2)
    make_benchmark(tmp_path, 'Set5', {'a': img})
    d = data.Data(parse(tmp_path, '--test_only', '--n_colors', '1', '--rgb_range', '1'))
    lr, hr, _ = next(iter(d.loader_test[0]))
    assert hr.shape == (1, 1, 96, 120)
    r, g, b = (img[..., c].astype(np.float64) for c in range(3))
    y = np.floor(16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256 + 0.5)
    assert np.array_equal(to8(hr[0], 1)[..., 0], y.astype(np.uint8))


def test_demo_folder(tmp_path):
    demo = tmp_path / 'demo'
    save(demo / 'b.png', photo(1, 40, 50))
    save(demo / 'a.jpg', photo(2, 30, 36))
    d = data.Data(parse(tmp_path, '--data_test', 'Demo', '--dir_demo', str(demo), '--test_only'))
    ds = d.loader_test[0].dataset
    assert (ds.name, ds.benchmark) == ('Demo', False)
    batches = list(d.loader_test[0])
    assert [n[0] for _, _, n in batches] == ['a', 'b']
    assert batches[1][0].shape == (1, 3, 40, 50) and all(hr.numel() == 0 for _, hr, _ in batches)


# ----------------------------------------------------------------------------------------------
# training patches


def test_training_batches_epoch_and_alignment(tmp_path):
    make_div2k(tmp_path, range(1, 5))
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})
    for extra in ([], ['--no_augment']):
        d = data.Data(parse(tmp_path, '--rgb_range', '1', '--test_every', '5', *extra))
        loader = d.loader_train
        assert len(loader) == 5 and len(loader.dataset) == 4 * 5
        batches = list(loader)
        assert len(batches) == 5
        for lr, hr, names in batches:
            assert lr.shape == (4, 3, 16, 16) and hr.shape == (4, 3, 32, 32) and hr.dtype == torch.float32
            assert len(names) == 4
            for k in range(4):
                lr8, hr8 = to8(lr[k], 1), to8(hr[k], 1)
                # LR made from the whole HR image; away from the patch border it is the same as
                # downscaling the HR patch, within 1 grey level. MATLAB resizes rows first and rounds
                # in between, so a transposed patch is compared with its columns-first downscale.
                diffs = [np.abs(matlab_imresize_reference(hr8, 2).astype(int) - lr8)[3:-3, 3:-3].max(),
                         np.abs(matlab_imresize_reference(hr8.transpose(1, 0, 2), 2).transpose(1, 0, 2).astype(int)
                                - lr8)[3:-3, 3:-3].max()]
                assert min(diffs) <= 1


def test_augment_keeps_pairs_aligned_and_covers_8_transforms():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    hr = np.repeat(np.repeat(lr, 3, axis=0), 3, axis=1)  # HR pixel (y, x) comes from LR (y//3, x//3)
    seen = set()
    for _ in range(64):
        la, ha = augment(lr, hr, rng)
        assert np.array_equal(ha, np.repeat(np.repeat(la, 3, axis=0), 3, axis=1))
        seen.add(la.tobytes())
    assert len(seen) == 8


def test_seeded_runs_give_identical_batches(tmp_path):
    make_div2k(tmp_path, range(1, 5))
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})

    def batches(seed: int, epoch: int, *flags: str):
        d = data.Data(parse(tmp_path, '--seed', str(seed), *flags))
        d.loader_train.sampler.set_epoch(epoch)
        return [b for _, b in zip(range(2), d.loader_train, strict=False)]

    def assert_same(xs, ys):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]

    a1, a2 = batches(3, 1), batches(3, 2)
    assert_same(a1, batches(3, 1))
    # A fresh process that starts at epoch 2 (a resumed run) sees exactly epoch 2's batches, and
    # a persistent worker process loads the same patches as the main process.
    assert_same(a2, batches(3, 2, '--n_threads', '1'))
    assert not torch.equal(a1[0][1], batches(4, 1)[0][1])
    assert not torch.equal(a1[0][1], a2[0][1])  # a new epoch draws new patches


def test_distributed_ranks_get_their_own_patches(tmp_path, monkeypatch):
    make_div2k(tmp_path, range(1, 5))
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})
    rank = {'value': 0}
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    monkeypatch.setattr(torch.distributed, 'get_rank', lambda: rank['value'])
    monkeypatch.setattr(torch.distributed, 'barrier', lambda: None)
    monkeypatch.setattr(torch.distributed, 'broadcast_object_list', lambda objects, src: None)  # rank 0: all went well
    loaders = []
    for r in (0, 1):
        rank['value'] = r
        loaders.append(data.Data(parse(tmp_path, '--batch_size', '4', '--test_every', '6', '--seed', '5')).loader_train)
    for ld in loaders:
        assert isinstance(ld.sampler, DistributedSampler) and ld.sampler.seed == 5 and ld.sampler.shuffle
        assert ld.batch_size == 2 and len(ld) == 6
    idx0, idx1 = (list(ld.sampler) for ld in loaders)
    assert set(idx0).isdisjoint(idx1) and len(idx0) == len(idx1) == 12
    # Together the two ranks load what one process with the whole batch would load, step by step.
    single = list(data.EpochSampler(loaders[0].dataset, num_replicas=1, rank=0, shuffle=True, seed=5, drop_last=True))
    for k in range(6):
        assert sorted(idx0[2 * k:2 * k + 2] + idx1[2 * k:2 * k + 2]) == sorted(single[4 * k:4 * k + 4])
    hr0, hr1 = (next(iter(ld))[1] for ld in loaders)
    assert hr0.shape == (2, 3, 32, 32) and not torch.equal(hr0, hr1)
    with pytest.raises(UserError, match='--batch_size 5'):
        data.Data(parse(tmp_path, '--batch_size', '5'))


# ----------------------------------------------------------------------------------------------
# the --ext sep cache and made LR images


def test_sep_cache_is_built_memory_mapped_reset_and_refreshed(tmp_path, capsys):
    images = {f'i{k}': photo(k) for k in range(2)}
    make_benchmark(tmp_path, 'Set5', images)
    set5 = tmp_path / 'benchmark' / 'Set5'
    d = data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert 'cache' in capsys.readouterr().out
    npy = set5 / 'bin' / 'HR' / 'i0.png.npy'
    assert np.array_equal(np.load(npy), images['i0'])
    assert np.array_equal(np.load(set5 / 'bin' / 'LR_bicubic' / 'X2' / 'i0x2.png.npy'),
                          load(set5 / 'LR_bicubic' / 'X2' / 'i0x2.png'))
    assert isinstance(d.store.load(set5 / 'HR' / 'i0.png'), np.memmap)

    stamp = npy.stat().st_mtime_ns
    data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert npy.stat().st_mtime_ns == stamp and capsys.readouterr().out == ''

    np.save(npy, np.zeros_like(images['i0']))  # a cache that is newer than its image is trusted ...
    hr = next(iter(data.Data(parse(tmp_path, '--test_only', '--ext', 'sep')).loader_test[0]))[1]
    assert hr.abs().sum() == 0
    d = data.Data(parse(tmp_path, '--test_only', '--ext', 'sep_reset'))  # ... until sep_reset rebuilds it
    assert np.array_equal(np.load(npy), images['i0'])
    assert np.array_equal(to8(next(iter(d.loader_test[0]))[1][0]), images['i0'])

    changed = images['i0'][::-1].copy()  # a new image, newer than its cache
    save(set5 / 'HR' / 'i0.png', changed)
    os.utime(set5 / 'HR' / 'i0.png', ns=(stamp + 10**9, npy.stat().st_mtime_ns + 10**9))
    data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert np.array_equal(np.load(npy), changed)


def test_data_files_are_written_by_the_one_atomic_writer(tmp_path, monkeypatch):
    # LR images, cache files and the Sample marker are fsynced before the rename (io_utils.atomic_write).
    from core import io_utils
    from data import storage
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(io_utils.os, 'fsync', lambda fd: synced.append(fd) or fsync(fd))
    path = tmp_path / 'new' / 'folders' / 'x.png'
    storage.save_png(path, photo(0))
    assert np.array_equal(load(path), photo(0))
    assert len(synced) == 2  # the file, then its folder
    assert sorted(p.name for p in path.parent.iterdir()) == ['x.png']
    with pytest.raises(OSError):
        storage.save_png(tmp_path / 'new' / 'folders' / 'x.png' / 'y.png', photo(0))  # a file is in the way
    assert np.array_equal(load(path), photo(0))


def test_sep_cache_goes_to_user_cache_when_data_folder_is_read_only(tmp_path):
    make_benchmark(tmp_path, 'Set5', {'a': photo(0)})
    set5 = tmp_path / 'benchmark' / 'Set5'
    (set5 / 'bin').write_text('not a folder')  # no cache can be written under Set5/
    d = data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    cached = d.store.cache_path(set5 / 'HR' / 'a.png')
    user_cache = tmp_path / 'user-cache' / storage.CACHE_FOLDER
    assert cached == user_cache / 'sep' / (set5 / 'HR' / 'a.png.npy').relative_to('/')
    assert np.array_equal(np.load(cached), photo(0))


def test_missing_lr_images_are_made_beside_or_in_user_cache(tmp_path, capsys):
    hr = photo(1, 97, 121)  # not a multiple of the scale: cropped to 96x120 first
    make_benchmark(tmp_path, 'Set5', {'odd': hr}, with_lr=False)
    lr_path = tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic' / 'X2' / 'oddx2.png'
    with pytest.warns(DataWarning, match='cropped'):
        d = data.Data(parse(tmp_path, '--test_only'))
    assert 'missing' in capsys.readouterr().out
    assert np.array_equal(load(lr_path), matlab_imresize_reference(hr[:96, :120], 2))
    lr, hr_t, _ = next(iter(d.loader_test[0]))
    assert lr.shape[-2:] == (48, 60) and hr_t.shape[-2:] == (96, 120)

    shutil.rmtree(tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic')
    (tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic').write_text('a file: nothing can be written under it')
    with pytest.warns(DataWarning):
        d = data.Data(parse(tmp_path, '--test_only'))
    assert 'read-only' in capsys.readouterr().out
    made = d.loader_test[0].dataset.pairs[0].lr
    assert made == tmp_path / 'user-cache' / storage.CACHE_FOLDER / 'lr' / lr_path.relative_to('/')

    made.unlink()
    (tmp_path / 'user-cache').rename(tmp_path / 'moved')
    (tmp_path / 'user-cache').write_text('no cache folder either')
    with pytest.raises(UserError, match='odd.png') as err:
        data.Data(parse(tmp_path, '--test_only'))
    assert str(lr_path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# the built-in Sample set


def test_sample_set_holds_real_photographs(sample_dir):
    train_hr = sample.train_root(sample_dir) / 'HR'
    test_hr = sample.test_root(sample_dir) / 'HR'
    assert np.array_equal(load(train_hr / 'astronaut.png'), crop_to_scale(skimage.data.astronaut(), 12))
    assert np.array_equal(load(test_hr / 'chelsea.png'), skimage.data.chelsea()[40:232, 120:360])
    train_names = {p.stem for p in train_hr.iterdir()}
    test_names = {p.stem for p in test_hr.iterdir()}
    assert len(train_names) == 7 and test_names == {'chelsea', 'camera', 'coins'} and not train_names & test_names
    for root in (sample.train_root(sample_dir), sample.test_root(sample_dir)):
        for hr_path in (root / 'HR').iterdir():
            hr = load(hr_path)
            assert hr.dtype == np.uint8 and hr.shape[2] == 3 and hr.std() > 20  # real content, not flat
            for s in (2, 3, 4):
                lr = load(root / 'LR_bicubic' / f'X{s}' / f'{hr_path.stem}x{s}.png')
                assert (lr.shape[0] * s, lr.shape[1] * s) == hr.shape[:2]
                if root.name == 'Sample':  # small: check against the independent reference too
                    assert np.array_equal(lr, matlab_imresize_reference(hr, s))
    d = data.Data(parse(sample_dir, '--data_train', 'Sample', '--data_test', 'Sample', '--patch_size', '64'))
    assert d.loader_test[0].dataset.name == 'Sample' and d.loader_test[0].dataset.benchmark
    assert len(d.loader_test[0]) == 3 and len(d.loader_train.dataset.pairs) == 7


def test_sample_set_rebuilds_when_incomplete(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, 'TRAIN_PHOTOS', {'coins': ('coins', (0, 0, 48, 60))})
    monkeypatch.setattr(sample, 'TEST_PHOTOS', {'camera': ('camera', (0, 0, 48, 60))})
    sample.ensure_sample(tmp_path)
    assert 'Sample' in capsys.readouterr().out
    sample.ensure_sample(tmp_path)
    assert capsys.readouterr().out == ''
    lost = sample.test_root(tmp_path) / 'LR_bicubic' / 'X3' / 'camerax3.png'
    lost.unlink()
    sample.ensure_sample(tmp_path)
    assert str(sample.test_root(tmp_path)) in capsys.readouterr().out and lost.is_file()


# ----------------------------------------------------------------------------------------------
# bad data


def test_missing_and_empty_folders_name_the_expected_path(tmp_path):
    with pytest.raises(UserError) as err:
        data.Data(parse(tmp_path, '--test_only', '--data_test', 'Set14'))
    msg = str(err.value)
    assert str(tmp_path / 'benchmark' / 'Set14' / 'HR') in msg and 'LR_bicubic/X<s>/<image>x<s>.png' in msg

    (tmp_path / 'benchmark' / 'Set14' / 'HR').mkdir(parents=True)
    with pytest.raises(UserError, match='holds no images'):
        data.Data(parse(tmp_path, '--test_only', '--data_test', 'Set14'))

    with pytest.raises(UserError) as err:
        data.Data(parse(tmp_path, '--test_only', '--data_test', 'DIV2K'))
    assert str(tmp_path / 'DIV2K' / 'DIV2K_train_HR') in str(err.value) and 'X2/0001x2.png' in str(err.value)

    with pytest.raises(UserError, match='--dir_demo'):
        data.Data(parse(tmp_path, '--test_only', '--data_test', 'Demo', '--dir_demo', str(tmp_path / 'none')))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='holds no images'):
        data.Data(parse(tmp_path, '--test_only', '--data_test', 'Demo', '--dir_demo', str(tmp_path / 'empty')))


def _truncated_png(path, img) -> None:
    save(path, img)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    make_benchmark(tmp_path, 'Set5', {'good': photo(0), 'trunc': photo(1)})
    set5 = tmp_path / 'benchmark' / 'Set5'
    _truncated_png(set5 / 'HR' / 'trunc.png', photo(1))

    for ext in ('img', 'sep'):  # at scan time, whatever --ext is (see also test_corrupt_test_images_...)
        with pytest.raises(UserError, match='trunc.png'):
            data.Data(parse(tmp_path, '--test_only', '--ext', ext))

    (set5 / 'HR' / 'trunc.png').unlink()
    (set5 / 'HR' / 'junk.png').write_bytes(b'this is not an image')
    with pytest.raises(UserError, match='junk.png'):  # no header at all: at scan time even for img
        data.Data(parse(tmp_path, '--test_only'))


def test_worker_error_reaches_the_user_as_one_line_naming_the_file(tmp_path):
    make_div2k(tmp_path, range(1, 5))
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})
    bad = tmp_path / 'DIV2K' / 'DIV2K_train_HR' / '0002.png'
    d = data.Data(parse(tmp_path, '--n_threads', '1'))
    _truncated_png(bad, photo(2))  # damaged after the start-up check: found by the worker that reads it
    assert d.loader_train.num_workers == 1 and d.loader_train.timeout > 0 and d.loader_train.persistent_workers
    with pytest.raises(UserError) as err:
        for _ in d.loader_train:
            pass
    msg = str(err.value)
    assert str(bad) in msg and 'truncated' in msg and '\n' not in msg and 'worker' in msg


def test_an_image_replaced_by_another_size_after_start_up_is_one_line_naming_it(tmp_path):
    # Issue 22, item 12: with --ext img, an image replaced mid-run by a smaller one failed with "high <= 0".
    make_div2k(tmp_path, range(1, 5))
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})
    lr = tmp_path / 'DIV2K' / 'DIV2K_train_LR_bicubic' / 'X2' / '0002x2.png'
    original = lr.read_bytes()
    for workers in ('0', '1'):  # read by the main process, and by a loader worker
        d = data.Data(parse(tmp_path, '--n_threads', workers))
        save(lr, photo(2, 10, 12))  # smaller than a patch
        with pytest.raises(UserError) as err:
            for _ in d.loader_train:
                pass
        msg = str(err.value)
        assert msg.startswith(f'{lr}: changed since start-up: now 12x10, was 60x48 when the data was checked; put the '
                              'original back, or restart the run'), msg
        assert '\n' not in msg and ('(in DataLoader worker process 0)' in msg) == (workers == '1')
        lr.write_bytes(original)
    d = data.Data(parse(tmp_path))
    hr = tmp_path / 'benchmark' / 'Set5' / 'HR' / 'x.png'
    save(hr, photo(9, 100, 120))  # larger: the LR image no longer matches it
    with pytest.raises(UserError, match=f'^{hr}: changed since start-up: now 120x100, was 120x96 when'):
        d.loader_test[0].dataset[0]


def test_image_formats_are_converted_with_one_warning(tmp_path):
    rgb = photo(3)
    gray = rgb[..., 1].copy()
    hr = tmp_path / 'benchmark' / 'Set5' / 'HR'
    hr.mkdir(parents=True)
    Image.fromarray(gray).save(hr / 'gray.png')
    Image.fromarray(np.dstack([rgb, np.full(gray.shape, 128, np.uint8)])).save(hr / 'rgba.png')
    Image.fromarray(rgb).convert('P').save(hr / 'palette.png')
    Image.fromarray(gray.astype(np.uint16) * 257 + 100).save(hr / 'deep.png')  # 16-bit grayscale
    with pytest.warns(DataWarning) as record:
        d = data.Data(parse(tmp_path, '--test_only'))
    ours = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(ours) == 1
    for word in ('grayscale', 'RGBA', 'palette', '16-bit', 'gray.png', 'deep.png'):
        assert word in ours[0]
    batches = {name[0]: to8(hr_t[0]) for _, hr_t, name in d.loader_test[0]}
    assert np.array_equal(batches['gray'], np.dstack([gray] * 3))
    assert np.array_equal(batches['rgba'], rgb)
    expected_deep = np.floor((gray.astype(np.float64) * 257 + 100) / 257 + 0.5).astype(np.uint8)
    assert np.array_equal(batches['deep'], np.dstack([expected_deep] * 3))
    palette = np.asarray(Image.fromarray(rgb).convert('P').convert('RGB'))
    assert np.array_equal(batches['palette'], palette)


def test_size_mismatch_crops_benchmarks_and_stops_training(tmp_path):
    make_benchmark(tmp_path, 'Set5', {'a': photo(0)})
    lr_path = tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic' / 'X2' / 'ax2.png'
    save(lr_path, load(lr_path)[:47])  # 47 x 2 = 94 < 96 HR rows
    with pytest.warns(DataWarning, match='a.png 120x96 -> 120x94'):
        d = data.Data(parse(tmp_path, '--test_only'))
    assert next(iter(d.loader_test[0]))[1].shape[-2:] == (94, 120)

    save(lr_path, photo(0, 49, 60))  # LR larger than HR / 2: cannot be fixed by cropping
    with pytest.raises(UserError, match='ax2.png'):
        data.Data(parse(tmp_path, '--test_only'))

    make_div2k(tmp_path, range(1, 5))
    hr_path = tmp_path / 'DIV2K' / 'DIV2K_train_HR' / '0003.png'
    save(hr_path, photo(3, 98, 120))
    with pytest.raises(UserError) as err:
        data.Data(parse(tmp_path, '--data_test', 'DIV2K', '--data_range', '1-4/1-1'))
    assert str(hr_path) in str(err.value) and '0003x2.png' in str(err.value)

    save(hr_path, photo(3))
    with pytest.raises(UserError, match='--patch_size 128'):
        data.Data(parse(tmp_path, '--data_test', 'DIV2K', '--data_range', '1-4/1-1', '--patch_size', '128'))


# ----------------------------------------------------------------------------------------------
# images that share a stem, stale caches, start-up checks, odd HR sizes, making LR images in parallel


def test_same_stem_different_extensions_keep_caches_and_names_apart(tmp_path):
    a_png, a_bmp, b = photo(0), photo(1), photo(2)
    hr_dir = tmp_path / 'benchmark' / 'Set5' / 'HR'
    save(hr_dir / 'a.png', a_png)
    save(hr_dir / 'a.bmp', a_bmp)  # lossless too, so both can be compared exactly
    save(hr_dir / 'b.png', b)
    lr_dir = tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic' / 'X2'
    save(lr_dir / 'ax2.png', matlab_imresize_reference(a_png, 2))  # the partner of a.png (same extension)
    # a.bmp has no LR of its own (ax2.png belongs to a.png): it is made as a_bmpx2.png
    for ext in ('sep', 'img'):
        d = data.Data(parse(tmp_path, '--test_only', '--ext', ext))
        ds = d.loader_test[0].dataset
        assert [p.name for p in ds.pairs] == ['a_bmp', 'a_png', 'b']
        assert [p.lr.name for p in ds.pairs] == ['a_bmpx2.png', 'ax2.png', 'bx2.png']
        got = {name[0]: (to8(lr[0]), to8(hr[0])) for lr, hr, name in d.loader_test[0]}
        for name, hr in (('a_png', a_png), ('a_bmp', a_bmp), ('b', b)):
            assert np.array_equal(got[name][1], hr), (ext, name)
            assert np.array_equal(got[name][0], matlab_imresize_reference(hr, 2)), (ext, name)
        if ext == 'sep':
            caches = {d.store.cache_path(p.hr) for p in ds.pairs}
            assert len(caches) == 3 and {c.name for c in caches} == {'a.png.npy', 'a.bmp.npy', 'b.png.npy'}

    # Demo: the same rule names the outputs; a stem shared only up to case is disambiguated too
    # (a_x2_SR.png and A_x2_SR.png would be one file on macOS or Windows).
    demo = tmp_path / 'demo'
    save(demo / 'a.png', photo(0, 40, 50))
    save(demo / 'a.jpg', photo(1, 30, 36))
    save(demo / 'C.png', photo(2, 20, 24))
    save(demo / 'c.bmp', photo(3, 22, 26))
    save(demo / 'b.png', photo(3, 24, 28))
    d = data.Data(parse(tmp_path, '--data_test', 'Demo', '--dir_demo', str(demo), '--test_only', '--ext', 'sep'))
    batches = {n[0]: lr for lr, _, n in d.loader_test[0]}
    assert sorted(batches) == ['C_png', 'a_jpg', 'a_png', 'b', 'c_bmp']
    assert batches['a_png'].shape[-2:] == (40, 50) and batches['a_jpg'].shape[-2:] == (30, 36)
    assert np.array_equal(to8(batches['a_png'][0]), photo(0, 40, 50))


def test_output_names_rule():
    from data.common import output_names
    paths = [Path(p) for p in ('x/a.png', 'x/a.jpg', 'x/b.png', 'x/B.tif', 'x/a_png.bmp', 'x/c.png')]
    assert output_names(paths) == ['a_png', 'a_jpg', 'b_png', 'B_tif', 'a_png_2', 'c']


def test_sep_cache_is_rebuilt_when_image_is_replaced_by_an_older_one(tmp_path, capsys):
    old, new = photo(0), photo(1)
    make_benchmark(tmp_path, 'Set5', {'a': old})
    hr = tmp_path / 'benchmark' / 'Set5' / 'HR' / 'a.png'
    d = data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    npy = d.store.cache_path(hr)
    assert np.array_equal(np.load(npy), old)
    capsys.readouterr()

    # Replace the image the way cp -p, tar or rsync -a do: same size on disk, an OLDER time stamp.
    save(hr, new)
    past = npy.stat().st_mtime_ns - 10 ** 11
    os.utime(hr, ns=(past, past))
    assert hr.stat().st_mtime_ns < npy.stat().st_mtime_ns
    d = data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert 'cache' in capsys.readouterr().out
    assert np.array_equal(np.load(npy), new)
    assert np.array_equal(to8(next(iter(d.loader_test[0]))[1][0]), new)

    # Only the time stamp changes (touch): rebuilt too; nothing changes: not rebuilt.
    os.utime(hr, ns=(past - 10 ** 9, past - 10 ** 9))
    data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert 'cache' in capsys.readouterr().out
    data.Data(parse(tmp_path, '--test_only', '--ext', 'sep'))
    assert capsys.readouterr().out == ''


def test_made_lr_image_is_remade_when_its_hr_is_replaced_by_an_older_one(tmp_path, capsys):
    make_benchmark(tmp_path, 'Set5', {'a': photo(0)}, with_lr=False)
    hr = tmp_path / 'benchmark' / 'Set5' / 'HR' / 'a.png'
    lr_path = tmp_path / 'benchmark' / 'Set5' / 'LR_bicubic' / 'X2' / 'ax2.png'
    data.Data(parse(tmp_path, '--test_only'))
    assert np.array_equal(load(lr_path), matlab_imresize_reference(photo(0), 2))
    capsys.readouterr()
    save(hr, photo(1))
    past = lr_path.stat().st_mtime_ns - 10 ** 11
    os.utime(hr, ns=(past, past))
    data.Data(parse(tmp_path, '--test_only'))
    assert 'out of date' in capsys.readouterr().out
    assert np.array_equal(load(lr_path), matlab_imresize_reference(photo(1), 2))
    # An LR image the user made (without our stamp) is theirs: kept as it is.
    user_lr = matlab_imresize_reference(photo(2), 2)
    save(lr_path, user_lr)
    data.Data(parse(tmp_path, '--test_only'))
    assert np.array_equal(load(lr_path), user_lr)


@pytest.mark.parametrize('ext', ['img', 'sep'])
def test_corrupt_test_images_are_found_at_start_up(tmp_path, ext):
    make_benchmark(tmp_path, 'Set5', {'good': photo(0), 'trunc': photo(1)})
    set5 = tmp_path / 'benchmark' / 'Set5'
    _truncated_png(set5 / 'HR' / 'trunc.png', photo(1))
    with pytest.raises(UserError, match='trunc.png') as err:
        data.Data(parse(tmp_path, '--test_only', '--ext', ext))
    assert '\n' not in str(err.value)
    (set5 / 'HR' / 'trunc.png').unlink()
    # A garbage file named .png, as an LR image this time.
    (set5 / 'LR_bicubic' / 'X2' / 'goodx2.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)
    with pytest.raises(UserError, match='goodx2.png'):
        data.Data(parse(tmp_path, '--test_only', '--ext', ext))


def test_truncated_jpeg_and_bmp_are_found_at_start_up(tmp_path):
    demo = tmp_path / 'demo'
    save(demo / 'ok.jpg', photo(0, 64, 64))
    save(demo / 'ok.bmp', photo(1, 64, 64))
    data.Data(parse(tmp_path, '--data_test', 'Demo', '--dir_demo', str(demo), '--test_only'))
    for name in ('ok.jpg', 'ok.bmp'):
        raw = (demo / name).read_bytes()
        (demo / name).write_bytes(raw[:len(raw) * 2 // 3])
        with pytest.raises(UserError, match=name):
            data.Data(parse(tmp_path, '--data_test', 'Demo', '--dir_demo', str(demo), '--test_only'))
        (demo / name).write_bytes(raw)


def test_training_hr_not_a_multiple_of_the_scale_gets_its_lr_from_the_cropped_hr(tmp_path):
    make_benchmark(tmp_path, 'Set5', {'x': photo(9)})
    hr = photo(3, 97, 123)
    save(tmp_path / 'DIV2K' / 'DIV2K_train_HR' / '0001.png', hr)  # no LR image
    with pytest.warns(DataWarning, match='0001.png 123x97 -> 123x96'):
        d = data.Data(parse(tmp_path, '--data_range', '1-1/1-1', '--scale', '3', '--patch_size', '48',
                            '--no_augment', '--rgb_range', '1'))
    pair = d.loader_train.dataset.pairs[0]
    assert pair.lr == tmp_path / 'DIV2K' / 'DIV2K_train_LR_bicubic' / 'X3' / '0001x3.png'
    lr_full = load(pair.lr)
    assert np.array_equal(lr_full, matlab_imresize_reference(hr[:96, :123], 3))
    for lr, hr_t, _ in d.loader_train:
        for k in range(len(lr)):
            lr8, hr8 = to8(lr[k], 1), to8(hr_t[k], 1)
            (y, x), = [(y, x) for y in range(lr_full.shape[0] - 15) for x in range(lr_full.shape[1] - 15)
                       if np.array_equal(lr_full[y:y + 16, x:x + 16], lr8)]
            assert np.array_equal(hr8, hr[3 * y:3 * y + 48, 3 * x:3 * x + 48])


@pytest.mark.parametrize('pool', [False, True])
def test_lr_images_made_in_a_process_pool_equal_the_sequential_ones(tmp_path, pool):
    from data import storage
    images = {f'p{k}': photo(k, 60 + 6 * k, 72 + 3 * k) for k in range(4)}
    jobs = []
    for stem, hr in images.items():
        save(tmp_path / 'HR' / f'{stem}.png', hr)
        jobs.append((tmp_path / 'HR' / f'{stem}.png', [(tmp_path / 'LR' / f'X{s}' / f'{stem}x{s}.png', s)
                                                        for s in (2, 3, 4)]))
    made = storage.make_lr_images(jobs, workers=2, pool=pool, desc='test')
    assert made == [[lr for lr, _ in expected] for _, expected in jobs]
    for (hr_path, expected), paths in zip(jobs, made, strict=True):
        for (_, s), path in zip(expected, paths, strict=True):
            hr = images[hr_path.stem]
            assert np.array_equal(load(path), matlab_imresize_reference(crop_to_scale(hr, s), s))
    if pool:  # byte for byte what the sequential path writes
        sequential = tmp_path / 'seq'
        seq_jobs = [(hr, [(sequential / lr.relative_to(tmp_path), s) for lr, s in exp]) for hr, exp in jobs]
        storage.make_lr_images(seq_jobs, workers=1, pool=False, desc='test')
        for (_, exp), (_, seq_exp) in zip(jobs, seq_jobs, strict=True):
            for (lr, _), (seq_lr, _) in zip(exp, seq_exp, strict=True):
                assert lr.read_bytes() == seq_lr.read_bytes()


def test_lr_pool_error_names_the_file(tmp_path):
    from data import storage
    save(tmp_path / 'HR' / 'ok.png', photo(0))
    _truncated_png(tmp_path / 'HR' / 'bad.png', photo(1))
    jobs = [(tmp_path / 'HR' / f'{n}.png', [(tmp_path / 'LR' / f'{n}x2.png', 2)]) for n in ('ok', 'bad')]
    with pytest.raises(UserError, match='bad.png'):
        storage.make_lr_images(jobs, workers=2, pool=True, desc='test')
