"""The options a checkpoint's weights do not record (res_scale, rgb_range without a mean shift, window and chunk
sizes) come from the flags, else from the config.txt of the run that saved them, else the published values; one
line says which came from where (api.load_pretrained, upscale.py, export.py, main.py --pre_train, visualize.py)."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest

import api
import helpers
import option
import upscale
import visualize
from core.errors import UserError
from helpers.architectures import tiny_flags
from helpers.runs import make_run
from model import registry

EDSR = ['--model', 'EDSR', '--n_resblocks', '1', '--n_feats', '8', '--res_scale', '0.1', '--rgb_range', '1']


def lr_image(h=12, w=14) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_load_pretrained_reads_the_run_config_and_says_so(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 0.1 and net.body[0].res_scale == 0.1
    assert net.sr_options == (f'{weights}: EDSR x2 checkpoint; options read from the weights: scale=2, n_colors=3, '
                              f'n_feats=8, n_resblocks=1, rgb_range=1; from {tmp_path / "run" / "config.txt"}: '
                              'res_scale=0.1.')
    # The same weights without their config.txt: the published value, said to be assumed.
    alone = tmp_path / 'alone.pt'
    shutil.copy(weights, alone)
    bare = api.load_pretrained(alone, device='cpu')
    assert bare.sr_args.res_scale == 1.0 and 'assumed (not stored in the weights): res_scale=1.0' in bare.sr_options
    image = lr_image()
    assert not np.array_equal(api.upscale(net, image), api.upscale(bare, image))
    # A flag wins over config.txt, and the line says it was given.
    given = api.load_pretrained(weights, device='cpu', res_scale=0.5)
    assert given.sr_args.res_scale == 0.5 and given.sr_options.endswith('; as given: res_scale=0.5.')
    assert 'config.txt' not in given.sr_options


def test_a_config_beside_the_weights_and_the_last_run_of_it(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    # Continued with other values (a second block): the last one counts.
    text = config.read_text()
    config.write_text(text + text.replace('res_scale: 0.1', 'res_scale: 0.25'))
    assert api.load_pretrained(weights, device='cpu').sr_args.res_scale == 0.25
    # Weights copied with their config.txt into one folder.
    folder = tmp_path / 'copied'
    folder.mkdir()
    shutil.copy(weights, folder / 'w.pt')
    shutil.copy(config, folder / 'config.txt')
    assert api.load_pretrained(folder / 'w.pt', device='cpu').sr_args.res_scale == 0.25


@pytest.mark.parametrize(('change', 'why'), [
    (('model: EDSR', 'model: RCAN'), 'it is a run of RCAN, the weights are EDSR\'s'),
    (('n_feats: 8', 'n_feats: 16'), "its n_feats is 16, the weights' 8"),
    (('scale: [2]', 'scale: [4]'), "its scale is [4], the weights' 2"),
])
def test_a_config_of_another_network_is_not_used(tmp_path, change, why):
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    config.write_text(config.read_text().replace(*change))
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 1.0
    assert f'; {config} not used: {why}; assumed (not stored in the weights): res_scale=1.0.' in net.sr_options


def test_a_file_named_config_txt_that_is_no_run_config_is_ignored(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    (tmp_path / 'run' / 'config.txt').write_text('res_scale: 0.3\nsomething else\n')
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 1.0 and 'config.txt' not in net.sr_options


def test_rgb_range_of_a_network_without_mean_shift_comes_from_the_run(tmp_path):
    weights = make_run(tmp_path, *tiny_flags('RDN'), '--rgb_range', '1')
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.rgb_range == 1 and f'from {tmp_path / "run" / "config.txt"}: rgb_range=1' in net.sr_options
    # rgb_range recorded by a mean shift cannot be contradicted.
    with pytest.raises(UserError, match=r'rgb_range 255 requested, but .* records rgb_range=1 \(in its mean shift\)'):
        api.load_pretrained(make_run(tmp_path, *EDSR, save='edsr'), device='cpu', rgb_range=255)


def test_upscale_cli_takes_the_model_flags_and_reports_the_sources(tmp_path, capsys):
    weights = make_run(tmp_path, *tiny_flags('LCoAN'), '--window_size', '24', '--rgb_range', '1')
    iio.imwrite(tmp_path / 'a.png', lr_image())
    assert upscale.main(['--weights', str(weights), str(tmp_path / 'a.png'), '-o', str(tmp_path / 'o'), '--cpu']) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f'{weights}: LCoAN x2 checkpoint; options read from the weights: scale=2, n_colors=3, ')
    assert line.endswith(f'; from {tmp_path / "run" / "config.txt"}: res_scale=0.1, window_size=24, '
                         'ema_decay=0.999; on cpu.')
    assert 'assumed' not in line  # no "assumed window_size=384" while 24 is applied
    assert upscale.main(['--weights', str(weights), str(tmp_path / 'a.png'), '-o', str(tmp_path / 'o2'), '--cpu',
                         '--window_size', '96', '--res_scale', '0.2']) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith('ema_decay=0.999; as given: res_scale=0.2, window_size=96; on cpu.')
    assert not np.array_equal(iio.imread(tmp_path / 'o' / 'a_x2.png'), iio.imread(tmp_path / 'o2' / 'a_x2.png'))
    # A flag of another architecture, or a bad value: one line, exit status 2.
    assert upscale.main(['--weights', str(weights), str(tmp_path / 'a.png'), '-o', str(tmp_path / 'o3'),
                         '--chunk_size', '64']) == 2
    assert capsys.readouterr().err.startswith('error: --chunk_size 64: LCoAN has no such option')
    assert upscale.main(['--weights', str(weights), str(tmp_path / 'a.png'), '-o', str(tmp_path / 'o3'),
                         '--window_size', '0']) == 2
    assert capsys.readouterr().err == 'error: --window_size 0: must be a positive integer\n'


def test_pre_train_and_visualize_read_the_run_config(tmp_path, capsys):
    weights = make_run(tmp_path, *tiny_flags('LCoAN'), '--window_size', '24', '--rgb_range', '1')
    args = option.parse_main_args(['--pre_train', str(weights), '--cpu', '--test_only'])
    assert (args.window_size, args.res_scale, args.rgb_range, args.n_feats) == (24, 0.1, 1, 8)
    config = tmp_path / 'run' / 'config.txt'
    assert f'; from {config}: res_scale=0.1, window_size=24, ema_decay=0.999.' in args.pre_train_detected
    given = option.parse_main_args(['--pre_train', str(weights), '--cpu', '--window_size', '48'])
    assert given.window_size == 48 and 'window_size=' not in given.pre_train_detected
    # visualize.py: its flag is --weights, also in what it prints and in its errors.
    iio.imwrite(tmp_path / 'a.png', lr_image(10, 12))
    visualize.run(['--weights', str(weights), '--image', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'vis'),
                   '--n_pixels', '1'])
    out = capsys.readouterr().out
    assert out.startswith(f'--weights {weights}: LCoAN x2 checkpoint') and 'window_size=24' in out
    assert '--pre_train' not in out
    (tmp_path / 'text.pt').write_text('not weights')
    assert visualize.main(['--weights', str(tmp_path / 'text.pt'), '--image', str(tmp_path / 'a.png'), '-o',
                           str(tmp_path / 'vis')]) == 2
    assert capsys.readouterr().err.startswith(f'error: --weights {tmp_path / "text.pt"}: a text file')


@pytest.mark.slow
@pytest.mark.parametrize('name', registry.names())
def test_upscale_gives_the_pixels_of_the_runs_own_save_results(tmp_path, name, tiny_run):
    """upscale.py on a run's model_latest.pt, with nothing but the weights given, writes the SR images that the
    run's evaluation saved, bit for bit (the demo template: rgb_range 1, the tiny model's own window/chunk sizes)."""
    run = tiny_run(name)
    lr_folder = helpers.sample_data() / 'benchmark' / 'Sample' / 'LR_bicubic' / 'X2'
    out = tmp_path / 'out'
    assert upscale.main(['--weights', str(run / 'model' / 'model_latest.pt'), str(lr_folder), '-o', str(out),
                         '--cpu']) == 0
    lr_paths = sorted(lr_folder.glob('*x2.png'))
    assert len(lr_paths) == 3
    for lr_path in lr_paths:
        ours = iio.imread(out / f'{lr_path.stem}_x2.png')
        saved = iio.imread(run / 'results-Sample' / f'{lr_path.stem[:-2]}_x2_SR.png')
        # NLSN's hashing too: the run's evaluation drew its rotations after --seed for every image, as upscale.py
        # does with the run's seed (from its config.txt).
        np.testing.assert_array_equal(ours, saved, err_msg=lr_path.name)


@pytest.mark.slow
def test_export_takes_the_model_flags(tmp_path, capsys):
    pytest.importorskip('onnxscript')
    import export
    weights = make_run(tmp_path, *EDSR)
    assert export.main(['--weights', str(weights), '--onnx', str(tmp_path / 'w.onnx'), '--no_check',
                        '--res_scale', '0.3']) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith('; as given: res_scale=0.3.')


@pytest.mark.parametrize('line', ['res_scale: 0', 'res_scale: abc', 'res_scale: -1'])
def test_a_value_in_config_txt_that_is_none_of_the_option_is_named(tmp_path, line):
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    config.write_text(config.read_text().replace('res_scale: 0.1', line))
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 1.0
    assert (f'; {config}: not used: {line} (not a value of the option); assumed (not stored in the weights): '
            'res_scale=1.0.') in net.sr_options


def test_a_config_txt_cut_short_is_named(tmp_path):
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    text = config.read_text()
    config.write_text(text + text[:text.index('model: ')])
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 1.0
    assert f'; {config} not used: the options of its last run are missing (the file was cut short?); ' in net.sr_options


def test_the_official_codes_config_txt_is_read(tmp_path):
    """EDSR-PyTorch writes a time, a blank line and ``key: value`` lines per run, without a command line."""
    weights = make_run(tmp_path, *EDSR)
    config = tmp_path / 'run' / 'config.txt'
    official = ['2019-03-01-10:00:00', '', 'debug: False', 'template: .', 'model: EDSR', 'scale: [2]',
                'res_scale: 0.5', 'rgb_range: 1', '']
    config.write_text('\n'.join(official + official[:6] + ['res_scale: 0.2', 'rgb_range: 1', '']))
    net = api.load_pretrained(weights, device='cpu')
    assert net.sr_args.res_scale == 0.2 and f'from {config}: res_scale=0.2' in net.sr_options
