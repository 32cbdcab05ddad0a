"""Flags: the paper's command lines parse to the intended values; bad values give one-line errors."""

import pytest

import helpers
import option
from core.errors import UserError

PAPER_X2 = (
    '--epochs 1500 --model LCoAN --save LCoAN_x2 --data_test Set5 --save_dir ../output/ '
    '--dir_data ../../SrTrainingData --n_GPUs 1 --n_threads 8 --rgb_range 1 --save_models --save_results '
    '--lr 1e-4 --decay 300-600-900-1200 --chop --n_resgroups 10 --n_resblocks 4 --reduction 1 --n_feats 128 '
    '--n_clusters 128 --window_size 384 --ema_decay 0.999 --res_scale 0.1 --batch_size 16 --scale 2 '
    '--patch_size 96 --data_train DIV2K --data_range 1-800/1-5'
)
PAPER_X4 = (PAPER_X2.replace('--epochs 1500', '--epochs 500').replace('--save LCoAN_x2', '--save LCoAN_x4')
            .replace('--scale 2', '--scale 4').replace('--patch_size 96', '--patch_size 192')
            .replace('--decay 300-600-900-1200', '--decay 100-200-300-400') + ' --pre_train ../LCoAN_x2.pt')
PAPER_TEST = (
    '--model LCoAN --save LCoAN_x4 --data_test Set5+Set14+B100+Urban100+Manga109 --save_dir ../output/test/ '
    '--dir_data ../../SrTrainingData --n_GPUs 1 --n_threads 8 --rgb_range 1 --save_results --lr 1e-4 '
    '--decay 300-600-900-1200 --chop --n_resgroups 10 --n_resblocks 4 --reduction 1 --n_feats 128 '
    '--n_clusters 128 --window_size 384 --ema_decay 0.999 --res_scale 0.1 --batch_size 16 --scale 4 '
    '--patch_size 96 --data_train DIV2K --data_range 1-800/1-5 --pre_train ../LCoAN_x4.pt --test_only'
)

PAPER_MODEL = dict(model='LCoAN', n_resgroups=10, n_resblocks=4, reduction=1, n_feats=128, n_clusters=128,
                   window_size=384, ema_decay=0.999, res_scale=0.1, rgb_range=1, n_threads=8, n_GPUs=1,
                   batch_size=16, lr=1e-4, decay=[300, 600, 900, 1200], chop=True, dir_data='../../SrTrainingData',
                   data_train=['DIV2K'], data_range='1-800/1-5', train_range=(1, 800), test_range=(1, 5))


def check(args, expected):
    for key, value in expected.items():
        assert getattr(args, key) == value, key


def test_paper_train_x2():
    args = option.parse_args(PAPER_X2.split())
    check(args, PAPER_MODEL)
    check(args, dict(epochs=1500, save='LCoAN_x2', data_test=['Set5'], save_dir='../output/', save_models=True,
                     save_results=True, scale=[2], patch_size=96, pre_train='', test_only=False))


def test_paper_train_x4_from_x2():
    args = option.parse_args(PAPER_X4.split())
    check(args, {**PAPER_MODEL, 'decay': [100, 200, 300, 400]})
    check(args, dict(epochs=500, save='LCoAN_x4', scale=[4], patch_size=192, pre_train='../LCoAN_x2.pt'))


def test_paper_templates_equal_the_paper_command_lines():
    for template, line in (('LCoAN_paper', PAPER_X2), ('LCoAN_paper_x4', PAPER_X4)):
        from_line = vars(option.parse_args(line.split()))
        from_template = vars(option.parse_args(['--template', template]))
        keys = set(option.template.get_template(template)) - {'data_range'}
        assert {k: from_template[k] for k in keys} == {k: from_line[k] for k in keys}, template
        assert from_template['train_range'] == from_line['train_range'] == (1, 800)


def test_paper_test_only():
    args = option.parse_args(PAPER_TEST.split())
    check(args, PAPER_MODEL)
    check(args, dict(data_test=['Set5', 'Set14', 'B100', 'Urban100', 'Manga109'], save_dir='../output/test/',
                     scale=[4], pre_train='../LCoAN_x4.pt', test_only=True, save_models=False))


def test_edsr_flags_and_lists():
    args = option.parse_args(['--cpu', '--seed', '7', '--ext', 'img', '--n_colors', '1', '--n_hashes', '2',
                              '--self_ensemble', '--precision', 'bf16', '--loss', '1*L1+0.5*MSE',
                              '--optimizer', 'SGD', '--betas', '0.8,0.99', '--epsilon', '1e-6', '--momentum', '0.5',
                              '--gamma', '0.1', '--weight_decay', '1e-4', '--gclip', '2', '--skip_threshold', '10',
                              '--test_every', '5', '--print_every', '2', '--load', 'run', '--resume', '-1',
                              '--save_gt', '--ssim', '--dir_demo', 'imgs', '--no_augment', '--data_test', 'set5+b100'])
    check(args, dict(cpu=True, device='cpu', seed=7, ext='img', n_colors=1, n_hashes=2, self_ensemble=True,
                     precision='bf16', loss='1*L1+0.5*MSE', optimizer='SGD', betas=(0.8, 0.99), epsilon=1e-6,
                     momentum=0.5, gamma=0.1, weight_decay=1e-4, gclip=2.0, skip_threshold=10.0, test_every=5,
                     print_every=2, load='run', resume=-1, save_gt=True, ssim=True, dir_demo='imgs',
                     no_augment=True, data_test=['Set5', 'B100']))


def test_attention_impl_defaults_to_fast():
    assert option.parse_args([]).attention_impl == 'fast'
    assert option.parse_args(['--attention_impl', 'reference']).attention_impl == 'reference'


def test_template_sets_defaults_and_flags_win():
    args = option.parse_args(['--template', 'demo', '--n_feats', '16'])
    assert args.data_train == ['Sample'] and args.n_resgroups == 2
    assert args.n_feats == 16


def test_ema_decay_one_is_accepted():
    assert option.parse_args(['--ema_decay', '1']).ema_decay == 1.0
    assert option.parse_args(['--ema_decay', '0']).ema_decay == 0.0


@pytest.mark.parametrize('argv, message', [
    (['--model', 'EDSRX'], "--model 'EDSRX': allowed: LCoAN"),
    (['--data_test', 'Set5+Foo'], "unknown name 'Foo'"),
    (['--data_train', 'Set5'], "unknown name 'Set5'; allowed: DIV2K, Flickr2K, DF2K, T91, BSD200, General100, SR291, "
                               "Folder, Sample"),
    (['--scale', '8'], "--scale '8': LCoAN upsamples by 2, 3, 4"),
    (['--scale', '2+3'], 'LCoAN has one upsampler'),
    (['--scale', 'x2'], "--scale 'x2'"),
    (['--n_feats', '0'], "--n_feats 0: must be a positive integer"),
    (['--window_size', '-4'], "--window_size -4: must be a positive integer"),
    (['--batch_size', '0'], '--batch_size 0'),
    (['--patch_size', '95', '--scale', '2'], '--patch_size 95: must be divisible by the scale (2)'),
    (['--data_range', '1-800/801'], "--data_range '1-800/801': expected \"a-b/c-d\""),
    (['--data_range', '10-1/801-810'], "--data_range '10-1/801-810'"),
    (['--decay', '300-x'], "--decay '300-x': expected positive epochs"),
    (['--decay', '600-300'], 'milestones must increase'),
    (['--reduction', '3'], '--reduction 3: must divide --n_feats (128)'),
    (['--ema_decay', '1.5'], '--ema_decay 1.5: must be in [0, 1] (1 freezes the centroids)'),
    (['--ema_decay', '-0.1'], '--ema_decay -0.1: must be in [0, 1]'),
    (['--n_colors', '2'], '--n_colors 2'),
    (['--precision', 'fp8'], "--precision 'fp8': allowed: single, half, bf16"),
    (['--attention_impl', 'dense'], "--attention_impl 'dense': allowed: fast, reference"),
    (['--template', 'nope'], "--template 'nope'"),
])
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(UserError) as err:
        option.parse_args(argv)
    assert message in str(err.value)
    assert '\n' not in str(err.value)


def test_main_prints_one_line_without_traceback():
    proc = helpers.main_in_process('--scale', '5')
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --scale '5': LCoAN upsamples by 2, 3, 4"
    assert 'Traceback' not in proc.stdout + proc.stderr


# Every float flag, as the parser declares them (flags added later are covered too).
FLOAT_FLAGS = tuple(a.dest for a in option.build_parser()._actions if a.type is float)


def test_float_flags_include_the_optimisation_and_model_ones():
    assert {'lr', 'gamma', 'momentum', 'epsilon', 'weight_decay', 'gclip', 'skip_threshold', 'res_scale',
            'ema_decay'} <= set(FLOAT_FLAGS)


@pytest.mark.parametrize('flag', FLOAT_FLAGS)
@pytest.mark.parametrize('value', ['inf', '-inf', 'nan', 'NaN', '1e999'])
def test_non_finite_float_flags_are_rejected(flag, value):
    with pytest.raises(UserError) as err:
        option.parse_args([f'--{flag}={value}'])
    msg = str(err.value)
    assert msg.startswith(f'--{flag} ') and 'must be a finite number' in msg and '\n' not in msg


@pytest.mark.parametrize('value', ['inf+0.999', '0.9+nan'])
def test_non_finite_betas_are_rejected(value):
    with pytest.raises(UserError, match='--betas'):
        option.parse_args(['--betas', value])


def test_test_only_does_not_need_a_patch_size_divisible_by_the_scale():
    args = option.parse_args(['--test_only', '--untrained', '--scale', '3', '--patch_size', '100', '--cpu'])
    assert args.scale == [3] and args.patch_size == 100
    with pytest.raises(UserError, match='--patch_size 100: must be divisible by the scale'):
        option.parse_args(['--scale', '3', '--patch_size', '100'])


def test_template_default_and_help():
    assert option.parse_args([]).template is None
    assert option.parse_args(['--template', 'demo']).data_train == ['Sample']
    assert option.parse_args(['--template', '.']).data_train == ['DIV2K']  # EDSR's "no template"
    text = option.build_parser().format_help()
    assert '(default: .)' not in text
    help_line = ' '.join(text[text.index('--template'):text.index('hardware:')].split())
    assert 'demo' in help_line and 'LCoAN_paper_x4' in help_line and '(default: none)' in help_line


def test_warnings_print_one_line_without_source(tmp_path):
    from PIL import Image
    demo = tmp_path / 'demo'
    demo.mkdir()
    Image.new('L', (24, 20), 128).save(demo / 'gray.png')  # a grayscale image: one conversion warning
    proc = helpers.main_in_process('--template', 'demo', '--cpu', '--test_only', '--untrained', '--data_test', 'Demo',
                                   '--dir_demo', demo, '--dir_data', tmp_path / 'data', '--save_dir', tmp_path / 'exp',
                                   '--n_threads', '0', '--n_resgroups', '1', '--n_resblocks', '1', '--n_feats', '8',
                                   '--n_clusters', '4', '--window_size', '32')
    lines = (proc.stdout + proc.stderr).splitlines()
    ours = [line for line in lines if 'converted to 8-bit RGB' in line]
    assert ours == ['warning: Demo: converted to 8-bit RGB on reading: 1 grayscale (gray.png)'], lines
    assert not any('warnings.warn' in line or 'Warning:' in line or '.py:' in line for line in lines), lines
