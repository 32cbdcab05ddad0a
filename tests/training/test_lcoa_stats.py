"""What LCoA learns: attention maps from the sparse pattern, cluster statistics, the per-epoch monitor
in the trainer and the TensorBoard events."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

import model as model_package
import option
from helpers.trainer_kit import make_data
from loss import Loss
from model.blocks import lcoa, lcoa_stats
from model.blocks import sparse_attention as fast
from model.blocks import sparse_attention_reference as ref
from model.lcoan import LCoAN
from trainer import Trainer
from training.lcoa_monitor import NAMES, LCoAMonitor
from training.run_folder import RunFolder
from training.tensorboard_log import TensorBoardLog


def dense_from_definition(embed, codes, window):
    """The attention matrix written from the definition, per round: sort stably, pad with the last sorted
    entries (cyclically), windows of ``window`` slots attend to themselves and both neighbours; a key
    counted once per occurrence; rounds mixed by the softmax of each pixel's log-sum-exp."""
    n, length, _ = embed.shape
    rounds = codes.shape[1]
    out = torch.zeros(n, length, length, dtype=torch.float64)
    for b in range(n):
        scores = embed[b] @ F.normalize(embed[b], dim=-1, eps=5e-5).T
        mats, lses = [], []
        for r in range(rounds):
            order = sorted(range(length), key=lambda i: (int(codes[b, r, i]), i))
            pad = (-length) % window
            padded = order + [order[(length - pad + j) % length] for j in range(pad)]
            n_windows = len(padded) // window
            mat = torch.zeros(length, length, dtype=torch.float64)
            lse = torch.zeros(length, dtype=torch.float64)
            for slot in range(length):
                k = slot // window
                keys = []
                for d in (0, -1, 1):
                    kk = (k + d) % n_windows
                    keys += padded[kk * window:(kk + 1) * window]
                s = scores[padded[slot], keys]
                lse[padded[slot]] = torch.logsumexp(s, 0)
                for key, weight in zip(keys, torch.softmax(s, 0), strict=True):
                    mat[padded[slot], key] += weight
            mats.append(mat)
            lses.append(lse)
        mix = torch.softmax(torch.stack(lses), dim=0)  # (R, L)
        out[b] = sum(mix[r][:, None] * mats[r] for r in range(rounds))
    return out


@pytest.mark.parametrize('impl', [fast, ref], ids=['fast', 'reference'])
@pytest.mark.parametrize('length, window, rounds', [(37, 8, 1), (37, 8, 3), (5, 8, 2), (24, 8, 1)])
def test_attention_map_follows_the_pattern(impl, length, window, rounds):
    torch.manual_seed(length + rounds)
    embed = torch.randn(2, length, 4, dtype=torch.float64)
    codes = torch.randint(0, 3, (2, rounds, length))
    values = torch.randn(2, length, 5, dtype=torch.float64)
    pattern = impl.build_pattern(embed, codes, window)
    out = impl.apply_pattern(pattern, values)
    expected = dense_from_definition(embed, codes, window)
    reference_dense = lcoa_stats.dense_attention(ref.build_pattern(embed, codes, window), 1)
    for b in range(2):
        dense = lcoa_stats.dense_attention(pattern, b)
        torch.testing.assert_close(dense.sum(1), torch.ones(length, dtype=torch.float64))
        torch.testing.assert_close(dense @ values[b], out[b])
        torch.testing.assert_close(dense, expected[b])
        torch.testing.assert_close(lcoa_stats.self_weights(pattern)[b], dense.diagonal())
    torch.testing.assert_close(lcoa_stats.dense_attention(pattern, 1), reference_dense)
    rows = lcoa_stats.attention_rows(pattern, torch.tensor([3, 0]), batch=1)
    torch.testing.assert_close(rows, expected[1, [3, 0]])


def test_self_weights_in_blocks_equal_one_block(monkeypatch):
    torch.manual_seed(0)
    embed, codes = torch.randn(1, 50, 4), torch.randint(0, 4, (1, 2, 50))
    pattern = fast.build_pattern(embed, codes, 6)
    whole = lcoa_stats.self_weights(pattern)
    monkeypatch.setattr(lcoa_stats, '_SELF_WEIGHT_CHUNK', 1)  # one window at a time
    torch.testing.assert_close(lcoa_stats.self_weights(pattern), whole)
    assert ((whole > 0) & (whole < 1)).all()


def test_pattern_layout_rejects_other_objects():
    with pytest.raises(TypeError, match='not a sparse-attention pattern: dict'):
        lcoa_stats.pattern_layout({})


def test_cluster_statistics_on_known_codes():
    codes = torch.tensor([[[0, 0, 1, 1, 1, 1, 3, 3], [2, 2, 2, 2, 2, 2, 2, 2]]])  # (1, 2 rounds, 8)
    sizes = lcoa_stats.cluster_sizes(codes, 4)
    assert sizes.tolist() == [[2, 4, 0, 2], [0, 0, 8, 0]]
    p = torch.tensor([2, 4, 2]) / 8
    assert lcoa_stats.perplexity(sizes).tolist() == pytest.approx([math.exp(-(p * p.log()).sum()), 1.0])
    assert lcoa_stats.perplexity(torch.ones(5)).item() == pytest.approx(5)
    assert math.isnan(lcoa_stats.perplexity(torch.zeros(3)).item())
    # Windows of 3 over the sorted codes [0 0 1 | 1 1 1 | 3 3 +pad]: pad repeats sorted entry (8 - 1 + 0) = 3.
    assert lcoa_stats.mixed_window_share(codes, 3).tolist() == [[pytest.approx(1 / 3), 0.0]]
    assert lcoa_stats.mixed_window_share(codes, 4).tolist() == [[1.0, 0.0]]


def test_centroid_angles():
    start = torch.tensor([[[1., 0, 0], [0, 1, 0]]])
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    now = torch.tensor([[[c, s, 0], [0, 1, 0]]])
    assert lcoa_stats.centroid_angles(start, now).tolist() == [[pytest.approx(30), pytest.approx(0, abs=1e-5)]]


def test_epoch_statistics_from_the_kmeans_counts():
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=6, window_size=16,
                n_hashes=2, ema_decay=0.5, rgb_range=1).train()
    assert lcoa_stats.epoch_statistics(net) is None  # nothing clustered yet
    x = torch.rand(2, 3, 12, 12)
    codes = []
    km = net.body[0].attention[0].kmeans
    km.register_forward_hook(lambda _m, _i, out: codes.append(out))
    lcoa_stats.reset_statistics(net)
    with torch.no_grad():
        net(x)
        net(x.flip(-1))
    stats = lcoa_stats.epoch_statistics(net)
    sizes = lcoa_stats.cluster_sizes(torch.cat(codes), 6)
    assert stats['clusters'] == 12  # only the first group's module clustered (2 rounds x 6)
    assert stats['empty_clusters'] == (sizes == 0).sum().item()
    assert stats['perplexity'] == pytest.approx(lcoa_stats.perplexity(sizes).mean().item())
    # The first batch initialised the centroids: movement is measured from the initialisation.
    assert stats['centroid_angle'] > 0
    lcoa_stats.reset_statistics(net)
    start = km.means.clone()
    with torch.no_grad():
        net(x)
    moved = lcoa_stats.epoch_statistics(net)['centroid_angle']
    assert moved > 0
    assert moved == pytest.approx(lcoa_stats.centroid_angles(start, km.means).mean().item())


def test_monitor_self_weight_is_the_first_evaluation_forward():
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
                rgb_range=1)
    net.train()(torch.rand(1, 3, 10, 10))  # initialise
    net.eval()
    monitor = LCoAMonitor(net)
    captured = []
    net.body[0].attention[0].register_forward_hook(lambda _m, _i, out: captured.append(out[1]))
    first, second = torch.rand(1, 3, 9, 11), torch.rand(1, 3, 10, 10)
    with torch.no_grad(), monitor.probe():
        net(first)
        net(second)
    line = monitor.end_evaluation(record=False)
    expected = lcoa_stats.self_weights(captured[0]).mean().item()
    assert line == f'LCoA: mean attention weight on self {expected:.4f} (first validation image)'
    assert monitor.log.shape == (0, 4)
    with torch.no_grad():  # the hook is gone after the probe
        net(first)
    assert monitor._self_weight == pytest.approx(expected)


def test_monitor_is_off_without_lcoa():
    monitor = LCoAMonitor(torch.nn.Conv2d(3, 3, 1))
    monitor.start_epoch()
    assert not monitor.enabled and monitor.end_epoch(1) is None and monitor.end_evaluation(True) is None


# ----------------------------------------------------------------------------------------------
# in the trainer, with --tensorboard


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}, acc


def test_tensorboard_log_writes_what_it_is_given(tmp_path):
    tb = TensorBoardLog(tmp_path, enabled=True, rgb_range=1)
    tb.add_losses(1, ['L1', 'MSE'], [0.25, 0.125], lr=1e-4)
    tb.add_losses(2, ['L1', 'MSE'], [0.5, 0.0625], lr=5e-5)
    tb.add_metrics(2, ['Set5', 'Demo'], 2, torch.tensor([31.5, math.nan]), torch.tensor([0.875, math.nan]))
    tb.add_statistics(2, NAMES, [3.0, 7.5, 0.25, math.nan])
    img = torch.rand(1, 3, 300, 20)
    for i in range(3):
        tb.add_result(2, 'Set5', f'img{i}', img, img)
    tb.close()
    scalars, acc = read_scalars(tmp_path / 'tb')
    assert scalars['loss/L1'] == [(1, 0.25), (2, 0.5)] and scalars['loss/MSE'] == [(1, 0.125), (2, 0.0625)]
    assert [s for s, _ in scalars['lr']] == [1, 2] and scalars['lr'][1][1] == pytest.approx(5e-5)
    assert scalars['psnr/Set5_x2'] == [(2, 31.5)] and scalars['ssim/Set5_x2'] == [(2, 0.875)]
    assert 'psnr/Demo_x2' not in scalars and 'lcoa/self_weight' not in scalars
    assert scalars['lcoa/empty_clusters'] == [(2, 3.0)] and scalars['lcoa/perplexity'] == [(2, 7.5)]
    images = acc.Tags()['images']
    assert sorted(images) == ['results/Set5/img0', 'results/Set5/img1']  # IMAGES_PER_SET
    event = acc.Images('results/Set5/img0')[0]
    assert (event.width, event.height) == (40, 256)  # SR beside HR, centre crop of 256 rows


def test_tensorboard_off_writes_nothing(tmp_path):
    tb = TensorBoardLog(tmp_path, enabled=False)
    tb.add_losses(1, ['L1'], [1.0], 1e-4)
    tb.close()
    assert not (tmp_path / 'tb').exists()


def lcoan_trainer(tmp_path, *extra):
    args = option.parse_args(['--template', 'demo', '--save_dir', str(tmp_path), '--save', 'run', '--cpu',
                              '--n_threads', '0', '--epochs', '3', '--print_every', '100', '--batch_size', '2',
                              '--n_resgroups', '2', '--n_resblocks', '1', '--n_feats', '8', '--n_clusters', '4',
                              '--window_size', '16', '--tensorboard', *extra])
    torch.manual_seed(0)
    ckp = RunFolder(args)
    net = model_package.Model(args, ckp)
    return Trainer(args, make_data(), net, Loss(args, ckp), ckp), ckp


def test_trainer_logs_plots_and_tensorboard_events(tmp_path):
    trainer, ckp = lcoan_trainer(tmp_path)
    for _ in range(2):
        trainer.train()
        trainer.test()
    ckp.done()
    d = ckp.dir
    log = (d / 'log.txt').read_text()
    assert log.count('LCoA: ') == 4 and '[Epoch 2] LCoA: ' in log and '/4 empty clusters' in log
    assert (d / 'lcoa_stats.png').is_file()
    with open(d / 'lcoa_stats.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert torch.allclose(torch.tensor([[float(r[n]) for n in NAMES] for r in rows], dtype=torch.float64),
                          trainer.lcoa_monitor.log,
                          atol=1e-6)
    log_stats = trainer.lcoa_monitor.log
    assert ((log_stats[:, 0] >= 0) & (log_stats[:, 0] <= 4)).all()
    assert ((log_stats[:, 1] >= 1) & (log_stats[:, 1] <= 4)).all()
    assert (log_stats[:, 2] >= 0).all() and ((log_stats[:, 3] > 0) & (log_stats[:, 3] < 1)).all()

    scalars, acc = read_scalars(d / 'tb')
    assert scalars['loss/L1'] == [(e + 1, pytest.approx(float(trainer.loss.log[e, 0]))) for e in range(2)]
    assert scalars['psnr/Set5_x2'] == [(e + 1, pytest.approx(float(trainer.psnr_log[e, 0]))) for e in range(2)]
    assert scalars['ssim/Set5_x2'] == [(e + 1, pytest.approx(float(trainer.ssim_log[e, 0]))) for e in range(2)]
    for i, name in enumerate(NAMES):
        assert scalars[f'lcoa/{name}'] == [(e + 1, pytest.approx(float(log_stats[e, i]))) for e in range(2)]
    assert scalars['lr'] == [(1, pytest.approx(5e-4)), (2, pytest.approx(5e-4))]
    assert sorted(acc.Tags()['images']) == ['results/Set5/set500', 'results/Set5/set501']

    # A resumed run keeps the statistics of the epochs before.
    resumed, rckp = lcoan_trainer(tmp_path, '--load', 'run', '--resume', '-1')
    assert torch.equal(resumed.lcoa_monitor.log, log_stats)
    rckp.done()


def test_frozen_centroids_move_zero_degrees(tmp_path):
    trainer, ckp = lcoan_trainer(tmp_path, '--ema_decay', '1')
    trainer.train()
    ckp.done()
    assert trainer.lcoa_monitor._row[2] == 0
    assert 'centroids moved 0.000 deg' in (ckp.dir / 'log.txt').read_text()
    km = [m for m in trainer.model.get_model().modules() if isinstance(m, lcoa.KMeansCentroids)][0]
    assert km.frozen


def test_skipped_batch_is_not_counted(tmp_path):
    trainer, ckp = lcoan_trainer(tmp_path)
    trainer.model.train()
    trainer.loss.start_log()
    trainer.step.skipped_epoch = 0
    trainer.lcoa_monitor.start_epoch()
    lr, hr, _ = next(iter(trainer.loader_train))
    assert trainer.step(lr, hr, 1, 0)
    km = lcoa_stats.kmeans_modules(trainer.model.get_model())[0]
    counts = km.member_counts.clone()
    assert counts.sum() == lr.shape[0] * lr.shape[-2] * lr.shape[-1]
    assert not trainer.step(lr, hr * math.nan, 1, 1)  # NaN loss: skipped, buffers restored
    assert torch.equal(km.member_counts, counts)
    ckp.done()
