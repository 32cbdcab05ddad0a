"""Model flags: per-model published defaults, explicit flags win, templates, the baselines' documented
command lines."""


import pytest

import helpers
import option
from core.errors import UserError
from model import registry

# From the baselines' own documentation (EDSR-PyTorch, RCAN, RDN, NLSN), run from src/ as written;
# `--model EDSR` is added to the third line because our default model is LCoAN.
DOCUMENTED = [
    'python main.py --model EDSR --scale 2 --patch_size 96 --save EDSR_baseline_x2 --reset',
    'python main.py --model EDSR --scale 2 --save EDSR_x2 --n_resblocks 32 --n_feats 256 --res_scale 0.1 --reset',
    'python main.py --data_test Set5 --scale 4 --pre_train ../experiment/model/EDSR_baseline_x4.pt --test_only '
    '--self_ensemble --model EDSR',
    'python main.py --template RCAN --save RCAN_BIX2_G10R20P48 --scale 2 --reset --save_results --patch_size 96',
    'python main.py --scale 2 --save RDN_D16C8G64_BIx2 --model RDN --epochs 200 --batch_size 16 --data_range 801-805 '
    '--patch_size 64 --reset',
    'python main.py --dir_data ../../ --n_GPUs 4 --rgb_range 1 --chunk_size 144 --n_hashes 4 --save_models --lr 1e-4 '
    '--decay 200-400-600-800 --epochs 1000 --chop --save_results --n_resblocks 32 --n_feats 256 --res_scale 0.1 '
    '--batch_size 16 --model NLSN --scale 2 --patch_size 96 --save NLSN_x2 --data_train DIV2K',
    'python main.py --dir_data ../../ --model NLSN --chunk_size 144 --data_test Set5+Set14+B100+Urban100 --n_hashes 4 '
    '--chop --save_results --rgb_range 1 --data_range 801-900 --scale 2 --n_feats 256 --n_resblocks 32 '
    '--res_scale 0.1 --pre_train model_x2.pt --test_only',
]

EXPECTED = [
    dict(model='EDSR', scale=[2], patch_size=96, n_resblocks=16, n_feats=64, res_scale=1.0, save='EDSR_baseline_x2'),
    dict(model='EDSR', scale=[2], n_resblocks=32, n_feats=256, res_scale=0.1, save='EDSR_x2', reset=True),
    dict(model='EDSR', scale=[4], n_resblocks=16, n_feats=64, test_only=True, self_ensemble=True,
         data_test=['Set5'], pre_train='../experiment/model/EDSR_baseline_x4.pt'),
    dict(model='RCAN', scale=[2], n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, res_scale=1.0,
         chop=True, save_results=True, patch_size=96, save='RCAN_BIX2_G10R20P48'),
    dict(model='RDN', scale=[2], G0=64, RDNkSize=3, RDNconfig='B', epochs=200, batch_size=16, patch_size=64),
    dict(model='NLSN', scale=[2], n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4,
         n_GPUs=4, rgb_range=1, decay=[200, 400, 600, 800], chop=True, data_train=['DIV2K']),
    dict(model='NLSN', scale=[2], n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4,
         test_only=True, data_test=['Set5', 'Set14', 'B100', 'Urban100'], pre_train='model_x2.pt'),
]


def check(args, expected):
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize(('line', 'expected'), list(zip(DOCUMENTED, EXPECTED, strict=True)))
def test_documented_command_lines_parse(line, expected):
    argv = line.split()[2:]
    check(option.parse_args(argv), expected)


def test_single_data_range_of_the_documentation():
    # '--data_range 801-805' (RDN) and '801-900' (NLSN test): one range for training and testing alike.
    args = option.parse_args(['--model', 'RDN', '--data_range', '801-805'])
    assert args.train_range == args.test_range == (801, 805)


@pytest.mark.parametrize(('model', 'expected'), [(a.name, dict(a.defaults)) for a in registry.architectures().values()])
def test_flags_not_given_take_the_models_published_defaults(model, expected):
    args = option.parse_args(['--model', model.upper()])
    assert args.model == model
    check(args, expected)
    unused = set(registry.model_flags()) - set(expected)
    assert all(getattr(args, f) is None for f in unused)
    assert args.given == {'model'}


def test_same_flag_different_meaning_and_default_per_model():
    assert option.parse_args(['--model', 'LCoAN']).n_hashes == 1
    assert option.parse_args(['--model', 'NLSN']).n_hashes == 4
    assert option.parse_args(['--model', 'LCoAN']).reduction == 1
    assert option.parse_args(['--model', 'RCAN']).reduction == 16
    assert [option.parse_args(['--model', m]).n_resblocks for m in ('LCoAN', 'EDSR', 'RCAN', 'NLSN')] == [4, 16, 20, 32]


def test_explicit_flags_win_over_model_defaults_and_templates():
    args = option.parse_args(['--model', 'NLSN', '--n_hashes', '2', '--n_feats', '64'])
    check(args, dict(n_hashes=2, n_feats=64, n_resblocks=32, chunk_size=144))
    assert {'model', 'n_hashes', 'n_feats'} == args.given
    args = option.parse_args(['--template', 'NLSN', '--n_hashes', '1', '--chunk_size', '72'])
    check(args, dict(model='NLSN', n_hashes=1, chunk_size=72, n_resblocks=32, n_feats=256, res_scale=0.1))
    assert {'model', 'n_hashes', 'chunk_size', 'n_resblocks', 'n_feats', 'res_scale'} <= args.given


@pytest.mark.parametrize(('name', 'expected'), [
    ('EDSR_baseline', dict(model='EDSR', n_resblocks=16, n_feats=64, res_scale=1.0)),
    ('EDSR_paper', dict(model='EDSR', n_resblocks=32, n_feats=256, res_scale=0.1)),
    ('RCAN', dict(model='RCAN', n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, chop=True)),
    ('RDN', dict(model='RDN', RDNconfig='B', G0=64, RDNkSize=3)),
    ('NLSN', dict(model='NLSN', n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4)),
])
def test_baseline_templates(name, expected):
    check(option.parse_args(['--template', name]), expected)


def test_demo_template_with_another_model_uses_that_models_small_configuration():
    args = option.parse_args(['--template', 'demo', '--model', 'nlsn'])
    check(args, dict(model='NLSN', n_resblocks=4, n_feats=32, chunk_size=64, n_hashes=4, data_train=['Sample']))
    assert args.n_clusters is None and args.n_resgroups is None
    args = option.parse_args(['--template', 'demo'])
    check(args, dict(model='LCoAN', n_resgroups=2, n_clusters=16, n_hashes=1))


@pytest.mark.parametrize(('argv', 'message'), [
    (['--model', 'EDSR', '--n_hashes', '4'],
     '--n_hashes 4: EDSR has no such option; its model options are --n_resblocks, --n_feats, --res_scale'),
    (['--model', 'NLSN', '--reduction', '2'], '--reduction 2: NLSN has no such option'),
    (['--model', 'RDN', '--scale', '8'], "--scale '8': RDN upsamples by 2, 3, 4"),
    (['--model', 'RDN', '--RDNconfig', 'C'], "--RDNconfig 'C': allowed: A"),
    (['--model', 'RDN', '--RDNkSize', '4'], '--RDNkSize 4: must be odd'),
    (['--model', 'RDN', '--G0', '0'], '--G0 0: must be a positive integer'),
    (['--model', 'NLSN', '--chunk_size', '0'], '--chunk_size 0: must be a positive integer'),
    (['--model', 'NLSN', '--n_feats', '30'], "--n_feats 30: NLSN's attention needs a multiple of 4"),
    (['--model', 'RCAN', '--reduction', '128'], '--reduction 128: must be at most --n_feats (64)'),
    (['--model', 'EDSR', '--res_scale', '0'], '--res_scale 0.0: must be > 0'),
])
def test_bad_model_flags_name_the_flag(argv, message):
    with pytest.raises(UserError) as err:
        option.parse_args(argv)
    assert message in str(err.value)


def test_scale_8_for_models_whose_official_upsampler_has_it():
    for model in ('EDSR', 'RCAN', 'NLSN'):
        assert option.parse_args(['--model', model, '--scale', '8', '--patch_size', '192']).scale == [8]
    assert option.parse_args(['--model', 'RDN', '--RDNconfig', 'a']).RDNconfig == 'A'


def test_help_explains_per_model_defaults():
    out = helpers.main_in_process('--help').stdout
    flat = ' '.join(out.split())
    assert 'LCoAN: k-means rounds; NLSN: LSH rounds (default per model: LCoAN 1, NLSN 4)' in flat
    assert '(default per model: LCoAN 4, EDSR 16, NLSN 32, RCAN 20)' in flat
    assert 'take the published default of the chosen --model' in flat
    assert 'default: None' not in flat
