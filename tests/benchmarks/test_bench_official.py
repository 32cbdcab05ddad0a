"""The benchmarks' official baselines: official code imported beside ours without either shadowing the other.

The official LCoAN and NLSN trees are EDSR-style, like ours: the same top-level module names, and an
``option.py`` that parses ``sys.argv`` at import. These tests build a fake tree of that layout in
``tmp_path`` (a tiny model under the official file, class and function names) and run the benchmarks'
loading code on it, in this process and in the benchmarks' own child processes.
"""

import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import helpers

BENCH = helpers.ROOT / 'benchmarks'
SRC = BENCH.parent / 'src'
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_attention  # noqa: E402
import bench_train_step  # noqa: E402
import count_step_ops  # noqa: E402
import profile_train_step  # noqa: E402
from _official import SHARED_NAMES, OfficialSource, official_lcoan, official_nlsn  # noqa: E402

MARK = 'OFFICIAL = True\n'
FILES = {
    # Exits with a usage error on any flag it does not know, as EDSR's does when the benchmark child's
    # `--child bench_model:official_infer ...` reaches it.
    'option.py': '''
        import argparse
        import template
        parser = argparse.ArgumentParser(description='fake official options')
        parser.add_argument('--scale', default='4')
        args = parser.parse_args()
    ''',
    'template.py': MARK,
    'utility.py': MARK,
    'trainer.py': 'import utility\nassert utility.OFFICIAL\n' + MARK,
    'main.py': 'import option\n',
    'data/__init__.py': MARK,
    'loss/__init__.py': MARK,
    'model/__init__.py': '''
        from importlib import import_module
        import torch.nn as nn
        OFFICIAL = True

        class Model(nn.Module):
            def __init__(self, args, ckp):
                super().__init__()
                self.model = import_module('model.' + args.model.lower()).make_model(args)
    ''',
    'model/common.py': '''
        import torch.nn as nn
        OFFICIAL = True

        def default_conv(in_channels, out_channels, kernel_size, bias=True):
            return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    ''',
    'model/kmeans_attention.py': '''
        import torch
        import torch.nn as nn
        from model import common

        class RecurrentNonLocalKmeansAttention(nn.Module):
            def __init__(self, channels, window_size, reduction, res_scale, n_clusters, ema_decay, n_rounds):
                super().__init__()
                self.conv = common.default_conv(channels, channels, 1)
                self.res_scale = res_scale
                self.register_buffer('means', torch.randn(n_rounds, n_clusters, channels // reduction))
                self.register_buffer('initted', torch.tensor(False))

            def forward(self, inputs):
                x, att_map, bucket_score, codes = inputs
                return x + self.res_scale * self.conv(x), att_map, bucket_score, codes
    ''',
    # Imports every shared name at module level and one lazily in make_model, and checks each is official.
    'model/lcoan.py': '''
        import torch.nn as nn
        import data
        import loss
        import template
        import trainer
        import utility
        from model import common
        from model import kmeans_attention as attention

        for _module in (common, data, loss, template, trainer, utility):
            assert getattr(_module, 'OFFICIAL', False), f'{_module.__name__} is not official: {_module.__file__}'

        def make_model(args, parent=False):
            import model
            assert model.OFFICIAL, model.__file__
            return LCoAN(args)

        class LCoAN(nn.Module):
            def __init__(self, args, conv=common.default_conv):
                super().__init__()
                scale = args.scale[0]
                self.head = conv(args.n_colors, 4, 3)
                self.body = nn.Sequential(*[attention.RecurrentNonLocalKmeansAttention(
                    channels=4, window_size=args.window_size, reduction=1, res_scale=args.res_scale,
                    n_clusters=args.n_clusters, ema_decay=args.ema_decay, n_rounds=args.n_hashes)
                    for _ in range(args.n_resgroups)])
                self.tail = nn.Sequential(conv(4, args.n_colors * scale ** 2, 3), nn.PixelShuffle(scale))

            def forward(self, x):
                res, _, _, _ = self.body((self.head(x), None, None, None))
                return self.tail(res)
    ''',
    'model/attention.py': '''
        import torch.nn as nn
        from model import common

        class NonLocalSparseAttention(nn.Module):
            def __init__(self, n_hashes=4, channels=64, k_size=3, reduction=4, chunk_size=144,
                         conv=common.default_conv, res_scale=1):
                super().__init__()
                self.conv_match = conv(channels, channels // reduction, k_size)
                self.conv_assembly = conv(channels, channels, 1)
                self.res_scale = res_scale

            def forward(self, x):
                return x + self.res_scale * self.conv_assembly(x)
    ''',
    'model/nlsn.py': '''
        import torch.nn as nn
        from model import attention, common

        def make_model(args, parent=False):
            if args.dilation:
                from model import dilated  # not in the tree, as in the official one
            return NLSN(args)

        class NLSN(nn.Module):
            def __init__(self, args, conv=common.default_conv):
                super().__init__()
                scale = args.scale[0]
                self.head = conv(args.n_colors, 8, 3)
                self.body = attention.NonLocalSparseAttention(
                    channels=8, chunk_size=args.chunk_size, n_hashes=args.n_hashes, reduction=4,
                    res_scale=args.res_scale)
                self.tail = nn.Sequential(conv(8, args.n_colors * scale ** 2, 3), nn.PixelShuffle(scale))

            def forward(self, x):
                return self.tail(self.body(self.head(x)))
    ''',
}


@pytest.fixture
def fake_src(tmp_path: Path) -> Path:
    src = tmp_path / 'official' / 'src'
    for name, text in FILES.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return src


def test_fake_tree_covers_every_shared_name(fake_src):
    assert {name.split('/')[0].removesuffix('.py') for name in FILES} >= SHARED_NAMES


def test_sealed_block_keeps_the_code_bases_apart(fake_src, monkeypatch):
    import model
    import option
    import template

    ours = {name: sys.modules[name] for name in ('model', 'option', 'template')}
    assert ours == {'model': model, 'option': option, 'template': template}
    monkeypatch.setattr(sys, 'argv', ['bench_model.py', '--child', 'bench_model:official_infer'])
    path_before, argv_before = list(sys.path), list(sys.argv)
    args = option.parse_args(['--scale', '2', '--n_resgroups', '2', '--rgb_range', '1', '--cpu'])

    lcoan = official_lcoan(fake_src)
    with lcoan.imports():
        official = lcoan.module('model.lcoan')
        net = official.make_model(args)
        assert sys.modules['model'].OFFICIAL and sys.modules['utility'].OFFICIAL
        with pytest.raises(ImportError, match='parses sys.argv at import time'):
            importlib.import_module('option')
        with pytest.raises(ImportError):  # our own src/ is off the path: no fallback onto our modules
            importlib.import_module('core.errors')

    # Ours are back, under their own names; the official ones live on under the private prefix.
    assert {name: sys.modules[name] for name in ours} == ours
    assert sys.path == path_before and sys.argv == argv_before
    assert sys.modules[f'{lcoan.prefix}.model.lcoan'] is official
    assert sys.modules[f'{lcoan.prefix}.trainer'].OFFICIAL
    assert lcoan.prefix.startswith('_official_lcoan_')
    assert not hasattr(model, 'OFFICIAL') and not hasattr(template, 'OFFICIAL')
    assert hasattr(option, 'parse_args')
    # A module imported for the first time after the block is ours too.
    monkeypatch.delitem(sys.modules, 'template', raising=False)
    assert Path(importlib.import_module('template').__file__).parent == SRC
    # The network built inside keeps working outside, and the checkout got no __pycache__.
    assert net(torch.rand(1, 3, 6, 6)).shape == (1, 3, 12, 12)
    assert not list(fake_src.rglob('__pycache__'))
    # A later request returns the same official module (same classes) rather than importing anew.
    assert lcoan.module('model.lcoan') is official
    assert official_lcoan(fake_src).module('model.lcoan') is official


def test_two_checkouts_get_separate_prefixes(fake_src, tmp_path):
    other = tmp_path / 'other' / 'src'
    shutil.copytree(fake_src, other)
    first, second, nlsn = official_lcoan(fake_src), official_lcoan(other), official_nlsn(fake_src)
    assert len({first.prefix, second.prefix, nlsn.prefix}) == 3
    commons = [source.module('model.common') for source in (first, second, nlsn)]
    assert len(set(map(id, commons))) == 3 and all(common.OFFICIAL for common in commons)
    assert Path(commons[1].__file__).is_relative_to(other)


@pytest.mark.parametrize(('make', 'flag', 'required'), [(official_lcoan, '--official_src', 'model/lcoan.py'),
                                                         (official_nlsn, '--nlsn_src', 'model/attention.py')])
def test_a_folder_without_the_official_files_is_named(tmp_path, make, flag, required):
    with pytest.raises(FileNotFoundError, match=f'{flag} {tmp_path}: no {required} there'):
        make(tmp_path)


def test_sealed_blocks_do_not_nest(fake_src):
    source = OfficialSource(fake_src, flag='--x', required='model/common.py', label='x')
    with source.imports(), pytest.raises(RuntimeError, match='do not nest'):
        with official_nlsn(fake_src).imports():
            pass
    with source.imports():  # the failed attempt left nothing open
        assert source.module('model.common').OFFICIAL


@pytest.mark.parametrize(('setup', 'kwargs'), [
    ('bench_model:official_infer', dict(scale=2, size=8)),
    ('bench_attention:official_chain', dict(size=8)),
    ('bench_model:official_nlsn_infer', dict(scale=2, size=8)),
])
def test_benchmark_children_load_the_official_code(fake_src, setup, kwargs):
    """The benchmarks' child processes (argv ``--child ...``, which the fake option.py rejects) build
    and time the official models: the crash of `make bench OFFICIAL_SRC=...` with EDSR's option.py."""
    result = _common.run_in_subprocess(setup, dict(kwargs, src=str(fake_src)), threads=1, repeats=2, warmup=0)
    assert len(result['times_s']) == 2 and all(t > 0 for t in result['times_s'])
    assert result['peak_rss_mb'] > 50  # Python + torch at least


@pytest.mark.slow
def test_attention_benchmark_runs_the_official_nlsa_rows(fake_src, capsys):
    report = bench_attention.main(['--size', '16', '--repeats', '1', '--rounds', '2', '--threads', '1',
                                   '--variants', 'nlsa', '--nlsa_configs', '2x8', '--nlsn_src', str(fake_src)])
    official = report['results']['nlsa_official 2x8']
    assert official['rounds'] == 2 and len(official['times_s']) == 2 and len(official['cpu_times_s']) == 2
    assert official['median_s'] > 0 and official['median_cpu_s'] > 0
    missing = _common.missing_nlsn(network=False)
    out = capsys.readouterr().out
    if missing:
        assert f'our NLSN is not available ({missing}): skipping the rows of our NLSA' in out
        assert 'nlsa_ours 2x8' not in report['results']
    else:
        ratio = report['ratios']['nlsa_ours 2x8 / nlsa_official 2x8']
        assert ratio == report['results']['nlsa_ours 2x8']['median_s'] / report['results']['nlsa_official 2x8'][
            'median_s']
    assert '| nlsa_official 2x8 |' in out


def test_attention_benchmark_names_a_wrong_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_attention.main(['--nlsn_src', str(tmp_path)])
    assert f'--nlsn_src {tmp_path}: no model/attention.py there' in capsys.readouterr().err


def test_bad_nlsa_config_is_named(fake_src, capsys):
    with pytest.raises(SystemExit):
        bench_attention.main(['--nlsa_configs', '5x130', '--nlsn_src', str(fake_src)])
    assert '--nlsa_configs 5x130: expected MODULESxCHANNELS' in capsys.readouterr().err


@pytest.mark.slow
def test_training_step_benchmark_pairs_ours_with_the_official_and_an_earlier_checkout(fake_src, capsys):
    """Fresh processes per side take turns; the before side imports another copy of our src/ in a sealed
    block (here this very tree). Only the report's structure is checked, never a timing."""
    report = bench_train_step.main(['--official_src', str(fake_src), '--before_src', str(SRC), '--batches', '1',
                                    '--size', '8', '--rounds', '2', '--repeats', '1', '--warmup', '0',
                                    '--threads', '1'])
    rows = report['batches'][1]
    assert set(rows) == {'ours', 'before', 'official'}
    for row in rows.values():
        assert len(row['times_s']) == 2 and len(row['peak_rss_mb_all']) == 2 and row['peak_rss_mb'] > 50
    ratio = report['ratios']['ours / official, batch 1']
    assert ratio['peak_rss'] == rows['ours']['peak_rss_mb'] / rows['official']['peak_rss_mb']
    assert {'before / official, batch 1', 'ours / before, batch 1'} <= set(report['ratios'])
    assert '| 1 | ours / official |' in capsys.readouterr().out


@pytest.mark.slow
def test_training_step_profile_attributes_the_step_to_parts(fake_src, capsys):
    ours, official = profile_train_step.main(['--official_src', str(fake_src), '--batch', '1', '--size', '8',
                                              '--steps', '1', '--warmup', '1', '--threads', '1'])
    for result in (ours, official):
        times = result['times_s']
        # Every profiled operation is attributed once: the parts and the untracked rest make up the step.
        assert sum(times.values()) == pytest.approx(result['wall_s'], rel=1e-6)
        assert times['conv|forward'] > 0 and times['conv|backward'] > 0 and times['optimizer|forward'] > 0
    # Our network's attention builds its pattern in a custom autograd function; its backward is the attention's.
    assert ours['times_s']['LCoA attention|backward'] > 0 and ours['times_s']['k-means|forward'] > 0
    assert any(key.startswith('LCoA attention|backward|') for key in ours['ops_s'])
    assert ours['flops']['conv weight grad'] > 0
    assert '### official: one step' in capsys.readouterr().out


@pytest.mark.slow
def test_operator_count_separates_sides_and_finds_no_sync_in_our_network(fake_src, capsys):
    results = count_step_ops.main(['--official_src', str(fake_src), '--batch', '2', '--size', '8', '--threads', '1'])
    ours, official = results
    assert (ours['side'], official['side']) == ('ours', 'official')
    for result in results:
        assert count_step_ops._total(result['kernels']) > 100
        assert count_step_ops._total(result['kernels']) <= count_step_ops._total(result['aten'])
        assert count_step_ops._total(result['kernels'], part='LCoA attention') > 0
    # The forward and backward of our network never wait for a device value (Adam's step counter does).
    assert count_step_ops._total(ours['syncs']) == count_step_ops._total(ours['syncs'], part='optimizer')
    # Our residual groups loop in lcoan.py (traced); the official ones run in nn.Sequential (not traced).
    assert any(line.startswith('lcoan.py:') for line in ours['loop_lines'])
    assert '| kernels (aten calls doing work), whole step |' in capsys.readouterr().out
