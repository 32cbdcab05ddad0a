"""Runs that go wrong: each case reproduced, then the one line it gets and what is kept.

Unit tests on the trainer's small stand-ins (tests/helpers/trainer_kit.py), then main.py in subprocesses.
"""

import errno
import math
import os
import pickle
import re
import signal
import subprocess
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

import helpers
import main as main_module
import metrics
import model
import option
from core import io_utils, precision
from core.errors import UserError
from core.io_utils import atomic_save, load_state
from helpers.architectures import tiny_network
from helpers.trainer_kit import (
    PairSet,
    Wrapper,
    launch_held,
    log_text,
    make_args,
    make_data,
    make_trainer,
    run_epochs,
    run_main,
    wait_held,
    weights,
)
from model import checkpoint, registry
from training import evaluation, interrupts, run_flags, run_folder

# ----------------------------------------------------------------------------------------------
# checkpoints that cannot be used (items 3 and 12)


class RunsAShellCommand:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_checkpoint_messages_say_what_is_wrong(tmp_path):
    good = tmp_path / 'good.pt'
    torch.save({'w': torch.ones(1000)}, good)
    cut = tmp_path / 'cut.pt'
    cut.write_bytes(good.read_bytes()[:-100])  # torch itself says "[Errno 22] Invalid argument"
    with pytest.raises(UserError, match=f'^--pre_train {cut}: cut short or damaged: its zip archive is incomplete '
                                        r'\(\d+ bytes\); the file was not completely written or copied$'):
        load_state(cut, what='--pre_train')

    text = tmp_path / 'notes.pt'
    text.write_text('a\n')  # torch: "IndexError: pop from empty list"
    with pytest.raises(UserError, match=f"^--pre_train {text}: a text file, not a PyTorch checkpoint "
                                        r"\(it starts with 'a'\)$"):
        load_state(text, what='--pre_train')

    # A malicious pickle, as torch.save writes it (a zip) and as a plain pickle of protocols 2 and 5
    # (torch names the global only for some of them): the blocked function is named, nothing runs.
    marker = tmp_path / 'was_run'
    evil = {'zip.pt': lambda p: torch.save({'w': RunsAShellCommand(marker)}, p)}
    for protocol in (2, 5):
        evil[f'pickle{protocol}.pt'] = lambda p, protocol=protocol: p.write_bytes(
            pickle.dumps({'w': RunsAShellCommand(marker)}, protocol=protocol))
    for name, write in evil.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(UserError) as e:
            load_state(path, what='--pre_train')
        assert str(e.value) == (f'--pre_train {path}: refused: it holds a pickled reference to {os.system.__module__}'
                                '.system, not only tensors (nothing of it was run); only plain state_dicts are loaded '
                                '(torch.load with weights_only=True)'), name
        assert '\n' not in str(e.value)
    assert not marker.exists()


def test_pickle_globals_are_read_without_running_them(tmp_path):
    marker = tmp_path / 'was_run'
    data = pickle.dumps([torch.nn.Linear, RunsAShellCommand(marker)], protocol=4)
    assert io_utils._pickle_globals(data) == ['torch.nn.modules.linear.Linear', f'{os.system.__module__}.system']
    assert io_utils._pickle_globals(b'not a pickle') == []
    assert not marker.exists()


@pytest.mark.parametrize('bad, kinds', [(math.nan, '1 NaN'), (math.inf, '1 inf')])
def test_non_finite_checkpoints_are_refused_at_load_time(tmp_path, bad, kinds):
    net = Wrapper().get_model()
    state = net.state_dict()
    state['body.weight'][0, 0, 0, 0] = bad
    path = tmp_path / 'diverged.pt'
    atomic_save(state, path)
    with pytest.raises(UserError, match=f'^--pre_train {path}: tensor body.weight holds {kinds} of 324 values; '
                                        'refusing weights that are not finite'):
        checkpoint.read(path, what='--pre_train', recognise=False).load_into(net, log=print)


def test_non_finite_run_is_refused_for_resume_and_test_only(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    state_path = ckp.get_path('training_state.pt')
    saved = load_state(state_path)
    saved['model']['body.bias'][3] = math.nan
    atomic_save(saved, state_path)
    with pytest.raises(UserError, match=f'^training state {state_path}: tensor body.bias holds 1 NaN of 12 values'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--epochs', '2'))
    latest = ckp.get_path('model', 'model_latest.pt')
    atomic_save(saved['model'], latest)
    with pytest.raises(UserError, match=f'^model {latest}: tensor body.bias holds 1 NaN'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--test_only'))


# ----------------------------------------------------------------------------------------------
# --test_only evaluates the weights meant and keeps the training run's results (item 1)


def test_test_only_on_a_run_evaluates_its_latest_model_into_a_new_folder(tmp_path):
    trainer, ckp, model_ = make_trainer(make_args(tmp_path, '--save_results', '--epochs', '2'))
    run_epochs(trainer, 2)
    ckp.done()
    run = ckp.dir
    kept = {p: p.read_bytes() for p in [run / 'metrics_Set5_x2.csv', *sorted((run / 'results-Set5').iterdir())]}

    tested, tckp, tmodel = make_trainer(make_args(tmp_path, '--load', 'run', '--test_only', '--save_results'),
                                        seed=7)
    for k, v in weights(model_).items():  # the trained weights, not a fresh network
        assert torch.equal(v, tmodel.get_model().state_dict()[k]), k
    assert tested.terminate()
    tckp.done()
    assert tckp.run_dir == run and tckp.dir.parent == run and re.fullmatch(r'test-\d{8}-\d{6}', tckp.dir.name)
    assert {p: p.read_bytes() for p in kept} == kept  # the run's own results are untouched
    rows = (tckp.dir / 'metrics_Set5_x2.csv').read_text().splitlines()
    assert rows[1:] == (run / 'metrics_Set5_x2.csv').read_text().splitlines()[1:]  # same weights, same scores
    assert sorted(p.name for p in (tckp.dir / 'results-Set5').iterdir()) == ['set500_x2_SR.png', 'set501_x2_SR.png']
    text = log_text(tckp)
    assert f'--test_only: evaluating {run}/model/model_latest.pt (the latest epoch of run run;' in text
    assert f'--test_only: this evaluation writes to {tckp.dir}; the training run\'s own results' in text
    # A second evaluation gets a folder of its own.
    again = run_folder.RunFolder(make_args(tmp_path, '--load', 'run', '--test_only'))
    assert again.dir != tckp.dir and again.dir.parent == run
    again.done()


def test_test_only_needs_weights(tmp_path):
    # The flags alone are checked with the options (tests/training/test_run_flags.py); a run folder
    # without a finished epoch has nothing to evaluate.
    (tmp_path / 'empty_run').mkdir()
    args = make_args(tmp_path, '--load', 'empty_run', '--test_only')
    with pytest.raises(UserError, match=f'^--load empty_run --test_only: {tmp_path / "empty_run"} has no finished '
                                        'epoch to evaluate'):
        make_trainer(args)
    untrained = run_folder.RunFolder(make_args(tmp_path, '--test_only', '--untrained', '--save', 'u'))
    assert untrained.dir == tmp_path / 'u'  # not a training run: results go into the folder itself
    untrained.done()


# ----------------------------------------------------------------------------------------------
# --reset deletes only a run folder (item 2)


def test_reset_deletes_only_a_folder_this_program_made(tmp_path):
    users = tmp_path / 'documents'
    users.mkdir()
    (users / 'thesis.tex').write_text('years of work')
    with pytest.raises(UserError, match=f'^--reset: {users} holds files but no config.txt of a run of this program; '
                                        r'not deleting it \(choose another --save'):
        run_folder.RunFolder(make_args(tmp_path, '--save', 'documents', '--reset'))
    assert (users / 'thesis.tex').read_text() == 'years of work'
    (users / 'config.txt').write_text('my own config\n')  # a config.txt that is not ours
    with pytest.raises(UserError, match='^--reset: .* no config.txt of a run of this program'):
        run_folder.RunFolder(make_args(tmp_path, '--save', 'documents', '--reset'))
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(UserError, match=f'^--reset: {tmp_path / "a_file"} is not a run folder'):
        run_folder.RunFolder(make_args(tmp_path, '--save', 'a_file', '--reset'))
    assert (tmp_path / 'a_file').read_text() == 'x'

    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '1'))
    run_epochs(trainer, 1)
    ckp.done()
    (ckp.dir / 'notes.txt').write_text('in a run folder: deleted with it')
    fresh = run_folder.RunFolder(make_args(tmp_path, '--reset'))
    assert sorted(p.name for p in fresh.dir.iterdir()) == ['config.txt', 'log.txt', 'model']
    fresh.done()
    (tmp_path / 'killed_early' / 'model').mkdir(parents=True)  # what a run killed before its config.txt leaves
    run_folder.RunFolder(make_args(tmp_path, '--save', 'killed_early', '--reset')).done()


def test_a_folder_this_program_did_not_make_is_never_adopted(tmp_path):
    # Issue 22, item 2: mkdir u; echo x > u/thesis.tex; a run into u adopted it, a later --reset deleted thesis.tex.
    users = tmp_path / 'u'
    users.mkdir()
    (users / 'thesis.tex').write_text('years of work')
    for flags, flag in [(['--save', 'u'], 'save'), (['--save', 'u', '--test_only', '--untrained'], 'save'),
                        (['--load', 'u', '--test_only'], 'load'), (['--load', 'u', '--resume', '-1'], 'load')]:
        with pytest.raises(UserError) as e:
            run_folder.RunFolder(make_args(tmp_path, *flags))
        assert str(e.value) == (f"--{flag} 'u': {users} holds files but no run of this program (no config.txt "
                                f'written by main.py); choose another --{flag}, or empty the folder'), flags
    with pytest.raises(UserError, match=f'^--reset: {users} holds files but no config.txt of a run of this program'):
        run_folder.RunFolder(make_args(tmp_path, '--save', 'u', '--reset'))
    assert [p.name for p in users.iterdir()] == ['thesis.tex']
    assert (users / 'thesis.tex').read_text() == 'years of work'
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(UserError, match=f"^--save 'notes.txt': {tmp_path}/notes.txt is a file, not a run folder"):
        run_folder.RunFolder(make_args(tmp_path, '--save', 'notes.txt'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    run_folder.RunFolder(make_args(tmp_path, '--save', 'empty')).done()  # an empty folder is taken
    assert (empty / 'config.txt').is_file()


def test_the_run_folder_is_written_only_when_opened(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '1'))
    run_epochs(trainer, 1)
    ckp.done()
    before = {p: p.read_bytes() for p in ckp.dir.rglob('*') if p.is_file()}
    held = run_folder.RunFolder(make_args(tmp_path, '--reset'), open_now=False)
    held.write_log('Made a network.')
    assert {p: p.read_bytes() for p in ckp.dir.rglob('*') if p.is_file()} == before  # checked, nothing touched
    held.abort()  # a start-up check failed: still nothing touched
    assert {p: p.read_bytes() for p in ckp.dir.rglob('*') if p.is_file()} == before
    held = run_folder.RunFolder(make_args(tmp_path, '--reset'), open_now=False)
    held.write_log('Made a network.')
    held.open()
    assert sorted(p.name for p in ckp.dir.iterdir()) == ['config.txt', 'log.txt', 'model']
    assert held.get_path('log.txt').read_text() == 'Made a network.\n'
    held.write_log('Next line.')
    held.done()
    assert held.get_path('log.txt').read_text() == 'Made a network.\nNext line.\n'


@pytest.fixture
def sample_data(tmp_path):
    """A copy of the built-in Sample data set (written once a session), which runs may write their cache into."""
    return helpers.sample_data(tmp_path / 'data')


def _old_run(tmp_path) -> tuple[Path, dict]:
    """Run 'run' under ``tmp_path`` after one epoch, and its files' contents."""
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '1'))
    run_epochs(trainer, 1)
    ckp.done()
    return ckp.dir, {p: p.read_bytes() for p in sorted(ckp.dir.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('case', ['missing --pre_train', 'weights of another architecture', 'missing --data_test'])
def test_reset_deletes_nothing_when_a_start_up_check_fails(tmp_path, sample_data, capsys, case):
    # Issue 22, item 1: main.py --template demo --save r --reset --pre_train /nope.pt left r/ with config.txt, log.txt
    # and an empty model/.
    run, files = _old_run(tmp_path)
    edsr = tmp_path / 'edsr.pt'
    torch.save(tiny_network('EDSR').state_dict(), edsr)
    flags = {'missing --pre_train': ['--pre_train', str(tmp_path / 'nope.pt')],
             'weights of another architecture': ['--model', 'LCoAN', '--pre_train', str(edsr)],
             'missing --data_test': ['--data_test', 'Set14']}[case]
    status = main_module.main(['--template', 'demo', '--cpu', '--n_threads', '0', '--save_dir', str(tmp_path),
                               '--dir_data', str(sample_data), '--save', 'run', '--reset', *flags])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert {p: p.read_bytes() for p in sorted(run.rglob('*')) if p.is_file()} == files


def test_reset_with_test_only_on_the_loaded_run_is_refused(tmp_path):
    run, files = _old_run(tmp_path)
    with pytest.raises(UserError, match="^--reset and --load 'run' with --test_only: --reset would delete the run"):
        make_args(tmp_path, '--load', 'run', '--test_only', '--reset')
    assert {p: p.read_bytes() for p in sorted(run.rglob('*')) if p.is_file()} == files


def test_load_test_only_reads_the_architecture_of_the_run_it_evaluates(tmp_path):
    # Issue 22, item 11: --load RUN --test_only built the paper model for a demo run given without --template demo.
    run = tmp_path / 'run'
    (run / 'model').mkdir(parents=True)
    atomic_save(tiny_network('LCoAN').state_dict(), run / 'model' / 'model_latest.pt')
    atomic_save(tiny_network('EDSR').state_dict(), run / 'model' / 'model_2.pt')
    args = option.parse_main_args(['--cpu', '--save_dir', str(tmp_path), '--load', 'run', '--test_only'])
    tiny = registry.get('LCoAN').tiny
    assert args.model == 'LCoAN' and args.n_feats == tiny['n_feats'] and args.n_resgroups == tiny['n_resgroups']
    assert args.pre_train_detected.startswith(f'--load run --test_only: {run}/model/model_latest.pt: LCoAN x2 '
                                              'checkpoint; options read from the weights: ')
    args = option.parse_main_args(['--cpu', '--save_dir', str(tmp_path), '--load', 'run', '--test_only',
                                   '--resume', '2'])
    assert args.model == 'EDSR' and args.n_feats == registry.get('EDSR').tiny['n_feats']
    assert args.pre_train_detected.startswith(f'--load run --test_only: {run}/model/model_2.pt: EDSR x2 checkpoint')
    assert run_flags.evaluated_weights(args) == run / 'model' / 'model_2.pt'
    # Flags given win, as with --pre_train; training runs are not read here.
    args = option.parse_main_args(['--cpu', '--save_dir', str(tmp_path), '--load', 'run', '--test_only',
                                   '--n_feats', '8'])
    assert args.n_feats == 8
    assert run_flags.evaluated_weights(option.parse(['--load', 'run', '--resume', '-1'])) is None


def test_a_failed_evaluation_leaves_no_folder(tmp_path, sample_data, capsys, monkeypatch):
    # Issue 22, item 11: every failed evaluation of a run left a test-<date> folder with only config.txt and log.txt.
    run, _ = _old_run(tmp_path)
    # detected at start-up; the demo template evaluates at rgb_range 1, which the weights' mean shift must say too
    atomic_save(tiny_network('LCoAN', rgb_range=1).state_dict(), run / 'model' / 'model_latest.pt')
    common = ['--template', 'demo', '--cpu', '--n_threads', '0', '--save_dir', str(tmp_path), '--dir_data',
              str(sample_data), '--load', 'run', '--test_only']
    # At start-up: a missing test set, before the folder is made.
    assert main_module.main(common + ['--data_test', 'Set14']) == 2
    assert capsys.readouterr().err.startswith('error: Set14 not found')
    assert not list(run.glob('test-*'))
    # During the evaluation, before a score is written: the folder made for it is removed.
    _old_run(tmp_path / 'kit')  # the trainer kit's stand-in network
    tested, tckp, _ = make_trainer(make_args(tmp_path / 'kit', '--load', 'run', '--test_only'))
    run = tckp.run_dir
    monkeypatch.setattr(evaluation, 'score_set', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        try:
            tested.terminate()
        except BaseException:
            tckp.abort()
            raise
    assert not tckp.dir.exists() and not list(run.glob('test-*'))
    # An evaluation that scored something keeps its folder, even if it fails later.
    tested, tckp, _ = make_trainer(make_args(tmp_path / 'kit', '--load', 'run', '--test_only'))
    monkeypatch.undo()
    tested.ckp.write_csv('metrics_Set5_x2.csv', ['image'], [['a']])
    tckp.abort()
    assert tckp.dir.is_dir()


# ----------------------------------------------------------------------------------------------
# divergence (item 6)


def test_a_diverged_run_stops_with_one_line(tmp_path):
    # A batch whose loss is far above the running loss is skipped; with a learning rate that ruins the
    # network in its first step, every later batch is, and the run stops after one epoch's worth of them.
    args = make_args(tmp_path, '--optimizer', 'SGD', '--momentum', '0', '--lr', '1e4', '--skip_threshold', '10',
                     '--epochs', '5', '--gclip', '0')
    data = make_data(PairSet('Train', 4, 16), batch_size=1)
    trainer, ckp, _ = make_trainer(args, data)
    with pytest.raises(UserError) as e:
        for _ in range(5):
            trainer.train()
            trainer.test()
    assert str(e.value) == (
        'training stopped in epoch 2: it diverged, the last 4 batches were all skipped (the last one: '
        + re.search(r'\(the last one: (.*?)\);', str(e.value)).group(1)
        + '); epoch 1 is the last one saved. Start over with --reset and try a lower --lr (now 10000), gradient '
          'clipping (--gclip, e.g. 1), or check the training data')
    text = log_text(ckp)
    assert '[Epoch 1] mean [L1: ' in text and '0.0000' not in text.split('[Epoch 1] mean')[1].splitlines()[0]
    assert str(e.value) in text
    assert load_state(ckp.get_path('training_state.pt'))['epoch'] == 1
    # The count of batches skipped in a row is part of the state: a resumed run stops where this one did.
    assert load_state(ckp.get_path('training_state.pt'))['consecutive_skips'] == 3


def test_an_epoch_without_accepted_batches_has_no_mean(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path))
    trainer.loss.start_log()
    assert trainer.loss.display_loss() == '[no batch accepted]'
    trainer.loss.end_log()
    assert torch.isnan(trainer.loss.log[-1]).all()


# ----------------------------------------------------------------------------------------------
# images too small for the metrics, and evaluation errors (item 7)


class TinySet(torch.utils.data.Dataset):
    """LR images of the given sizes at x2 with their 2x HR (box-upsampled)."""

    def __init__(self, sizes) -> None:
        self.name, self.benchmark = 'Tiny', True
        gen = torch.Generator().manual_seed(0)
        self.items = []
        for i, (h, w) in enumerate(sizes):
            lr = metrics.quantize(torch.rand(3, h, w, generator=gen), 1)
            self.items.append((lr, lr.repeat_interleave(2, -2).repeat_interleave(2, -1), f'img{i}'))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_images_too_small_for_a_metric_are_scored_as_far_as_it_allows():
    loader = DataLoader(TinySet([(1, 1), (3, 5), (12, 16)]), batch_size=1)
    net = Wrapper().eval()
    with pytest.warns(UserWarning) as record, torch.no_grad():
        rows = evaluation.score_set(net, loader, scale=2, rgb_range=1, device=torch.device('cpu'),
                                    compare_bicubic=True)
    messages = [str(w.message) for w in record]
    assert messages == [
        'Tiny: 1 HR image(s) too small to score: nothing is left after shaving 2 pixels per border, PSNR and SSIM '
        'not computed: img0 2x2',
        'Tiny: SSIM not computed for 1 HR image(s) smaller than its 11x11 window after shaving 2 pixels per border '
        '(PSNR is): img1 10x6']
    assert [r[0] for r in rows] == ['img0', 'img1', 'img2']
    assert all(math.isnan(v) for v in rows[0][1:])
    assert 5 < rows[1][1] < 100 and math.isnan(rows[1][2]) and 5 < rows[1][3] < 100 and math.isnan(rows[1][4])
    assert all(0 < v < 100 for v in rows[2][1:])
    psnr, ssim = evaluation.set_means(rows)
    assert psnr == pytest.approx((rows[1][1] + rows[2][1]) / 2) and ssim == pytest.approx(rows[2][2])


def test_an_evaluation_error_never_costs_the_epoch(tmp_path, monkeypatch):
    trainer, ckp, model_ = make_trainer(make_args(tmp_path, '--epochs', '3'))
    ref, rckp, ref_model = make_trainer(make_args(tmp_path / 'ref', '--epochs', '3'))
    run_epochs(ref, 2)
    real = evaluation.score_set
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError('something in the metrics broke')
        return real(*a, **k)
    monkeypatch.setattr(evaluation, 'score_set', failing)
    trainer.train()
    trainer.test()
    assert ('Evaluation after epoch 1 failed, the epoch is saved without scores: ValueError: something in the '
            'metrics broke') in log_text(ckp)
    assert '[Set5 x2]\tnot scored (the evaluation failed)' in log_text(ckp)
    saved = load_state(ckp.get_path('training_state.pt'))
    assert saved['epoch'] == 1 and math.isnan(saved['psnr_log'][0, 0])
    ckp.done()
    # Resumed from that checkpoint, epoch 2 is the uninterrupted run's epoch 2.
    resumed, rsckp, rs_model = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--epochs', '3'))
    run_epochs(resumed, 1)
    rsckp.done()
    assert torch.equal(resumed.loss.log, ref.loss.log)
    assert resumed.psnr_log[1, 0] == ref.psnr_log[1, 0]
    for k, v in weights(ref_model).items():
        assert torch.equal(v, rs_model.get_model().state_dict()[k]), k
    rckp.done()


# ----------------------------------------------------------------------------------------------
# a full disk or a read-only folder (item 9)


def _fail_writes_into(monkeypatch, folder: Path, err: int, after_bytes: int = 0, only: str = '') -> None:
    """Every file that io_utils opens for writing under ``folder`` (and whose path holds ``only``) fails with
    ``err``: at the open for a read-only folder, else after ``after_bytes`` bytes."""
    real_open = open

    class Failing:
        def __init__(self, f) -> None:
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > after_bytes:
                raise OSError(err, os.strerror(err))
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(file, mode='r', *args, **kwargs):
        if 'w' in mode and str(file).startswith(str(folder)) and only in str(file):
            if after_bytes == 0 and err != errno.ENOSPC:  # a read-only folder refuses the open itself
                raise OSError(err, os.strerror(err), str(file))
            return Failing(real_open(file, mode, *args, **kwargs))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(io_utils, 'open', fake_open, raising=False)


@pytest.mark.parametrize('err, cause', [(errno.ENOSPC, 'no space left on device'),
                                        (errno.EROFS, 'read-only file system')])
def test_a_failed_checkpoint_write_is_one_line_and_the_last_checkpoint_stays(tmp_path, monkeypatch, err, cause):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '3', '--save_models'))
    run_epochs(trainer, 1)
    before = {p: p.read_bytes() for p in sorted(ckp.dir.rglob('*.pt'))}
    _fail_writes_into(monkeypatch, ckp.dir, err, after_bytes=300 if err == errno.ENOSPC else 0, only='.pt.tmp-')
    trainer.train()
    with pytest.raises(UserError) as e:
        trainer.test()
    assert str(e.value) == (f'cannot write {ckp.dir}/model/model_latest.pt: {cause}; the checkpoint of epoch 1 is '
                            'intact: make room (or make the folder writable), then resume with --load run --resume -1')
    monkeypatch.undo()
    ckp.abort()
    assert {p: p.read_bytes() for p in sorted(ckp.dir.rglob('*.pt'))} == before
    assert not list(ckp.dir.rglob('.*.tmp-*'))
    resumed, rckp, _ = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--epochs', '3'))
    assert resumed.epoch == 1
    rckp.done()


def test_torch_save_on_a_full_disk_reports_the_disk(tmp_path, monkeypatch):
    # torch.save turns a failed write into "RuntimeError: [enforce fail at inline_container.cc] ...".
    _fail_writes_into(monkeypatch, tmp_path, errno.ENOSPC, after_bytes=100)
    with pytest.raises(OSError) as e:
        atomic_save({'w': torch.ones(10000)}, tmp_path / 'x.pt')
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / 'x.pt')
    assert io_utils.write_error_cause(e.value) == 'no space left on device'
    assert list(tmp_path.iterdir()) == []


def test_main_reports_an_unwritable_run_folder_in_one_line(tmp_path, monkeypatch, capsys):
    def refuse(self):
        raise OSError(errno.EROFS, 'Read-only file system', str(self.get_path('config.txt')))
    monkeypatch.setattr(run_folder.RunFolder, '_write_config', refuse)
    status = main_module.main(['--template', 'demo', '--cpu', '--save_dir', str(tmp_path), '--save', 'ro'])
    assert status == 2
    assert capsys.readouterr().err == f'error: cannot write {tmp_path}/ro/config.txt: read-only file system\n'


# ----------------------------------------------------------------------------------------------
# --precision half on the CPU


def test_half_precision_on_the_cpu_warns_once(monkeypatch):
    args = option.parse_args(['--template', 'demo', '--cpu', '--n_resgroups', '1', '--n_resblocks', '1',
                              '--n_feats', '8', '--n_clusters', '4', '--window_size', '32', '--precision', 'half'])

    class Log:
        def write_log(self, msg):
            pass
    for native, suggestion in [(True, 'use --precision single or bf16 (this CPU has bfloat16 in hardware)'),
                               (False, 'use --precision single')]:
        monkeypatch.setattr(precision, 'cpu_has_native_bf16', lambda native=native: native)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter('always')
            model.Model(args, Log())
        ours = [str(w.message) for w in record if '--precision' in str(w.message)]
        assert ours == [f'--precision half on the CPU: float16 is emulated and runs many times slower than single; '
                        f'{suggestion}']
    args.precision = 'bf16'
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        model.Model(args, Log())
    assert [str(w.message) for w in record if '--precision' in str(w.message)] == [
        '--precision bf16 on the CPU: this CPU has no bfloat16 hardware (AVX512-BF16 or AMX), so it is emulated '
        'and runs many times slower than single; use --precision single']


# ----------------------------------------------------------------------------------------------
# end to end: Ctrl-C, --lr 10, a run killed in its first epoch (items 6 and 10)


def test_ctrl_c_during_a_fetch_waits_for_the_batch():
    fetched = []

    def loader():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first batch is being fetched
        fetched.append(1)
        yield 'batch 1'
        yield 'batch 2'
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        next(interrupts.batches(loader()))
    assert fetched == [1]  # the fetch ran to its end first
    assert signal.getsignal(signal.SIGINT) is handler
    assert list(interrupts.batches(iter(['a', 'b']))) == ['a', 'b']


def test_the_test_only_hold_waits_at_the_chosen_training_batch_for_a_signal(monkeypatch, capsys):
    monkeypatch.setenv(interrupts.HOLD_ENV, '3')
    monkeypatch.setattr(interrupts, '_fetched', 0)
    slept = []

    def sleep_then_ctrl_c(seconds):  # the signal comes while the hold waits
        slept.append(seconds)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(seconds)
    monkeypatch.setattr(interrupts, 'time', SimpleNamespace(monotonic=time.monotonic, sleep=sleep_then_ctrl_c))
    assert list(interrupts.batches(['image 1', 'image 2'], training=False)) == ['image 1', 'image 2']  # not counted
    batches = interrupts.batches(['batch 1', 'batch 2', 'batch 3', 'batch 4'])
    assert [next(batches), next(batches)] == ['batch 1', 'batch 2'] and not slept
    with pytest.raises(KeyboardInterrupt):
        next(batches)
    assert slept and capsys.readouterr().out == f'{interrupts.HOLD_LINE} 3\n'


def _interrupt(proc: subprocess.Popen, batch: int) -> subprocess.CompletedProcess:
    """Ctrl-C to a run of :func:`launch_held` once it waits before training its ``batch``-th batch (4 batches
    an epoch)."""
    try:
        proc, seen = wait_held(proc, batch)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, ''.join(seen) + out, err)


@pytest.mark.slow
def test_e2e_ctrl_c_is_one_line_with_how_to_resume(tmp_path):
    # Each run waits for the signal at its batch (training.interrupts' test-only hold), however loaded the
    # machine; the two start side by side, in folders of their own.
    c_base, d_base = tmp_path / 'c', tmp_path / 'd'
    late = launch_held(c_base, 6, '--save', 'c')  # in epoch 2, after epoch 1 was saved
    early = launch_held(d_base, 2, '--save', 'd')  # during the first epoch: nothing saved yet
    try:
        done = _interrupt(late, 6)
        assert done.returncode == 130, done.stdout + done.stderr
        assert done.stderr == 'interrupted; resume with --load c --resume -1\n'
        stopped = _interrupt(early, 2)
    finally:
        early.kill()
    resumed = run_main(c_base, '--load', 'c', '--resume', '-1')
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'after epoch 1: learning rate in use' in resumed.stdout

    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert stopped.stderr == ('interrupted during the first epoch, before anything was saved: nothing to resume; '
                              'start over with --save d --reset\n')
    again = run_main(d_base, '--load', 'd', '--resume', '-1')
    assert again.returncode == 2
    assert again.stderr == (f'error: --load d --resume -1: {d_base}/exp/d has no finished epoch yet (the run stopped '
                            'during its first epoch): nothing to resume; start it over with --save d --reset\n')
    assert run_main(d_base, '--save', 'd', '--reset', '--epochs', '1').returncode == 0


@pytest.mark.slow
def test_e2e_lr_10_stops_as_diverged(tmp_path):
    done = run_main(tmp_path, '--save', 'lr10', '--lr', '10')
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: training stopped in epoch '), done.stderr
    assert 'it diverged, the last 4 batches were all skipped' in lines[0] and 'lower --lr (now 10)' in lines[0]
    assert 'Traceback' not in done.stdout + done.stderr
    assert not re.search(r'mean \[L1: 0\.0000\]', done.stdout)


@pytest.mark.parametrize('err, cause', [(errno.ENOSPC, 'no space left on device'),
                                        (errno.EACCES, 'permission denied')])
def test_a_failed_results_write_is_one_line_too(tmp_path, monkeypatch, err, cause):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '2'))
    run_epochs(trainer, 1)
    _fail_writes_into(monkeypatch, ckp.dir, err, after_bytes=10 if err == errno.ENOSPC else 0, only='metrics_')
    trainer.train()
    with pytest.raises(UserError, match=f'^cannot write {ckp.dir}/metrics_Set5_x2.csv: {cause}; the checkpoint of '
                                        'epoch 1 is intact'):
        trainer.test()
    ckp.abort()
