"""Learnable sparse attention (reference implementation), k-means centroids and the LCoA module."""

import copy
import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.blocks import lcoa
from model.blocks import sparse_attention_reference as ref


def dense_oracle(embed: torch.Tensor, codes: torch.Tensor, window: int, values: torch.Tensor):
    """The sparse attention written as dense attention with key multiplicities, position by position.

    For each round, ``mult[i, j]`` counts how often position ``j`` is among the keys seen by query
    ``i`` (the windows ``w - 1``, ``w`` and ``w + 1`` around the slot of ``i`` in the padded,
    stably sorted sequence). Then ``lse_i = log sum_j mult_ij exp(s_ij)`` and
    ``out_i = sum_j mult_ij exp(s_ij - lse_i) v_j``; rounds are mixed by ``softmax_r(lse)``.
    Returns (out (N, L, Cv), lse (N, R, L)).
    """
    n, length, _ = embed.shape
    rounds = codes.shape[1]
    outs = torch.zeros(n, rounds, length, values.shape[-1], dtype=embed.dtype)
    lses = torch.zeros(n, rounds, length, dtype=embed.dtype)
    for b in range(n):
        scores = embed[b] @ F.normalize(embed[b], dim=-1, eps=5e-5).T  # (L, L): query i, key j
        for r in range(rounds):
            order = sorted(range(length), key=lambda i: (int(codes[b, r, i]), i))
            pad = (-length) % window
            padded = order + [order[(length - pad + j) % length] for j in range(pad)]
            n_windows = len(padded) // window
            mult = torch.zeros(length, length, dtype=embed.dtype)
            for slot in range(length):
                w = slot // window
                for nw in (w - 1, w, w + 1):
                    nw %= n_windows
                    for j in padded[nw * window:(nw + 1) * window]:
                        mult[order[slot], j] += 1
            lse = torch.log((mult * scores.exp()).sum(dim=1))
            attn = mult * (scores - lse[:, None]).exp()
            outs[b, r] = attn @ values[b]
            lses[b, r] = lse
    probs = torch.softmax(lses, dim=1)
    return (outs * probs[..., None]).sum(dim=1), lses


@pytest.mark.parametrize('n, length, rounds, window, clusters', [
    (2, 23, 3, 8, 5),  # padding with pad <= L, three windows
    (1, 5, 2, 16, 3),  # pad (11) > L: cyclic padding, a single window
    (2, 16, 1, 8, 4),  # no padding, two windows: previous and next window coincide
    (1, 40, 2, 8, 6),  # five windows
])
def test_reference_matches_dense_oracle(n, length, rounds, window, clusters):
    g = torch.Generator().manual_seed(length)
    embed = torch.randn(n, length, 4, generator=g, dtype=torch.float64)
    values = torch.randn(n, length, 3, generator=g, dtype=torch.float64)
    codes = torch.randint(0, clusters, (n, rounds, length), generator=g)
    pattern = ref.build_pattern(embed, codes, window)
    out = ref.apply_pattern(pattern, values)
    expected, expected_lse = dense_oracle(embed, codes, window, values)
    torch.testing.assert_close(pattern.lse, expected_lse, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert out.dtype == torch.float64 and out.shape == values.shape


def test_single_cluster_single_window_is_dense_softmax_attention():
    # One window of exactly L slots: its own, previous and next windows are the same window, so every
    # key appears three times. Softmax over the triplicated scores gives each copy a third of the
    # dense weight, so the output equals dense attention and lse = dense lse + log 3.
    torch.manual_seed(0)
    embed, values = torch.randn(2, 12, 6), torch.randn(2, 12, 5)
    codes = torch.zeros(2, 1, 12, dtype=torch.long)
    pattern = ref.build_pattern(embed, codes, 12)
    scores = embed @ F.normalize(embed, dim=-1, eps=5e-5).transpose(1, 2)
    torch.testing.assert_close(ref.apply_pattern(pattern, values), torch.softmax(scores, dim=-1) @ values)
    torch.testing.assert_close(pattern.lse, torch.logsumexp(scores, dim=-1).unsqueeze(1) + math.log(3))


def test_reference_pads_like_official_and_sorts_stably():
    codes = torch.tensor([[[2, 0, 1, 0, 2, 1, 0]]])  # L = 7, window 4 -> pad 1
    pattern = ref.build_pattern(torch.randn(1, 7, 2), codes, 4)
    sorted_positions = [1, 3, 6, 2, 5, 0, 4]
    assert pattern.order[0, 0].tolist() == sorted_positions + sorted_positions[-1:]
    assert pattern.undo[0, 0, sorted_positions].tolist() == list(range(7))
    cyclic = ref.build_pattern(torch.randn(1, 3, 2), torch.zeros(1, 1, 3, dtype=torch.long), 8)  # pad 5 > L
    assert cyclic.order[0, 0].tolist() == [0, 1, 2, 1, 2, 0, 1, 2]


def test_reference_gradcheck():
    g = torch.Generator().manual_seed(3)
    embed = torch.randn(1, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(1, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([[[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]]])
    assert torch.autograd.gradcheck(lambda e, v: ref.apply_pattern(ref.build_pattern(e, codes, 4), v),
                                    (embed, values))


def test_reference_keeps_value_dtype_and_computes_in_float32():
    embed = torch.randn(1, 9, 4).half()
    pattern = ref.build_pattern(embed, torch.zeros(1, 1, 9, dtype=torch.long), 4)
    assert pattern.weights.dtype == torch.float32
    assert ref.apply_pattern(pattern, torch.randn(1, 9, 3).bfloat16()).dtype == torch.bfloat16


# ---------------------------------------------------------------- k-means centroids

def independent_kmeans_init(embed: torch.Tensor, n_clusters: int, rounds: int) -> torch.Tensor:
    """The official initialisation, written out (random rows, then 10 Lloyd steps on the raw rows), except
    that each round starts from its own rows: one permutation cut into rounds when there are enough rows,
    else one permutation (or, below ``n_clusters`` rows, one ``randint``) per round."""
    rows = embed.reshape(-1, embed.shape[-1])
    if rows.shape[0] >= rounds * n_clusters:
        starts = torch.randperm(rows.shape[0])[:rounds * n_clusters].view(rounds, n_clusters)
    elif rows.shape[0] >= n_clusters:
        starts = torch.stack([torch.randperm(rows.shape[0])[:n_clusters] for _ in range(rounds)])
    else:
        starts = torch.randint(0, rows.shape[0], (rounds, n_clusters))
    out = []
    for idx in starts:
        means = rows[idx].clone()
        for _ in range(10):
            assign = (rows @ means.T).argmax(dim=1)
            new = means.clone()
            for k in range(n_clusters):
                members = rows[assign == k]
                if len(members):
                    new[k] = members.sum(0) / members.sum(0).norm()
            means = new
        out.append(means)
    return torch.stack(out)


def expected_ema(means: torch.Tensor, embed: torch.Tensor, decay: float) -> torch.Tensor:
    x = F.normalize(embed.reshape(-1, embed.shape[-1]), dim=-1)
    out = means.clone()
    for r in range(means.shape[0]):
        assign = (x @ means[r].T).argmax(dim=1)
        for k in range(means.shape[1]):
            members = x[assign == k]
            new = members.sum(0) / members.sum(0).norm() if len(members) else means[r, k]
            moved = decay * means[r, k] + (1 - decay) * new
            out[r, k] = moved / moved.norm()
    return out


# randperm cut into rounds, one randperm per round (fewer rows than rounds x clusters), randint (fewer
# rows than clusters)
@pytest.mark.parametrize('rows', [30, 12, 3])
def test_kmeans_initialisation_matches_official_algorithm_and_is_reproducible(rows):
    embed = torch.randn(1, rows, 5, generator=torch.Generator().manual_seed(rows))
    km = lcoa.KMeansCentroids(n_rounds=2, dim=5, n_clusters=8, ema_decay=0.9).eval()
    torch.manual_seed(7)
    km.initialise(embed)
    torch.manual_seed(7)
    expected = independent_kmeans_init(embed, 8, 2)
    torch.testing.assert_close(km.means, expected)
    assert bool(km.initted)
    again = lcoa.KMeansCentroids(n_rounds=2, dim=5, n_clusters=8, ema_decay=0.9)
    torch.manual_seed(7)
    again.initialise(embed)
    assert torch.equal(again.means, km.means)


def test_one_round_initialisation_draws_the_official_rows():
    """One round: exactly the official draw, randperm(n)[:K] (so a seed gives the same model as before)."""
    embed = torch.randn(1, 40, 5, generator=torch.Generator().manual_seed(3))
    km = lcoa.KMeansCentroids(n_rounds=1, dim=5, n_clusters=8, ema_decay=0.9)
    torch.manual_seed(11)
    km.initialise(embed)
    torch.manual_seed(11)
    rows = embed[0, torch.randperm(40)[:8]]
    for _ in range(10):
        sums, counts = lcoa._cluster_sums(embed, lcoa._assign(embed, rows[None]), 8)
        rows = lcoa._renormalised_means(rows[None], sums, counts)[0]
    torch.testing.assert_close(km.means[0], rows)


def clustered_rows(n_groups: int, per_group: int, dim: int, seed: int) -> torch.Tensor:
    """(1, n_groups * per_group, dim) rows around ``n_groups`` random directions (data k-means can split many ways)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_groups, dim, generator=g), dim=-1)
    rows = centres.repeat_interleave(per_group, 0) + 0.3 * torch.randn(n_groups * per_group, dim, generator=g)
    return rows[None]


def test_rounds_differ_after_initialisation_and_after_training_steps():
    torch.manual_seed(0)
    km = lcoa.KMeansCentroids(n_rounds=3, dim=6, n_clusters=5, ema_decay=0.9).train()
    embed = clustered_rows(12, 20, 6, seed=1)
    codes = km(embed)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(km.means[a], km.means[b], atol=1e-3), (a, b)
            assert (codes[0, a] != codes[0, b]).any(), (a, b)
    for step in range(5):
        codes = km(clustered_rows(12, 20, 6, seed=2 + step))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(km.means[a], km.means[b], atol=1e-3), (a, b)
            assert (codes[0, a] != codes[0, b]).any(), (a, b)


def test_rounds_differ_in_the_network_and_change_its_output():
    """Two k-means rounds of a whole LCoAN: different clusterings after a training step, and the
    two-round output differs from what either round alone gives (the rounds are not repeated work)."""
    from model.lcoan import LCoAN
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
                n_hashes=2, ema_decay=0.9, rgb_range=1).train()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    net(x)
    km = net.body[0].attention[0].kmeans
    assert not torch.allclose(km.means[0], km.means[1], atol=1e-3)
    captured = {}
    km.register_forward_hook(lambda _m, _i, out: captured.update(codes=out))
    net.eval()
    with torch.no_grad():
        net(x)
    codes = captured['codes']
    assert (codes[:, 0] != codes[:, 1]).any()


@pytest.mark.parametrize('decay', [1.0, 1])
def test_ema_decay_one_freezes_the_centroids(decay):
    torch.manual_seed(0)
    km = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=decay).train()
    km(torch.randn(2, 10, 4))  # initialises
    initial = km.means.clone()
    for _ in range(3):
        km(torch.randn(2, 10, 4))
    assert torch.equal(km.means, initial)
    assert km.member_counts.sum().item() == 2 * 4 * 2 * 10  # still counted: statistics work when frozen


def test_frozen_centroids_stay_through_network_training_steps():
    from model.lcoan import LCoAN
    torch.manual_seed(0)
    net = LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16,
                n_hashes=2, ema_decay=1, rgb_range=1).train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    initial = None
    for _ in range(3):
        opt.zero_grad()
        net(x).abs().mean().backward()
        opt.step()
        if initial is None:
            initial = net.body[0].attention[0].kmeans.means.clone()
            conv_before = net.body[0].attention[0].conv_match[0].weight.detach().clone()
    assert torch.equal(net.body[0].attention[0].kmeans.means, initial)
    assert not torch.equal(net.body[0].attention[0].conv_match[0].weight, conv_before)  # the embedding learns


@pytest.mark.parametrize('decay', [-0.01, 1.01])
def test_ema_decay_out_of_range_is_rejected(decay):
    with pytest.raises(ValueError, match=r'ema_decay must be in \[0, 1\]'):
        lcoa.KMeansCentroids(n_rounds=1, dim=3, n_clusters=2, ema_decay=decay)


def test_member_counts_and_start_means_are_statistics_not_state():
    torch.manual_seed(0)
    km = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=0.9).train()
    assert set(km.state_dict()) == {'means', 'initted'}
    embed = torch.randn(2, 7, 4)
    fresh = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=0.9)
    torch.manual_seed(5)
    fresh.initialise(embed)
    torch.manual_seed(5)
    codes = km(embed)
    assert torch.equal(km.start_means, fresh.means)  # the initialisation, before the moving average moved them
    assert not torch.equal(km.means, fresh.means)
    expected = torch.stack([torch.bincount(codes[:, r].flatten(), minlength=3) for r in range(2)]).float()
    assert torch.equal(km.member_counts, expected)
    km.eval()
    km(embed)
    assert torch.equal(km.member_counts, expected)  # evaluation does not count
    km.reset_statistics()
    assert km.member_counts.sum() == 0 and torch.equal(km.start_means, km.means)


def test_kmeans_codes_are_argmax_cosine():
    km = lcoa.KMeansCentroids(n_rounds=2, dim=3, n_clusters=3, ema_decay=0.9).eval()
    km.means.copy_(torch.tensor([[[1., 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]]))
    km.initted.fill_(True)
    embed = torch.tensor([[[5., 1, 0], [0, -1, 3], [0.1, 0.2, 0]]])
    assert km(embed).tolist() == [[[0, 2, 1], [2, 0, 1]]]


@pytest.mark.parametrize('decay', [0.999, 0.9])
def test_ema_moves_centroids_by_expected_amount_in_training_only(decay):
    torch.manual_seed(1)
    km = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=6, ema_decay=decay)
    km.means.copy_(F.normalize(torch.randn(2, 6, 4), dim=-1))
    km.means[:, 5] = torch.tensor([0., 0, 0, 1])  # far from every sample below: stays empty
    km.initted.fill_(True)
    embed = torch.randn(2, 10, 4)
    embed[..., 3] = -embed[..., 3].abs() - 3
    before = km.means.clone()
    km.eval()
    codes_eval = km(embed)
    assert torch.equal(km.means, before)
    km.train()
    codes_train = km(embed)
    assert torch.equal(codes_train, codes_eval)  # codes use the centroids from before the update
    assert (codes_train != 5).all()
    torch.testing.assert_close(km.means, expected_ema(before, embed, decay))
    torch.testing.assert_close(km.means.norm(dim=-1), torch.ones(2, 6))
    torch.testing.assert_close(km.means[:, 5], before[:, 5])  # empty cluster keeps its centroid
    assert not torch.allclose(km.means[:, :5], before[:, :5])


def test_eval_initialisation_warns_once():
    torch.manual_seed(0)
    km = lcoa.KMeansCentroids(n_rounds=1, dim=3, n_clusters=4, ema_decay=0.9).eval()
    with pytest.warns(UserWarning, match='not initialised'):
        km(torch.randn(1, 10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        km(torch.randn(1, 10, 3))


SYNCS = {'aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero', 'aten::nonzero'}


def host_syncs(fn) -> list[str]:
    """The operators of ``fn()`` that copy a device value to the host (on a GPU, each one waits for it)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name in SYNCS]


def initialises(km: lcoa.KMeansCentroids, embed: torch.Tensor) -> bool:
    """Whether a forward pass of ``km`` (frozen centroids) on ``embed`` (re)initialises the centroids."""
    assert km.frozen
    before = km.means.clone()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        km(embed)
    return not torch.equal(km.means, before)


@pytest.mark.parametrize('training', [True, False])
def test_kmeans_forward_reads_no_device_value_once_initialised(training):
    km = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=0.9).train(training)
    embed = torch.randn(2, 10, 4)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # evaluation warns that it initialises
        assert host_syncs(lambda: km(embed))  # the first pass reads the fresh flag (and initialises)
    assert host_syncs(lambda: km(embed)) == []
    loaded = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=0.9).train(training)
    loaded.load_state_dict(km.state_dict())  # reads the loaded flag once, at loading
    assert host_syncs(lambda: loaded(embed)) == []


def test_loading_a_state_dict_sets_whether_the_centroids_are_initialised():
    embed = torch.randn(2, 10, 4)
    trained = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).eval()
    trained.means.copy_(F.normalize(torch.randn(1, 3, 4), dim=-1))
    trained.initted.fill_(True)
    untrained = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).eval()
    km = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).eval()
    for state, expected in [(untrained, True), (trained, False), (untrained, True), (trained, False)]:
        initialises(km, embed)  # whatever came before, the flag is now read and True
        km.load_state_dict(state.state_dict())
        assert bool(km.initted) != expected and initialises(km, embed) == expected
        if not expected:
            assert torch.equal(km.means, trained.means)


def test_writing_the_flag_in_place_is_seen_by_the_next_forward():
    # E.g. a trainer that restores every buffer after a skipped batch (training.step), or a benchmark
    # that marks fresh centroids initialised.
    embed = torch.randn(2, 10, 4)
    km = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).train()
    saved = [b.detach().clone() for b in km.buffers()]
    km(embed)
    assert bool(km.initted) and not initialises(km, embed)
    with torch.no_grad():
        for buffer, old in zip(km.buffers(), saved, strict=True):
            buffer.copy_(old)
    assert initialises(km, embed) and bool(km.initted)
    fresh = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).train()
    fresh(embed)
    fresh.initted.fill_(False)
    assert initialises(fresh, embed)
    marked = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).train()
    assert not marked._initialised()  # read False ...
    marked.means.copy_(F.normalize(marked.means, dim=-1))
    marked.initted.fill_(True)  # ... then marked initialised from outside
    assert not initialises(marked, embed)


def test_the_flag_follows_moves_and_copies():
    embed = torch.randn(2, 10, 4)
    km = lcoa.KMeansCentroids(n_rounds=1, dim=4, n_clusters=3, ema_decay=1).train()
    km(embed)
    twin = copy.deepcopy(km).double()
    assert not initialises(twin, embed.double())
    twin.initted = torch.tensor(False)
    assert initialises(twin, embed.double())


def test_kmeans_statistics_are_float32_under_half_input():
    torch.manual_seed(0)
    km = lcoa.KMeansCentroids(n_rounds=1, dim=3, n_clusters=4, ema_decay=0.9)
    codes = km(torch.randn(2, 10, 3).half())
    assert km.means.dtype == torch.float32 and codes.dtype == torch.long and codes.shape == (2, 1, 10)


@pytest.mark.parametrize('rounds', [1, 3])
def test_distributed_single_process_group_gives_same_centroids(tmp_path, rounds):
    embed = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(0))
    plain = lcoa.KMeansCentroids(n_rounds=rounds, dim=4, n_clusters=5, ema_decay=0.9)
    shared = lcoa.KMeansCentroids(n_rounds=rounds, dim=4, n_clusters=5, ema_decay=0.9)
    torch.manual_seed(5)
    plain(embed)
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        torch.manual_seed(5)
        shared(embed)
    finally:
        dist.destroy_process_group()
    assert torch.equal(plain.means, shared.means)


# ---------------------------------------------------------------- the LCoA module

def lcoa_module(**overrides) -> lcoa.LearnableCollaborativeAttention:
    """An LCoA module as the network holds it: default (fast) attention, channels-last."""
    config = dict(n_feats=6, reduction=2, n_clusters=3, window_size=8, n_rounds=2, ema_decay=0.9, res_scale=0.1)
    config.update(overrides)
    return lcoa.LearnableCollaborativeAttention(**config).to(memory_format=torch.channels_last)


def test_lcoa_module_output_and_pattern_reuse():
    torch.manual_seed(2)
    att = lcoa_module().eval()
    assert att.attention_impl == 'fast'
    x = torch.randn(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)
    embed = att.conv_match(x).flatten(2).transpose(1, 2)
    att.kmeans.initialise(embed)  # centroids as in a trained module; evaluation keeps them fixed
    out, pattern = att(x)
    assert out.shape == x.shape
    # The independent computation: the reference attention on the module's own embedding and values.
    values = att.conv_assembly(x).flatten(2).transpose(1, 2)
    ref_pattern = ref.build_pattern(embed, att.kmeans(embed), 8)
    expected = ref.apply_pattern(ref_pattern, values)
    torch.testing.assert_close(out, x + 0.1 * expected.transpose(1, 2).reshape(x.shape))
    other = lcoa_module().eval()
    y = torch.randn_like(x)
    reused, same = other(y, pattern)
    assert same is pattern and not bool(other.kmeans.initted)
    values_y = other.conv_assembly(y).flatten(2).transpose(1, 2)
    expected_y = ref.apply_pattern(ref_pattern, values_y).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(reused, y + 0.1 * expected_y)


def test_lcoa_module_gradcheck():
    torch.manual_seed(4)
    att = lcoa_module(n_feats=4, n_clusters=2, window_size=4, res_scale=0.5).double()
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    att(x)  # initialise the centroids; evaluation mode keeps them fixed during gradcheck
    att.eval()
    assert torch.autograd.gradcheck(lambda t: att(t)[0], (x,))


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="unknown attention implementation 'dense'; expected one of fast, reference"):
        lcoa_module(attention_impl='dense')
