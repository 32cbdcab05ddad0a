"""--load RUN --resume continues the run as it was: the options not given come from its config.txt (a bad value
there is named there), the weights' mean shift must agree, and its model files keep their formats."""

import pytest
import torch
from safetensors.torch import load_file

import helpers
import option
from core.errors import UserError
from helpers.runs import make_run
from helpers.trainer_kit import make_args, make_trainer, run_epochs

T = ['--n_resgroups', '1', '--n_resblocks', '1', '--n_feats', '8', '--n_clusters', '4', '--patch_size', '32',
     '--batch_size', '4', '--test_every', '5']
RUN = ['--template', 'demo', *T, '--window_size', '32', '--save_safetensors', '--lr', '2e-4']


def resume_args(base, *flags):
    return option.parse_main_args(['--load', 'run', '--resume', '-1', '--save_dir', str(base), '--cpu',
                                   *map(str, flags)])


def test_options_not_given_are_the_runs(tmp_path):
    make_run(tmp_path, *RUN)
    args = resume_args(tmp_path, '--epochs', '2', '--lr', '5e-4')
    assert (args.model, args.rgb_range, args.window_size, args.n_feats, args.scale) == ('LCoAN', 1, 32, 8, [2])
    assert args.save_safetensors and args.data_train == ['Sample'] and args.patch_size == 32
    assert (args.epochs, args.lr) == (2, 5e-4)  # given now: they win
    assert args.pre_train_detected.splitlines()[0] == (
        f"--load run --resume -1: the options not given are the run's, from {tmp_path / 'run' / 'config.txt'}")


def test_an_rgb_range_that_contradicts_the_weights_is_refused(tmp_path):
    weights = make_run(tmp_path, *RUN)
    with pytest.raises(UserError) as e:
        resume_args(tmp_path, '--rgb_range', '255')
    assert str(e.value) == (f'--load run --resume -1: rgb_range 255, but {weights} records rgb_range=1 (in its mean '
                            'shift); give --rgb_range 1')


@pytest.mark.parametrize(('line', 'message'), [
    ('window_size: 0', "{config}: window_size 0: must be a positive integer (the run's value; correct it there "
                       'or give --window_size)'),
    ('window_size: abc', "{config}: window_size: 'abc' is not an integer (the run's value; correct it there or "
                         'give --window_size)'),
    ('window_size: 32.5', "{config}: window_size: 32.5 is not an integer"),
])
def test_a_bad_value_in_config_txt_is_named_there(tmp_path, line, message):
    make_run(tmp_path, *RUN)
    config = tmp_path / 'run' / 'config.txt'
    config.write_text(config.read_text().replace('window_size: 32', line))
    with pytest.raises(UserError) as e:
        resume_args(tmp_path)
    assert str(e.value).startswith(message.format(config=config))


def test_a_truncated_config_txt_is_named(tmp_path):
    make_run(tmp_path, *RUN)
    config = tmp_path / 'run' / 'config.txt'
    text = config.read_text()
    config.write_text(text + text[:text.index('model: ')])
    with pytest.raises(UserError, match=r"config\.txt: the options of the run's last start are missing"):
        resume_args(tmp_path)


def test_a_run_without_safetensors_leaves_no_stale_one(tmp_path):
    """A .safetensors beside a newer .pt would hand spandrel and upscale.py users the older weights."""
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--save_safetensors', '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    model_dir = ckp.dir / 'model'
    assert (model_dir / 'model_latest.safetensors').exists()
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    assert not (model_dir / 'model_latest.safetensors').exists()
    for kept in model_dir.glob('*.safetensors'):  # model_best of epoch 1, not rewritten: the .pt beside it agrees
        pt, st = torch.load(kept.with_suffix('.pt'), weights_only=True), load_file(kept)
        assert all(torch.equal(pt[k], st[k]) for k in pt)


@pytest.mark.slow
def test_resuming_with_some_flags_continues_the_run_as_it_was(tmp_path):
    """The issue's two commands: the resumed run keeps rgb_range 1 and window_size 32 and its .safetensors."""
    first = helpers.main_here(tmp_path, *RUN, '--epochs', '1', '--save', 'lc', '--cpu', '--n_threads', '0')
    assert first.returncode == 0, first.stderr
    again = helpers.main_here(tmp_path, '--load', 'lc', '--resume', '-1', '--epochs', '2', *T, '--scale', '2',
                               '--reduction', '2', '--ema_decay', '0.99', '--lr', '5e-4', '--decay', '8',
                               '--data_train', 'Sample', '--data_test', 'Sample', '--cpu', '--n_threads', '0')
    assert again.returncode == 0, again.stderr
    run = tmp_path / 'exp' / 'lc'
    last = run.joinpath('config.txt').read_text().split('command: ')[-1].splitlines()
    assert {'rgb_range: 1', 'window_size: 32', 'save_safetensors: True', 'epochs: 2'} <= set(last)
    pt = torch.load(run / 'model' / 'model_latest.pt', weights_only=True)
    st = load_file(run / 'model' / 'model_latest.safetensors')
    assert pt.keys() == st.keys() and all(torch.equal(pt[k], st[k]) for k in pt)
    psnr = [float(line.split('PSNR: ')[1].split()[0]) for line in again.stdout.splitlines() if 'PSNR: ' in line]
    first_psnr = [float(line.split('PSNR: ')[1].split()[0]) for line in first.stdout.splitlines() if 'PSNR: ' in line]
    assert psnr[-1] > first_psnr[-1] - 1  # on the run's [0, 1] pixels, not 255 of them (8.7 dB in the report)
