"""Training sets by name (data.trainsets): layouts, combinations, read-only data, small images, bad names.

Small T91/BSD200/General100/DIV2K/Flickr2K trees are written to a temporary folder from scikit-image
photographs; LR images are checked against the independent MATLAB reference of
helpers/imresize_reference.py. The last test reads the real T91 and General100 of ``../shared/data``.
"""

import stat
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

import data
import helpers
import option
from core.errors import UserError
from data import storage
from data.common import DataError
from data.imresize import crop_to_scale
from helpers.imresize_reference import matlab_imresize_reference

PHOTO = skimage.data.astronaut()


def photo(i: int, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(PHOTO[13 * i:13 * i + h, 17 * i:17 * i + w])


def save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_set(folder: Path, sizes: list[tuple[int, int]], prefix: str = 'im') -> dict[str, np.ndarray]:
    images = {f'{prefix}{i}': photo(i, h, w) for i, (h, w) in enumerate(sizes)}
    for name, img in images.items():
        save(folder / 'HR' / f'{name}.png', img)
    return images


def parse(dir_data: Path, *flags: str):
    return option.parse_args(['--dir_data', str(dir_data), '--n_threads', '0', '--ext', 'img', '--scale', '2',
                              '--patch_size', '32', '--batch_size', '2', '--test_every', '2', '--data_test', 'Sample',
                              '--rgb_range', '255', '--cpu', *flags])


def train_set(dir_data: Path, *flags: str):
    return data.Data(parse(dir_data, *flags)).loader_train.dataset


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob('*')}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user-cache'))


@pytest.fixture(scope='module')
def sample_data(tmp_path_factory) -> Path:
    """A data folder holding the built-in Sample test set (``--data_test Sample``)."""
    return helpers.sample_data(tmp_path_factory.mktemp('sets') / 'data')


def test_sr291_is_t91_and_bsd200_with_sizes_logged_and_small_images_left_out(sample_data, tmp_path, capsys):
    dir_data = tmp_path / 'd'
    dir_data.mkdir()
    (dir_data / 'benchmark').symlink_to(sample_data / 'benchmark', target_is_directory=True)
    t91 = make_set(dir_data / 'train' / 'T91', [(41, 37), (30, 60), (36, 36)], 't')  # t1: 30 rows < patch 32
    bsd = make_set(dir_data / 'BSD200', [(48, 40)], 'b')  # <dir_data>/<set> is found as well
    ds = train_set(dir_data, '--data_train', 'SR291')
    out = capsys.readouterr().out
    assert [p.name for p in ds.pairs] == ['t0', 't2', 'b0']
    assert 'T91: 2 training image(s) in ' in out and '(1 smaller than the 32x32 patch left out)' in out
    assert 'BSD200: 1 training image(s) in ' in out and 'training on 3 images of SR291' in out
    # LR images are made beside the data (a writable folder), with MATLAB's bicubic.
    for name, hr in {**t91, **bsd}.items():
        if name == 't1':
            continue
        folder = dir_data / ('train/T91' if name.startswith('t') else 'BSD200') / 'LR_bicubic' / 'X2'
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f'{name}x2.png')),
                                      matlab_imresize_reference(crop_to_scale(hr, 2), 2))
    assert not (dir_data / 'train/T91/LR_bicubic/X2/t1x2.png').exists()
    lr, hr, _ = ds[0]
    assert tuple(lr.shape) == (3, 16, 16) and tuple(hr.shape) == (3, 32, 32)
    # A name that stands for a set already listed adds nothing twice.
    assert [p.name for p in train_set(dir_data, '--data_train', 'T91+SR291').pairs] == ['t0', 't2', 'b0']


def test_read_only_data_folder_stays_untouched(sample_data, tmp_path):
    dir_data = tmp_path / 'ro'
    make_set(dir_data / 'General100', [(40, 44), (52, 36)])
    (dir_data / 'benchmark').symlink_to(sample_data / 'benchmark', target_is_directory=True)
    before = files_under(dir_data / 'General100')
    for p in [dir_data / 'General100', *(dir_data / 'General100').rglob('*')]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        ds = train_set(dir_data, '--data_train', 'General100', '--ext', 'sep')
        assert files_under(dir_data / 'General100') == before  # also when the tests run as root
        lr_file = storage.fallback_lr_path(dir_data / 'General100' / 'LR_bicubic' / 'X2' / 'im0x2.png')
        assert ds.pairs[0].lr == lr_file and lr_file.is_file()
        assert str(ds.store.cache_path(ds.pairs[0].hr)).startswith(str(tmp_path / 'user-cache'))
        assert tuple(ds[1][1].shape) == (3, 32, 32)
    finally:
        for p in [dir_data / 'General100', *(dir_data / 'General100').rglob('*')]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_folder_of_hr_images(sample_data, tmp_path):
    photos = tmp_path / 'photos'
    for i in range(2):
        save(photos / f'p{i}.png', photo(i, 40, 40))
    args = ['--dir_data', str(sample_data), '--data_train', 'Folder', '--dir_train']
    ds = train_set(sample_data, *args, str(photos))
    assert [p.name for p in ds.pairs] == ['p0', 'p1'] and ds.pairs[0].lr == photos / 'LR_bicubic/X2/p0x2.png'
    make_set(tmp_path / 'withhr', [(40, 40)])  # a folder with HR/ inside: the benchmark layout
    assert [p.name for p in train_set(sample_data, *args, str(tmp_path / 'withhr')).pairs] == ['im0']
    with pytest.raises(DataError, match=f'--dir_train {tmp_path / "nothere"}: not a folder'):
        train_set(sample_data, *args, str(tmp_path / 'nothere'))


def test_div2k_flickr2k_and_df2k_in_their_official_layouts(sample_data, tmp_path):
    dir_data = tmp_path / 'df2k'
    dir_data.mkdir()
    (dir_data / 'benchmark').symlink_to(sample_data / 'benchmark', target_is_directory=True)
    for n in range(1, 4):
        save(dir_data / 'DIV2K' / 'DIV2K_train_HR' / f'{n:04d}.png', photo(n, 36, 40))
    flickr = photo(5, 40, 36)
    save(dir_data / 'Flickr2K' / 'Flickr2K_HR' / '000001.png', flickr)
    given_lr = dir_data / 'Flickr2K' / 'Flickr2K_LR_bicubic' / 'X2' / '000001x2.png'
    save(given_lr, matlab_imresize_reference(flickr, 2))
    stamp = given_lr.stat().st_mtime_ns
    ds = train_set(dir_data, '--data_train', 'DF2K', '--data_range', '2-3/1-1')
    assert [p.name for p in ds.pairs] == ['0002', '0003', '000001']  # --data_range picks DIV2K's images only
    assert ds.pairs[2].lr == given_lr and given_lr.stat().st_mtime_ns == stamp  # the distributed LR is used
    with pytest.raises(DataError, match='Flickr2K not found: .*Flickr2K_HR is not a folder'):
        train_set(tmp_path / 'empty', '--data_train', 'Flickr2K', '--data_test', 'Demo', '--dir_demo', str(tmp_path))


def test_bad_training_sets_are_one_line(sample_data, tmp_path):
    with pytest.raises(DataError, match=r'T91 not found: .*T91/HR is not a folder \(expected layout'):
        train_set(sample_data, '--data_train', 'T91')
    small = tmp_path / 'small'
    small.mkdir()
    (small / 'benchmark').symlink_to(sample_data / 'benchmark', target_is_directory=True)
    make_set(small / 'T91', [(20, 30), (30, 20)])
    with pytest.raises(DataError, match=r'T91: all 2 HR image\(s\) are smaller than the 32x32 training patch'):
        train_set(small, '--data_train', 'T91')
    make_set(small / 'BSD200', [(40, 40)])
    (small / 'BSD200' / 'HR' / 'im0.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    with pytest.raises(DataError, match=r'im0\.png'):
        train_set(small, '--data_train', 'BSD200')


@pytest.mark.parametrize('flags, message', [
    (['--data_train', 'T92'], "--data_train 'T92': unknown name 'T92'; allowed: DIV2K, Flickr2K, DF2K, T91, BSD200, "
                              "General100, SR291, Folder, Sample (\"+\"-separated); layouts: T91, BSD200, General100: "
                              "<dir_data>/<set>/HR/*.png"),
    (['--data_train', 'Folder'], '--data_train \'Folder\': Folder needs --dir_train PATH'),
    (['--data_train', 'T91', '--dir_train', 'x'], "--dir_train 'x': is for --data_train Folder"),
])
def test_training_set_flags(flags, message):
    with pytest.raises(UserError) as err:
        option.parse_args(flags)
    assert message in str(err.value) and '\n' not in str(err.value)


TRAIN = helpers.SHARED / 'data' / 'train'


@pytest.mark.slow
@pytest.mark.skipif(not (TRAIN / 'T91' / 'HR').is_dir(), reason='../shared/data/train is absent')
def test_real_t91_and_general100_read_only(sample_data, capsys):
    before = files_under(TRAIN)
    ds = train_set(TRAIN.parent, '--data_train', 'T91+General100', '--patch_size', '96', '--data_test', 'Set5')
    out = capsys.readouterr().out
    # T91 holds one image narrower than 96 pixels (t37, 78 pixels wide); General100's smallest is 131x112.
    assert 'T91: 90 training image(s)' in out and '(1 smaller than the 96x96 patch left out)' in out
    assert 'General100: 100 training image(s)' in out and 'training on 190 images of T91+General100' in out
    assert files_under(TRAIN) == before
    lr, hr, _ = ds[0]
    assert tuple(lr.shape) == (3, 48, 48) and tuple(hr.shape) == (3, 96, 96)
