"""main.py end to end for every baseline: train, resume after a stop, test with --chop and --self_ensemble.

Tiny configurations of ``--template demo --model X`` on the built-in Sample data (the ``tiny_run`` fixture),
evaluated with --chop and --self_ensemble on one 96x96 crop (a one-image Set5: eight passes of each image).
"""

import shutil
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image

import helpers
from core.io_utils import load_state
from helpers.architectures import BASELINES
from training.run_folder import RunFolder


def run(base: Path, *flags):
    done = helpers.main_here(base, *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
@pytest.mark.parametrize('model', BASELINES)
def test_train_resume_and_test_only(model, tmp_path, tiny_run):
    flags = tiny_run.flags(model)
    a = tmp_path / 'exp' / 'a'
    shutil.copytree(tiny_run(model), a)  # one epoch, resumed here
    config = (a / 'config.txt').read_text()
    assert f'model: {model}' in config
    resumed = run(tmp_path, *flags, '--load', 'a', '--resume', '-1', '--epochs', '2')
    assert 'after epoch 1' in resumed.stdout
    state = load_state(a / 'training_state.pt')
    assert state['epoch'] == 2 and torch.isfinite(state['loss_log']).all()
    assert (state['psnr_log'] > 10).all()

    if model == 'NLSN':  # random LSH rotations: the resumed run equals one that went straight through
        run(tmp_path, *flags, '--save', 'b', '--epochs', '2')
        straight = load_state(tmp_path / 'exp' / 'b' / 'training_state.pt')
        assert torch.equal(straight['loss_log'], state['loss_log'])
        assert all(torch.equal(straight['model'][k], state['model'][k]) for k in state['model'])

    latest = a / 'model' / 'model_latest.pt'
    hr = tmp_path / 'data' / 'benchmark' / 'Set5' / 'HR'  # its LR image is made at start-up
    hr.mkdir(parents=True)
    Image.fromarray(skimage.data.chelsea()[40:136, 150:246]).save(hr / 'chelsea.png')
    # NLSN draws its rotations from --seed: the same numbers run after run. The others draw nothing: one run.
    tested = [run(tmp_path, *flags, '--test_only', '--save', f't{i}', '--pre_train', latest, '--data_test', 'Set5',
                  '--chop', '--chop_size', '24', '--chop_overlap', '4', '--self_ensemble', '--seed', '5')
              for i in range(2 if model == 'NLSN' else 1)]
    scores = [[line for line in t.stdout.splitlines() if line.startswith(('[Set5 x2]', 'average'))] for t in tested]
    assert len(scores[0]) == 2 and all(s == scores[0] for s in scores)
    summary = next(line for line in scores[0] if line.startswith('[Set5 x2]'))
    assert float(summary.split('PSNR: ')[1].split()[0]) > 10
    assert f'Made {model} with' in (tmp_path / 'exp' / 't0' / 'log.txt').read_text()


def test_config_records_the_values_in_force(tmp_path):
    # Only the parse and the run folder: config.txt lists every model flag of NLSN with the value in force.
    import option
    args = option.parse_args(['--model', 'NLSN', '--n_hashes', '2', '--save_dir', str(tmp_path), '--save', 'cfg'])
    ckp = RunFolder(args)
    ckp.done()
    config = (tmp_path / 'cfg' / 'config.txt').read_text()
    for line in ('model: NLSN', 'n_hashes: 2', 'n_resblocks: 32', 'n_feats: 256', 'res_scale: 0.1',
                 'chunk_size: 144', 'n_clusters: None', "given: {'", "'n_hashes'"):
        assert line in config, line
