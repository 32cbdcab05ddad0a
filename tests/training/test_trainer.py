"""Trainer, checkpoint folder and durable files: unit tests on small stand-ins, then main.py end to end."""

import math
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import helpers
import option
from core.errors import UserError
from core.io_utils import atomic_save, load_state
from core.rng import get_rng_state, seed_everything, set_deterministic, set_rng_state
from helpers.trainer_kit import (
    Net,
    PairSet,
    log_text,
    make_args,
    make_data,
    make_trainer,
    run_epochs,
    run_main,
    start_held,
    weights,
)
from training import tables
from training.optim import make_optimizer
from training.run_folder import RunFolder

# ----------------------------------------------------------------------------------------------
# optimisation


@pytest.mark.parametrize('name, extra, cls, expected', [
    ('ADAM', ['--betas', '0.8+0.99', '--epsilon', '1e-6', '--weight_decay', '1e-4'], torch.optim.Adam,
     {'betas': (0.8, 0.99), 'eps': 1e-6, 'weight_decay': 1e-4, 'lr': 1e-3}),
    ('SGD', ['--momentum', '0.5'], torch.optim.SGD, {'momentum': 0.5, 'weight_decay': 0, 'lr': 1e-3}),
    ('RMSprop', ['--epsilon', '1e-7'], torch.optim.RMSprop, {'eps': 1e-7, 'lr': 1e-3}),
])
def test_optimizer_choices(tmp_path, name, extra, cls, expected):
    args = make_args(tmp_path, '--optimizer', name, *extra)
    opt = make_optimizer(args, Net().parameters())
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert {k: group[k] for k in expected} == expected
    assert len(group['params']) == 2  # the buffer is not optimised


def test_multistep_schedule_and_gradient_clipping(tmp_path):
    args = make_args(tmp_path, '--optimizer', 'SGD', '--momentum', '0', '--lr', '1', '--decay', '1-2',
                     '--gamma', '0.1', '--gclip', '1e-3', '--epochs', '2')
    trainer, ckp, model = make_trainer(args, make_data(PairSet('Train', 2, 16), batch_size=2))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # One SGD step of lr 1 with the gradient clipped to norm 1e-3 moves the weights by exactly 1e-3.
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-4)
    assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(0.1)
    trainer.test()
    trainer.train()
    assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(0.01)
    text = log_text(ckp)
    assert '[Epoch 1]\tLearning rate: 1.00e+00' in text and '[Epoch 2]\tLearning rate: 1.00e-01' in text


def test_nan_and_huge_loss_batches_are_skipped(tmp_path):
    normal = PairSet('Train', 2, 16)
    lr, hr, name = normal[0]
    bad_nan = (lr, torch.full_like(hr, math.nan), 'nan')
    bad_huge = (lr, hr * 1e4, 'huge')
    args = make_args(tmp_path, '--skip_threshold', '10', '--epochs', '1')
    data = make_data([normal[0], bad_nan, bad_huge, normal[1]], batch_size=1)
    data.loader_train = DataLoader(data.loader_train.dataset, batch_size=1, shuffle=False)
    trainer, ckp, model = make_trainer(args, data)
    trainer.train()
    assert trainer.step.skipped == 2
    assert all(torch.isfinite(v).all() for v in model.get_model().state_dict().values())

    # The same run without the bad batches ends with bit-identical weights and loss log.
    ref_args = make_args(tmp_path / 'ref', '--skip_threshold', '10', '--epochs', '1')
    ref_data = make_data([normal[0], normal[1]], batch_size=1)
    ref_data.loader_train = DataLoader(ref_data.loader_train.dataset, batch_size=1, shuffle=False)
    ref, _, ref_model = make_trainer(ref_args, ref_data)
    ref.train()
    for k, v in weights(ref_model).items():  # buffers too: 'seen' counts the kept forward passes
        assert torch.equal(v, model.get_model().state_dict()[k]), k
    assert torch.equal(trainer.loss.log, ref.loss.log)
    text = log_text(ckp)
    assert '[Epoch 1, batch 2] skipped: loss is nan (1 skipped in this run)' in text
    assert '[Epoch 1, batch 3] skipped: loss' in text and 'exceeds --skip_threshold 10' in text
    assert ', 2 of 4 batches skipped' in text
    trainer.test()
    assert load_state(ckp.get_path('training_state.pt'))['skipped'] == 2


@pytest.mark.parametrize('gclip', [0, 0.5])
def test_nonfinite_gradient_batch_is_skipped(tmp_path, gclip):
    items = PairSet('Train', 2, 16)

    def trainer_on(folder, dataset):
        args = make_args(folder, '--epochs', '1', '--gclip', gclip)
        data = make_data(dataset, batch_size=1)
        data.loader_train = DataLoader(dataset, batch_size=1, shuffle=False)
        return make_trainer(args, data)

    trainer, ckp, model = trainer_on(tmp_path, [items[0], items[1]])
    calls, forward = [], model.forward

    def poisoned(lr):  # a finite loss whose gradient overflows on the second batch
        sr = forward(lr)
        calls.append(1)
        if len(calls) == 2:
            sr.register_hook(lambda g: g * math.inf)
        return sr
    model.forward = poisoned
    trainer.train()
    assert trainer.step.skipped == 1
    assert '[Epoch 1, batch 2] skipped: gradient norm is nan' in log_text(ckp)

    ref, _, ref_model = trainer_on(tmp_path / 'ref', [items[0]])
    ref.train()
    for k, v in weights(ref_model).items():
        assert torch.equal(v, model.get_model().state_dict()[k]), k


def test_nonfinite_weights_are_never_saved(tmp_path):
    trainer, ckp, model = make_trainer(make_args(tmp_path, '--epochs', '2'))
    run_epochs(trainer, 1)
    latest = ckp.get_path('model', 'model_latest.pt').read_bytes()
    with torch.no_grad():
        model.get_model().body.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(RuntimeError, match='refusing to save the model: body.weight holds NaN'):
        trainer.save(2, is_best=False)
    assert ckp.get_path('model', 'model_latest.pt').read_bytes() == latest


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason='no CUDA')])])
@pytest.mark.parametrize('precision, dtype', [('half', torch.float16), ('bf16', torch.bfloat16)])
def test_mixed_precision_training(tmp_path, device, precision, dtype):
    args = make_args(tmp_path, '--precision', precision, '--epochs', '1')
    args.cpu, args.device = device == 'cpu', device
    trainer, ckp, model = make_trainer(args)
    seen = []
    model.get_model().body.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    run_epochs(trainer, 1)
    assert {dt for training, dt in seen if training} == {dtype}  # autocast in training too
    assert trainer.step.scaler.is_enabled() == (precision == 'half')
    assert trainer.step.skipped == 0 and torch.isfinite(trainer.loss.log).all()
    state = load_state(ckp.get_path('training_state.pt'))
    assert (state['scaler'] is not None) == (precision == 'half')
    assert all(v.dtype == torch.float32 for k, v in state['model'].items() if k != 'seen')


# ----------------------------------------------------------------------------------------------
# files


def test_atomic_save_keeps_the_old_file_when_the_writer_dies(tmp_path, monkeypatch):
    path = tmp_path / 'model_latest.pt'
    atomic_save({'w': torch.arange(4)}, path)
    old = path.read_bytes()

    def dying_save(obj, f):
        f.write(b'PK\x03\x04 half a checkpoint')
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({'w': torch.zeros(4)}, path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ['model_latest.pt']
    monkeypatch.undo()
    assert torch.equal(load_state(path)['w'], torch.arange(4))


def test_load_state_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=f'^training state {tmp_path / "missing.pt"}: no such file$'):
        load_state(tmp_path / 'missing.pt', what='training state')
    with pytest.raises(UserError, match=f'^checkpoint {tmp_path}: not a file$'):
        load_state(tmp_path)
    good = tmp_path / 'good.pt'
    atomic_save({'w': torch.ones(1000)}, good)
    torn = tmp_path / 'torn.pt'
    torn.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match=f'^checkpoint {torn}: cut short or damaged: its zip archive is incomplete'):
        load_state(torn)
    unsafe = tmp_path / 'unsafe.pt'
    torch.save({'f': SimpleNamespace()}, unsafe)  # needs weights_only=False: refused
    with pytest.raises(UserError, match=f'^checkpoint {unsafe}: refused: it holds a pickled reference to '
                                        'types.SimpleNamespace, not only tensors'):
        load_state(unsafe)


def test_deterministic_turns_on_deterministic_kernels(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled() and 'CUBLAS_WORKSPACE_CONFIG' not in os.environ
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8' and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert option.parse_args(['--deterministic']).deterministic and not option.parse_args([]).deterministic


def test_rng_state_loads_with_weights_only(tmp_path):
    gen = torch.Generator().manual_seed(5)
    seed_everything(3, gen)
    torch.randn(3), np.random.rand(), __import__('random').random(), np.random.randn()
    atomic_save(get_rng_state(gen), tmp_path / 'rng.pt')
    expected = (torch.randn(3), np.random.rand(2), __import__('random').random(), torch.randn(2, generator=gen))
    seed_everything(99)
    set_rng_state(load_state(tmp_path / 'rng.pt'), gen)
    got = (torch.randn(3), np.random.rand(2), __import__('random').random(), torch.randn(2, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_run_folder_checks(tmp_path):
    with pytest.raises(UserError, match="^--load 'nope': no run folder"):
        RunFolder(make_args(tmp_path, '--load', 'nope'))
    with pytest.raises(UserError, match="^--save '../x': a run name, not a path"):
        RunFolder(make_args(tmp_path, '--save', '../x'))
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '1'))
    run_epochs(trainer, 1)
    ckp.done()
    stale = ckp.get_path('model', '.model_latest.pt.tmp-999')  # left by a writer killed mid-write
    stale.write_bytes(b'PK')
    RunFolder(make_args(tmp_path, '--load', 'run', '--test_only')).done()
    assert stale.exists()  # an evaluation may run beside the training writing it
    RunFolder(make_args(tmp_path, '--load', 'run', '--resume', '-1')).done()
    assert not stale.exists()
    with pytest.raises(UserError, match="^--save 'run': .* holds a run already; continue it with --load run"):
        RunFolder(make_args(tmp_path))
    fresh = RunFolder(make_args(tmp_path, '--reset'))
    assert not fresh.get_path('training_state.pt').exists()
    assert fresh.get_path('log.txt').read_text() == ''
    fresh.done()


def test_outputs_and_in_process_resume(tmp_path):
    args = make_args(tmp_path, '--save_results', '--save_gt', '--save_models', '--loss', '1*L1+0.5*MSE')
    trainer, ckp, model = make_trainer(args)
    run_epochs(trainer, 2)
    ckp.done()
    d = ckp.dir
    for name in ('config.txt', 'log.txt', 'training_state.pt', 'loss_log.csv', 'psnr_log.csv', 'loss_L1.png',
                 'loss_MSE.png', 'loss_Total.png', 'psnr_Set5.png', 'metrics_Set5_x2.csv',
                 'model/model_latest.pt', 'model/model_best.pt', 'model/model_1.pt', 'model/model_2.pt',
                 'state/training_state_1.pt', 'state/training_state_2.pt',
                 'results-Set5/set500_x2_SR.png', 'results-Set5/set500_x2_LR.png', 'results-Set5/set501_x2_HR.png'):
        assert (d / name).is_file(), name
    assert 'loss: 1*L1+0.5*MSE' in (d / 'config.txt').read_text()
    assert (d / 'loss_log.csv').read_text().splitlines()[0] == 'epoch,L1,MSE,Total'
    rows = (d / 'metrics_Set5_x2.csv').read_text().splitlines()
    # The demo template scores bicubic upscaling beside the model (--compare_bicubic).
    assert rows[0] == 'image,psnr,ssim,bicubic_psnr,bicubic_ssim' and rows[1].startswith('set500,') and len(rows) == 3
    psnr, _, bicubic_psnr, bicubic_ssim = (float(v) for v in rows[1].split(',')[1:])
    assert 20 < psnr < 60 and 20 < bicubic_psnr < 60 and 0.5 < bicubic_ssim <= 1
    assert '[Set5 x2]\tPSNR: ' in log_text(ckp) and '(Best: ' in log_text(ckp)
    # psnr_log.csv: one row per epoch and set, the scale in its own column; the same numbers as the state.
    saved = load_state(d / 'training_state.pt')
    assert saved['format'] == 2 and saved['scale'] == 2 and saved['psnr_log'].shape == (2, 1)
    log_rows = [line.split(',') for line in (d / 'psnr_log.csv').read_text().splitlines()]
    assert log_rows[0] == ['epoch', 'set', 'scale', 'psnr', 'ssim'] and len(log_rows) == 3
    assert [r[:3] for r in log_rows[1:]] == [['1', 'Set5', '2'], ['2', 'Set5', '2']]
    assert float(log_rows[2][3]) == pytest.approx(saved['psnr_log'][1, 0].item(), abs=1e-6)
    assert float(log_rows[2][4]) == pytest.approx(saved['ssim_log'][1, 0].item(), abs=1e-6)
    assert float(log_rows[2][3]) == pytest.approx(trainer.psnr_log[1, 0].item(), abs=1e-6)
    # print_every lines: samples, each term's running mean, model + data time.
    assert len(re.findall(r'^\[4/8\]\t\[L1: \d\.\d{4}\]\[MSE: \d\.\d{4}\]\[Total: \d\.\d{4}\]\t\d+\.\d\+\d+\.\ds$',
                          log_text(ckp), flags=re.M)) == 2
    assert torch.equal(load_state(d / 'model/model_2.pt')['body.weight'], model.get_model().body.weight)

    # Resume from the latest state with a different --lr: the run's schedule and logs are kept.
    resumed, rckp, rmodel = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--lr', '5',
                                                   '--loss', '1*L1+0.5*MSE'), seed=123)
    assert resumed.epoch == 2
    assert resumed.optimizer.param_groups[0]['lr'] == trainer.optimizer.param_groups[0]['lr']
    assert torch.equal(resumed.loss.log, trainer.loss.log) and torch.equal(resumed.psnr_log, trainer.psnr_log)
    text = log_text(rckp)
    assert 'after epoch 2: learning rate in use 1.00e-03' in text
    assert '--lr/--decay/--gamma given now are not used' in text
    # Epoch 3 of the resumed run equals epoch 3 of the uninterrupted one.
    run_epochs(trainer, 1)
    run_epochs(resumed, 1)
    assert torch.equal(resumed.loss.log, trainer.loss.log)
    for k, v in weights(model).items():
        assert torch.equal(v, rmodel.get_model().state_dict()[k]), k
    assert resumed.terminate()
    rckp.done()

    # --resume N starts from epoch N's model and state; a changed --loss is refused.
    from_1, ckp1, model1 = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '1', '--loss',
                                                  '1*L1+0.5*MSE'))
    assert from_1.epoch == 1 and from_1.loss.log.shape == (1, 3)
    assert torch.equal(model1.get_model().body.weight, load_state(d / 'model/model_1.pt')['body.weight'])
    ckp1.done()
    with pytest.raises(UserError, match="^--loss '1\\*L1': the run in .* was trained with terms L1\\+MSE\\+Total"):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1'))


def _as_format_1(path: Path, scales=(2,)) -> None:
    """Rewrite a training state in the layout of format 1: 3-D metric logs (epochs, sets, scales), 'scales'."""
    state = load_state(path)
    state = {k: v for k, v in state.items() if k != 'scale'}
    logs = {k: state[k][:, :, None].repeat(1, 1, len(scales)) for k in ('psnr_log', 'ssim_log')}
    atomic_save({**state, **logs, 'format': 1, 'scales': list(scales)}, path)


def test_resume_accepts_a_format_1_state(tmp_path):
    args = make_args(tmp_path, '--save_models', '--epochs', '3')
    trainer, ckp, model = make_trainer(args)
    run_epochs(trainer, 2)
    ckp.done()
    d = ckp.dir
    _as_format_1(d / 'training_state.pt')
    _as_format_1(d / 'state' / 'training_state_1.pt')
    assert load_state(d / 'training_state.pt')['psnr_log'].shape == (2, 1, 1)

    resumed, rckp, rmodel = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1', '--epochs', '3'))
    assert resumed.epoch == 2 and resumed.psnr_log.shape == (2, 1)
    assert torch.equal(resumed.psnr_log, trainer.psnr_log) and torch.equal(resumed.ssim_log, trainer.ssim_log)
    # The epoch after the old-format state equals the uninterrupted run's, and is saved in format 2.
    run_epochs(trainer, 1)
    run_epochs(resumed, 1)
    assert torch.equal(resumed.psnr_log, trainer.psnr_log) and torch.equal(resumed.loss.log, trainer.loss.log)
    for k, v in weights(model).items():
        assert torch.equal(v, rmodel.get_model().state_dict()[k]), k
    rckp.done()
    saved = load_state(d / 'training_state.pt')
    assert saved['format'] == 2 and saved['psnr_log'].shape == (3, 1) and 'scales' not in saved

    from_1, ckp1, _ = make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '1', '--epochs', '3'))
    assert from_1.epoch == 1 and torch.equal(from_1.psnr_log, trainer.psnr_log[:1])
    ckp1.done()


def test_resume_refuses_foreign_states(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    path = ckp.get_path('training_state.pt')
    _as_format_1(path, scales=(2, 3))
    with pytest.raises(UserError, match=f'^{path}: evaluated at scales \\[2, 3\\]; this program trains and '
                                        'resumes one scale$'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1'))
    atomic_save({**load_state(path), 'format': 7}, path)
    with pytest.raises(UserError, match=f'^{path}: not a training state of this program$'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1'))
    path.unlink()
    with pytest.raises(UserError, match=f'^training state {path}: no such file$'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '-1'))
    with pytest.raises(UserError, match=f'^model {ckp.get_path("model", "model_5.pt")}: no such file$'):
        make_trainer(make_args(tmp_path, '--load', 'run', '--resume', '5', '--test_only'))


def test_tables():
    nan = math.nan
    assert tables.results_table(['Set5', 'Urban100'], 3, [34.5678, nan], [0.92871, nan]).splitlines() == [
        'PSNR (dB) / SSIM',
        'Dataset  |        x3       ',
        '---------------------------',
        'Set5     |   34.57 / 0.9287',
        'Urban100 |        -        ']
    rows = [['baby', 30.0, 0.9, 28.5, 0.85], ['bird', 32.0, 0.8, 29.0, 0.75]]
    assert tables.comparison_table('Set5', 2, 'LCoAN', rows).splitlines() == [
        '',
        'Set5 x2: PSNR (dB) / SSIM',
        'image   |     bicubic      |      LCoAN       | gain (dB)',
        '---------------------------------------------------------',
        'baby    |   28.50 / 0.8500 |   30.00 / 0.9000 | +1.50',
        'bird    |   29.00 / 0.7500 |   32.00 / 0.8000 | +3.00',
        'average |   28.75 / 0.8000 |   31.00 / 0.8500 | +2.25']


def test_test_only_prints_a_table(tmp_path, capsys):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--test_only', '--untrained'))
    assert trainer.terminate()
    ckp.done()
    lines = capsys.readouterr().out.splitlines()
    row = lines[lines.index('PSNR (dB) / SSIM') + 3]
    assert row.startswith('Set5 ')
    psnr, ssim = (float(v) for v in row.split('|')[1].split('/'))
    assert 20 < psnr < 60 and 0.5 < ssim <= 1
    # The per-image comparison with bicubic (demo template): its average row repeats the model's mean.
    average = next(line for line in lines if line.startswith('average '))
    bicubic, model, gain = (cell.strip() for cell in average.split('|')[1:])
    assert float(model.split('/')[0]) == pytest.approx(psnr, abs=0.006)
    assert float(gain) == pytest.approx(float(model.split('/')[0]) - float(bicubic.split('/')[0]), abs=0.011)
    assert (ckp.dir / 'metrics_Set5_x2.csv').is_file() and not (ckp.dir / 'training_state.pt').exists()


# ----------------------------------------------------------------------------------------------
# end to end: main.py on the built-in Sample data with a tiny LCoAN (killed: in a subprocess)

@pytest.fixture(scope='module')
def e2e(tmp_path_factory):
    """Base folder holding the Sample data and run 'a': 3 epochs, straight through."""
    base = tmp_path_factory.mktemp('e2e')
    done = run_main(base, '--save', 'a')
    assert done.returncode == 0, done.stdout + done.stderr
    return base


def net_state(path: Path) -> dict:
    return load_state(path)


@pytest.mark.slow
def test_e2e_run_writes_its_files_and_seed_makes_runs_bit_identical(e2e):
    a = e2e / 'exp' / 'a'
    for name in ('config.txt', 'log.txt', 'loss_log.csv', 'psnr_log.csv', 'metrics_Sample_x2.csv', 'loss_L1.png',
                 'psnr_Sample.png', 'training_state.pt', 'model/model_latest.pt', 'model/model_best.pt'):
        assert (a / name).is_file(), name
    assert sorted(p.name for p in (a / 'results-Sample').iterdir()) == [
        'camera_x2_SR.png', 'chelsea_x2_SR.png', 'coins_x2_SR.png']
    state = load_state(a / 'training_state.pt')
    assert state['epoch'] == 3 and state['loss_log'].shape == (3, 1)
    assert torch.isfinite(state['psnr_log']).all() and (state['psnr_log'] > 10).all()
    log = (a / 'log.txt').read_text()
    assert log.count('[Sample x2]\tPSNR: ') == 3 and '[Epoch 3]\tLearning rate: 5.00e-04' in log
    assert 'patch_size: 32' in (a / 'config.txt').read_text()
    assert 'attention_impl: fast' in (a / 'config.txt').read_text()

    # --deterministic changes nothing on the CPU, whose kernels are deterministic already.
    b = run_main(e2e, '--save', 'b', '--deterministic')
    assert b.returncode == 0, b.stdout + b.stderr
    assert 'deterministic: True' in (e2e / 'exp' / 'b' / 'config.txt').read_text()
    assert 'warning' not in b.stderr
    state_b = load_state(e2e / 'exp' / 'b' / 'training_state.pt')
    assert torch.equal(state_b['loss_log'], state['loss_log'])
    assert torch.equal(state_b['psnr_log'], state['psnr_log'])
    model_a, model_b = net_state(a / 'model/model_latest.pt'), net_state(e2e / 'exp/b/model/model_latest.pt')
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


@pytest.mark.slow
def test_e2e_kill_9_mid_epoch_then_resume_reproduces_the_losses(e2e):
    # Killed before the third of four batches of epoch 2 (held there: no race with the run's own progress).
    proc, seen = start_held(e2e, 7, '--save', 'c')
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ''.join(seen)
    c = e2e / 'exp' / 'c'
    assert load_state(c / 'training_state.pt')['epoch'] == 1

    resumed = run_main(e2e, '--load', 'c', '--resume', '-1')
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'after epoch 1: learning rate in use 5.00e-04' in resumed.stdout
    ref = load_state(e2e / 'exp' / 'a' / 'training_state.pt')
    got = load_state(c / 'training_state.pt')
    assert got['epoch'] == 3
    assert torch.equal(got['loss_log'], ref['loss_log'])
    assert torch.equal(got['psnr_log'], ref['psnr_log'])
    assert all(torch.equal(got['model'][k], ref['model'][k]) for k in ref['model'])


@pytest.mark.slow
def test_e2e_test_only_prints_the_table(e2e):
    a = e2e / 'exp' / 'a'
    done = run_main(e2e, '--test_only', '--save', 't', '--pre_train', a / 'model' / 'model_latest.pt')
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    head = lines.index('PSNR (dB) / SSIM')
    assert lines[head + 1].split('|')[1].strip() == 'x2'
    row = lines[head + 3]
    assert row.startswith('Sample ')
    psnr, ssim = (float(v) for v in row.split('|')[1].split('/'))
    last = load_state(a / 'training_state.pt')['psnr_log'][-1, 0].item()
    assert psnr == pytest.approx(last, abs=0.005) and 0 < ssim < 1
    assert (e2e / 'exp' / 't' / 'metrics_Sample_x2.csv').is_file()


@pytest.mark.slow
def test_e2e_test_only_on_a_run_evaluates_its_trained_model_and_keeps_its_results(e2e):
    a = e2e / 'exp' / 'a'
    kept = {p: p.read_bytes() for p in [a / 'metrics_Sample_x2.csv', *sorted((a / 'results-Sample').iterdir())]}
    earlier = set(a.glob('test-*'))
    done = run_main(e2e, '--load', 'a', '--test_only')
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'--test_only: evaluating {a}/model/model_latest.pt (the latest epoch of run a;' in done.stdout
    lines = done.stdout.splitlines()
    psnr = float(lines[lines.index('PSNR (dB) / SSIM') + 3].split('|')[1].split('/')[0])
    last = load_state(a / 'training_state.pt')['psnr_log'][-1, 0].item()
    assert psnr == pytest.approx(last, abs=0.005)  # the trained network, not an untrained one
    assert {p: p.read_bytes() for p in kept} == kept
    (out,) = set(a.glob('test-*')) - earlier
    assert (out / 'metrics_Sample_x2.csv').is_file() and len(list((out / 'results-Sample').iterdir())) == 3
    untrained = run_main(e2e, '--save', 'u', '--test_only')
    assert untrained.returncode == 2 and untrained.stderr.startswith('error: --test_only: no weights to evaluate;')


@pytest.mark.slow
def test_e2e_test_only_on_a_run_reads_its_architecture_and_a_failure_leaves_no_folder(e2e):
    # Issue 22, item 11: without --template demo, --load of a demo run built the paper model and failed; every failed
    # evaluation left a test-<date> folder.
    a = e2e / 'exp' / 'a'
    earlier = set(a.glob('test-*'))
    failed = helpers.main_here(e2e, '--load', 'a', '--test_only', '--cpu', '--data_test', 'Set14')
    assert failed.returncode == 2 and failed.stderr.startswith('error: Set14 not found'), failed.stderr
    assert set(a.glob('test-*')) == earlier
    done = helpers.main_here(e2e, '--load', 'a', '--test_only', '--cpu', '--data_test', 'Sample')
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'--load a --test_only: {a}/model/model_latest.pt: LCoAN x2 checkpoint; options read from the weights: ' \
           'model=LCoAN, scale=2, n_colors=3, n_feats=8, n_resgroups=1, n_resblocks=1, ' in done.stdout
    assert len(set(a.glob('test-*')) - earlier) == 1


@pytest.mark.slow
def test_e2e_bad_loss_is_a_one_line_error(e2e):
    done = run_main(e2e, '--save', 'bad', '--loss', '1*L1+1*Foo')
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: --loss '1*L1+1*Foo': unknown loss term 'Foo'; "
                                   'allowed: L1, MSE, Charbonnier')
