"""upscale.py and ``--test_only`` with detected flags on the real Set5/Set14 (``../shared/data/benchmark``).

A tiny LCoAN trained for an epoch with ``main.py --template demo`` (the ``tiny_run`` fixture) goes
through upscale.py (outputs of HR size) and through ``main.py --test_only --pre_train`` with no
architecture flag, whose per-image PSNR must equal the PSNR of upscale.py's outputs.
"""

import csv

import numpy as np
import pytest
import torch

import helpers
import metrics
import upscale

BENCHMARK = helpers.SHARED / 'data' / 'benchmark'
SETS = ('Set5', 'Set14')
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (BENCHMARK / 'Set5').is_dir(), reason='../shared/data/benchmark is absent')]


def to_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a
    return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]


def test_upscale_and_test_only_agree_on_set5_and_set14(tmp_path, tiny_run):
    weights = tiny_run('LCoAN') / 'model' / 'model_latest.pt'
    out = tmp_path / 'sr'
    inputs = [BENCHMARK / name / 'LR_bicubic' / 'X2' for name in SETS]
    code = upscale.main(['--weights', str(weights), *map(str, inputs), '-o', str(out), '--cpu'])
    assert code == 0

    done = helpers.main_in_process(
        '--pre_train', weights, '--test_only', '--cpu', '--data_test', '+'.join(SETS), '--dir_data', BENCHMARK.parent,
        '--ext', 'img', '--n_threads', '0', '--save_dir', tmp_path / 'exp', '--save', 'eval')
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'--pre_train {weights}: LCoAN x2 checkpoint; options read from the weights: model=LCoAN, scale=2' \
        in done.stdout

    for name in SETS:
        with open(tmp_path / 'exp' / 'eval' / f'metrics_{name}_x2.csv') as f:
            reported = {row['image']: float(row['psnr']) for row in csv.DictReader(f)}
        hr_files = sorted((BENCHMARK / name / 'HR').glob('*.png'))
        assert len(reported) == len(hr_files)
        for hr_path in hr_files:
            hr = upscale.read_image(hr_path)
            sr = upscale.read_image(out / f'{hr_path.stem}x2_x2.png')
            # Exactly the HR size (the HR image cropped to a multiple of the scale, as its LR was made).
            assert sr.shape[:2] == (hr.shape[0] // 2 * 2, hr.shape[1] // 2 * 2), hr_path.name
            ours = metrics.calc_psnr(to_tensor(sr), to_tensor(hr[:sr.shape[0], :sr.shape[1]]), 2, 255)
            key = next(k for k in reported if k.startswith(hr_path.stem))
            # Set14's bridge: gray HR, RGB LR; both programs compare the RGB output's Y with the gray HR.
            tolerance = 0.005
            assert ours == pytest.approx(reported[key], abs=tolerance), hr_path.name
