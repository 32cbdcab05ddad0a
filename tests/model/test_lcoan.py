"""The LCoAN network: official checkpoint layout, shapes, collaborative attention, save/load, gradients."""


import pytest
import torch

import helpers
import option
from model import lcoan
from model.blocks import common, lcoa
from model.blocks import sparse_attention as fast
from model.blocks import sparse_attention_reference as ref

# Copies of ../shared/reference/ (the official checkpoints' key lists), kept in the repo so this always runs.
REFERENCE = helpers.FIXTURES / 'reference'

PAPER_PARAMETERS = {2: 15_668_508, 3: 16_406_428, 4: 16_258_844}


def tiny(scale: int = 2, **overrides) -> lcoan.LCoAN:
    """A small LCoAN with the default (fast) attention, the one users run."""
    config = dict(scale=scale, n_resgroups=3, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
                  n_hashes=2, ema_decay=0.9, res_scale=0.1, n_colors=3, rgb_range=1)
    config.update(overrides)
    return lcoan.LCoAN(**config)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_paper_config_has_official_state_dict_layout(scale):
    reference_file = REFERENCE / f'lcoan_paper_x{scale}_state_dict.txt'
    with torch.device('meta'):
        net = lcoan.LCoAN(scale=scale)  # the defaults are the paper's configuration
    layout = [f'{k}\t{tuple(v.shape)}\t{str(v.dtype).removeprefix("torch.")}' for k, v in net.state_dict().items()]
    assert layout == reference_file.read_text().splitlines()


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_paper_config_parameter_count(scale):
    with torch.device('meta'):
        net = lcoan.LCoAN(scale=scale)
    assert sum(p.numel() for p in net.parameters()) == PAPER_PARAMETERS[scale]
    assert net.body[0].attention[0].kmeans.means.shape == (1, 128, 128)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('size', [(7, 9), (2, 3), (1, 1)])  # 63 and 6 positions: fewer than half a window
def test_output_shapes(scale, size):
    torch.manual_seed(0)
    net = tiny(scale)
    lr = torch.rand(2, 3, *size)
    assert net(lr).shape == (2, 3, scale * size[0], scale * size[1])
    net.eval()
    with torch.no_grad():
        assert net(lr[:1]).shape == (1, 3, scale * size[0], scale * size[1])


def test_single_channel_mean_shift_uses_mean_of_rgb_means():
    torch.manual_seed(0)
    net = tiny(n_colors=1, rgb_range=255)
    x = torch.rand(1, 1, 5, 4) * 255
    mean = 255 * sum(common.DIV2K_RGB_MEAN) / 3
    torch.testing.assert_close(net.sub_mean(x), x - mean)
    torch.testing.assert_close(net.add_mean(x), x + mean)
    assert net(x).shape == (1, 1, 10, 8)


def test_mean_shift_values_and_frozen():
    shift = common.MeanShift(rgb_range=255, rgb_mean=common.DIV2K_RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign=-1)
    x = torch.rand(2, 3, 4, 4) * 255
    expected = x - 255 * torch.tensor(common.DIV2K_RGB_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(shift(x), expected)
    assert not any(p.requires_grad for p in shift.parameters())


def trained_tiny() -> tuple[lcoan.LCoAN, torch.Tensor]:
    torch.manual_seed(1)
    net = tiny()
    x = torch.rand(2, 3, 6, 5)
    net(x)  # initialises the centroids (training mode)
    return net.eval(), x


def test_collaborative_attention_uses_only_the_first_groups_pattern():
    net, x = trained_tiny()
    assert bool(net.body[0].attention[0].kmeans.initted)
    assert not any(bool(g.attention[0].kmeans.initted) for g in net.body[1:])  # later groups never cluster
    with torch.no_grad():
        before = net(x)
        net.body[1].attention[0].conv_match[0].weight.add_(1.0)
        net.body[2].attention[0].conv_match[0].bias.add_(1.0)
        assert torch.equal(net(x), before)
        net.body[0].attention[0].conv_match[0].weight.add_(0.5)
        assert not torch.allclose(net(x), before)


def test_gradients_reach_the_pattern_and_skip_unused_parameters():
    net, x = trained_tiny()
    net.train()
    net(x).square().mean().backward()
    assert net.body[0].attention[0].conv_match[0].weight.grad.abs().sum() > 0
    assert net.body[2].attention[0].conv_assembly[0].weight.grad.abs().sum() > 0
    assert net.body[1].attention[0].conv_match[0].weight.grad is None
    assert net.a.grad is None and not net.a.requires_grad
    assert net.sub_mean.weight.grad is None


def test_save_load_round_trip_is_bit_identical(tmp_path):
    net, x = trained_tiny()
    with torch.no_grad():
        expected = net(x)
    torch.save(net.state_dict(), tmp_path / 'model.pt')
    torch.manual_seed(123)
    fresh = tiny()
    fresh.load_state_dict(torch.load(tmp_path / 'model.pt', weights_only=True), strict=True)
    assert bool(fresh.body[0].attention[0].kmeans.initted)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)


def test_training_step_moves_only_the_first_groups_centroids():
    net, x = trained_tiny()
    means = [g.attention[0].kmeans.means.clone() for g in net.body]
    with torch.no_grad():
        net(x)  # evaluation: no update
    assert all(torch.equal(g.attention[0].kmeans.means, m) for g, m in zip(net.body, means, strict=True))
    net.train()
    net(torch.rand(2, 3, 6, 5))
    assert not torch.equal(net.body[0].attention[0].kmeans.means, means[0])
    assert all(torch.equal(g.attention[0].kmeans.means, m) for g, m in zip(net.body[1:], means[1:], strict=True))


def test_mixed_precision_keeps_attention_statistics_in_float32():
    torch.manual_seed(0)
    net = tiny()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net(torch.rand(2, 3, 7, 9))
        _, pattern = net.body[0].attention[0](torch.randn(2, 8, 7, 9))
    assert out.shape == (2, 3, 14, 18) and torch.isfinite(out.float()).all()
    assert pattern.weights.dtype == pattern.round_probs.dtype == torch.float32
    assert net.body[0].attention[0].kmeans.means.dtype == torch.float32


def test_make_model_from_options(tmp_path):
    args = option.parse_args(['--template', 'demo', '--dir_data', str(tmp_path), '--scale', '3', '--patch_size', '48',
                              '--n_hashes', '2'])
    net = lcoan.make_model(args)
    assert len(net.body) == args.n_resgroups == 2
    attention = net.body[0].attention[0]
    assert attention.window_size == args.window_size and attention.kmeans.means.shape == (2, 16, 16)
    assert net.tail[0][0].out_channels == 9 * args.n_feats
    assert {m.attention_impl for m in net.modules() if isinstance(m, lcoa.LearnableCollaborativeAttention)} == {'fast'}
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 6)).shape == (1, 3, 15, 18)
    args = option.parse_args(['--template', 'demo', '--dir_data', str(tmp_path), '--attention_impl', 'reference'])
    attention = [m for m in lcoan.make_model(args).modules() if isinstance(m, lcoa.LearnableCollaborativeAttention)]
    assert len(attention) == args.n_resgroups and {m.attention_impl for m in attention} == {'reference'}


def test_attention_impl_is_chosen_per_model_in_one_process(monkeypatch):
    calls = []

    def spy(name, function, original):
        def record(*args):
            calls.append((name, function))
            return original(*args)
        return record

    for name, module in lcoa.IMPLEMENTATIONS.items():
        for function in ('build_pattern', 'apply_pattern'):
            monkeypatch.setattr(module, function, spy(name, function, getattr(module, function)))
    fast_net, x = trained_tiny()
    reference_net = tiny(attention_impl='reference').eval()
    reference_net.load_state_dict(fast_net.state_dict(), strict=True)
    with torch.no_grad():
        calls.clear()
        fast_out = fast_net(x)
        assert calls == [('fast', 'build_pattern')] + [('fast', 'apply_pattern')] * 3
        calls.clear()
        reference_out = reference_net(x)
        assert calls == [('reference', 'build_pattern')] + [('reference', 'apply_pattern')] * 3
        _, fast_pattern = fast_net.body[0].attention[0](x.new_zeros(1, 8, 3, 4))
        _, reference_pattern = reference_net.body[0].attention[0](x.new_zeros(1, 8, 3, 4))
    assert isinstance(fast_pattern, fast.SparsePattern) and isinstance(reference_pattern, ref.SparsePattern)
    torch.testing.assert_close(fast_out, reference_out, rtol=0, atol=1e-6)  # different code, same function


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_inference_tail_in_strips_equals_whole_tail(scale, monkeypatch):
    net = tiny(scale).eval()
    x = torch.rand(1, 3, 41, 23)
    with torch.no_grad():
        net.train()(x)  # initialise the centroids
        net.eval()
        monkeypatch.setattr(lcoan, 'TAIL_STRIP_ROWS', 8)  # 6 strips, the last one short
        strips = net(x)
        monkeypatch.setattr(lcoan, 'TAIL_STRIP_ROWS', 1000)
        whole = net(x)
    assert strips.shape == (1, 3, 41 * scale, 23 * scale)
    assert torch.allclose(strips, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize('n_hashes', [1, 2])
def test_forward_and_backward_read_no_device_value(n_hashes):
    # On a GPU each read of a device value (.item(), bool(tensor), nonzero, data-dependent shapes) waits for
    # the device; the network's steady-state training pass has none, so the host can queue kernels ahead.
    # (The optimizer is not the network's: torch's CPU Adam reads its step counters with .item().)
    torch.manual_seed(0)
    net = tiny(n_hashes=n_hashes).train()
    lr, hr = torch.rand(3, 3, 12, 12), torch.rand(3, 3, 24, 24)

    def step():
        net.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(lr), hr).backward()

    step()  # initialises the centroids
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    names = {e.name for e in prof.events()}
    assert 'aten::bmm' in names
    assert names.isdisjoint({'aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero', 'aten::nonzero'})
