"""benchmarks/reproduce.py on a tiny T91/General100/Set5 tree: the table, the figure, continuing an
interrupted run, skipping a finished one and starting over when the settings change."""

import json
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

import helpers

sys.path.insert(0, str(helpers.ROOT / 'benchmarks'))
import reproduce  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    img = skimage.data.coffee()
    for i, folder in enumerate(['train/T91', 'train/T91', 'train/General100', 'benchmark/Set5']):
        path = tmp_path / 'data' / folder / 'HR' / f'i{i}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img[20 * i:20 * i + 48, 30 * i:30 * i + 40])).save(path)
    return tmp_path


def test_reproduce_writes_the_table_continues_and_skips(tree, capsys):
    flags = ['--dir_data', str(tree / 'data'), '--out', str(tree / 'out'), '--models', 'EDSR', '--steps', '2',
             '--eval_every', '1', '--batch_size', '2', '--patch_size', '32']
    args = reproduce.parse_args(flags)
    # A run stopped after its first epoch: main.py itself ran one of the two epochs.
    cmd = reproduce.train_command(args, 'EDSR')
    first = list(cmd)
    first[first.index('--epochs') + 1] = '1'
    (tree / 'out').mkdir()
    reproduce.run_main(first + ['--reset'], tree / 'out' / 'first.log')
    (tree / 'out' / 'EDSR_x2.command.json').write_text(json.dumps(cmd))
    capsys.readouterr()

    reproduce.main(flags)
    out = capsys.readouterr().out
    assert 'EDSR: continuing the interrupted run' in out
    result = json.loads((tree / 'out' / 'results.json').read_text())[0]
    assert [step for step, _ in result['curve']] == [1, 2] and result['params'] > 0
    table = (tree / 'out' / 'table.md').read_text()
    assert '| SRCNN (published) | T91 | | 36.34 |' in table
    psnr, ssim = result['scores']['Set5']
    assert '| EDSR (this code, 2 steps) | T91+General100 | ' in table and f'{psnr:.2f} / {ssim:.4f}' in table
    assert 10 < psnr < 40 and result['bicubic']['Set5'][0] > 20
    assert (tree / 'out' / 'psnr_vs_step.png').read_bytes()[:4] == b'\x89PNG'

    reproduce.main(flags)  # finished: read, not run again
    assert 'EDSR: done before' in capsys.readouterr().out
    reproduce.main(flags[:-4] + ['--patch_size', '24', '--batch_size', '2'])  # other settings: starts over
    assert 'starting over' in capsys.readouterr().out
    assert '(this code, 2 steps)' in (tree / 'out' / 'table.md').read_text()


def test_reproduce_refuses_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.parse_args(['--dir_data', str(tmp_path), '--models', 'EDSR'])
    assert f'--dir_data {tmp_path}: no benchmark/Set5' in capsys.readouterr().err
    (tmp_path / 'benchmark' / 'Set5').mkdir(parents=True)
    with pytest.raises(SystemExit):
        reproduce.parse_args(['--dir_data', str(tmp_path), '--steps', '10', '--eval_every', '3'])
    assert '--steps 10: must be a positive multiple of --eval_every 3' in capsys.readouterr().err
