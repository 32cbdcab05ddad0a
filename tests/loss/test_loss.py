"""--loss specs, term values, per-term logs and plots."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from core import distributed
from core.errors import UserError
from loss import Loss, parse_loss_spec
from training.plots import plot_png


def _loss(spec: str, rgb_range: int = 1) -> Loss:
    return Loss(SimpleNamespace(loss=spec, rgb_range=rgb_range), None)


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)


def test_parse_specs():
    assert parse_loss_spec('1*L1') == [(1.0, 'L1')]
    assert parse_loss_spec('1*L1+0.5*MSE') == [(1.0, 'L1'), (0.5, 'MSE')]
    assert parse_loss_spec(' 2 * charbonnier ') == [(2.0, 'Charbonnier')]


@pytest.mark.parametrize('spec, message', [
    ('1*L1+0.5*Foo', "--loss '1*L1+0.5*Foo': unknown loss term 'Foo'; allowed: L1, MSE, Charbonnier"),
    ('L1', "--loss 'L1': cannot read 'L1'; expected weight*term"),
    ('x*L1', "--loss 'x*L1': weight 'x' of L1 must be a positive number"),
    ('-1*L1', "--loss '-1*L1': weight '-1' of L1 must be a positive number"),
    ('0*L1', "--loss '0*L1': weight '0' of L1 must be a positive number"),
    ('1*L1+1*l1', "--loss '1*L1+1*l1': term L1 is given twice"),
    ('1*L1+', "--loss '1*L1+': cannot read ''"),
])
def test_bad_specs_name_the_flag_and_the_part(spec, message):
    with pytest.raises(UserError) as e:
        parse_loss_spec(spec)
    assert str(e.value).startswith(message)
    assert '\n' not in str(e.value)


def test_term_values():
    sr, hr = _pair()
    assert _loss('1*L1')(sr, hr).item() == pytest.approx(F.l1_loss(sr, hr).item(), rel=1e-6)
    assert _loss('1*MSE')(sr, hr).item() == pytest.approx(F.mse_loss(sr, hr).item(), rel=1e-6)
    expected = (0.5 * (sr - hr).abs().mean() + 0.25 * ((sr - hr) ** 2).mean()).item()
    assert _loss('0.5*L1+0.25*MSE')(sr, hr).item() == pytest.approx(expected, rel=1e-6)
    charb = torch.sqrt((sr.double() - hr.double()) ** 2 + 1e-6).mean().item()
    assert _loss('1*Charbonnier')(sr, hr).item() == pytest.approx(charb, rel=1e-6)
    # eps follows the pixel range: the same images on [0, 255] give 255 times the loss.
    assert _loss('1*Charbonnier', 255)(sr * 255, hr * 255).item() == pytest.approx(255 * charb, rel=1e-5)
    # Charbonnier's gradient is finite at zero error, and the loss is computed in float32.
    x = hr.clone().requires_grad_(True)
    out = _loss('1*Charbonnier')(x.half(), hr.half())
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(x.grad).all()


def test_per_term_log_counts_only_accepted_batches():
    loss = _loss('1*L1+0.5*MSE')
    assert loss.names == ['L1', 'MSE', 'Total']
    pairs = [_pair(i) for i in range(3)]
    for epoch in range(2):
        loss.start_log()
        for i, (sr, hr) in enumerate(pairs):
            loss(sr, hr)
            if not (epoch == 1 and i == 2):  # the last batch of epoch 2 is "skipped"
                loss.accept()
        loss.end_log()
    assert loss.log.shape == (2, 3) and loss.log.dtype == torch.float64

    def expected(used):
        l1 = sum(F.l1_loss(*pairs[i]).item() for i in used) / len(used)
        mse = sum(0.5 * F.mse_loss(*pairs[i]).item() for i in used) / len(used)
        return [l1, mse, l1 + mse]
    assert loss.log[0].tolist() == pytest.approx(expected([0, 1, 2]), rel=1e-6)
    assert loss.log[1].tolist() == pytest.approx(expected([0, 1]), rel=1e-6)
    l1, mse, total = expected([0, 1])
    assert loss.display_loss() == f'[L1: {l1:.4f}][MSE: {mse:.4f}][Total: {total:.4f}]'

    loss.start_log()
    loss(*pairs[0])
    loss.end_log()  # every batch skipped: a NaN row, not a division by zero
    assert all(math.isnan(v) for v in loss.log[2].tolist())


def test_single_term_has_no_total_and_plots_are_written(tmp_path):
    loss = _loss('1*L1')
    assert loss.names == ['L1']
    for _ in range(2):
        loss.start_log()
        loss(*_pair())
        loss.accept()
        loss.end_log()

    ckp = SimpleNamespace(plot=lambda name, draw: plot_png(tmp_path / name, draw))
    loss.plot_loss(ckp)
    assert (tmp_path / 'loss_L1.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    two = _loss('1*L1+1*MSE')
    two.start_log()
    two(*_pair())
    two.accept()
    two.end_log()
    two.plot_loss(ckp)
    assert {p.name for p in tmp_path.glob('loss_*.png')} == {'loss_L1.png', 'loss_MSE.png', 'loss_Total.png'}


def test_all_reduce_sums_over_processes_when_distributed_is_initialized(monkeypatch):
    loss = _loss('1*L1+1*MSE')
    loss.start_log()
    loss(*_pair())
    loss.accept()
    alone = loss.display_loss()
    loss.all_reduce(torch.device('cpu'))  # one process: nothing to do
    assert loss._count == 1
    # Two processes with the same batch: sums and count double, so the means stay.
    monkeypatch.setattr(distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda t: t.mul_(2))
    before = loss._sum.clone()
    loss.all_reduce(torch.device('cpu'))
    assert loss._count == 2 and torch.equal(loss._sum, 2 * before) and loss.display_loss() == alone
