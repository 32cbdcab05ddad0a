"""The fast sparse attention (model.blocks.sparse_attention) equals the plain reference, forward and backward."""

import pytest
import torch

from model import registry
from model.blocks import lcoa
from model.blocks import sparse_attention as fast
from model.blocks import sparse_attention_reference as ref
from model.blocks.attention_interface import KEY_NORM_EPS, Pattern

# (batch, rounds, length, embed channels, value channels, window)
CASES = [
    (1, 1, 24, 4, 5, 8),  # three whole windows, no padding
    (2, 1, 30, 4, 3, 8),  # padding (30 = 3 * 8 + 6), batch 2
    (1, 1, 3, 4, 3, 8),  # fewer positions than half a window: cyclic padding
    (1, 1, 1, 2, 3, 4),  # a single position
    (1, 1, 8, 3, 2, 8),  # one window: it is its own previous and next window
    (1, 2, 16, 3, 2, 8),  # two windows (previous == next), two rounds
    (2, 3, 19, 5, 4, 6),  # three rounds, padding, batch 2
    (3, 2, 50, 6, 7, 7),  # several windows, rounds and batch items at once
    # Matrices big enough for the batched BLAS paths (tiny ones take a naive kernel).
    (2, 1, 150, 16, 12, 32),
    (1, 2, 100, 8, 20, 48),
]
TOL = 1e-5


def make_inputs(n, rounds, length, c, cv, *, n_values=3, channels_first=False, seed=0, dtype=torch.float32):
    """Embeddings, cluster codes with many ties, and ``n_values`` value tensors (CoA)."""
    g = torch.Generator().manual_seed(seed)
    embed = (2 * torch.randn(n, length, c, generator=g)).to(dtype)
    codes = torch.randint(0, 4, (n, rounds, length), generator=g)
    if channels_first:  # the transposed view of a convolution's (N, C, H*W) output
        values = [torch.randn(n, cv, length, generator=g).to(dtype).transpose(1, 2) for _ in range(n_values)]
    else:
        values = [torch.randn(n, length, cv, generator=g).to(dtype) for _ in range(n_values)]
    return embed, codes, values


def run(impl, embed, codes, values, window, *, grad_embed=True, grad_values=True):
    """Outputs of one pattern applied to every value tensor, and the gradients of a weighted sum of them."""
    embed = embed.detach().requires_grad_(grad_embed)
    values = [v.detach().requires_grad_(grad_values) for v in values]
    pattern = impl.build_pattern(embed, codes, window)
    outs = [impl.apply_pattern(pattern, v) for v in values]
    inputs = ([embed] if grad_embed else []) + (values if grad_values else [])
    if not inputs:
        return outs, []
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g).to(o)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, inputs)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize('case', CASES, ids=[f'N{c[0]}R{c[1]}L{c[2]}C{c[3]}V{c[4]}w{c[5]}' for c in CASES])
def test_fast_matches_reference_forward_and_gradients(case):
    n, rounds, length, c, cv, window = case
    embed, codes, values = make_inputs(n, rounds, length, c, cv)
    fast_out, fast_grads = run(fast, embed, codes, values, window)
    ref_out, ref_grads = run(ref, embed, codes, values, window)
    for out in fast_out:
        assert out.shape == (n, length, cv) and out.dtype == torch.float32
    # Each output is compared after all three applications: reused scratch buffers corrupt nothing.
    assert max_diff(fast_out, ref_out) <= TOL
    assert len(fast_grads) == 4
    assert max_diff(fast_grads, ref_grads) <= TOL
    assert all(g.abs().max() > 0 for g in fast_grads)


@pytest.mark.parametrize('grad_embed,grad_values', [(True, False), (False, True), (False, False)])
def test_gradients_for_only_some_inputs(grad_embed, grad_values):
    embed, codes, values = make_inputs(2, 2, 21, 4, 3, n_values=2)
    fast_out, fast_grads = run(fast, embed, codes, values, 8, grad_embed=grad_embed, grad_values=grad_values)
    ref_out, ref_grads = run(ref, embed, codes, values, 8, grad_embed=grad_embed, grad_values=grad_values)
    assert max_diff(fast_out, ref_out) <= TOL
    assert len(fast_grads) == len(ref_grads)
    if fast_grads:
        assert max_diff(fast_grads, ref_grads) <= TOL


@pytest.mark.parametrize('rounds,length,window', [(1, 5, 4), (2, 7, 3), (1, 2, 4)])
def test_gradcheck_float64(rounds, length, window):
    embed, codes, values = make_inputs(2, rounds, length, 3, 2, n_values=2, dtype=torch.float64)
    embed.requires_grad_()
    for v in values:
        v.requires_grad_()

    def attend(e, v0, v1):
        pattern = fast.build_pattern(e, codes, window)
        return fast.apply_pattern(pattern, v0), fast.apply_pattern(pattern, v1)

    assert torch.autograd.gradcheck(attend, (embed, *values))


def test_float32_gradients_equal_the_reference_to_1e5_relative_at_the_paper_size():
    # A training step's attention: batch 2 of 48x48 patches, 128 channels, window 384 (six windows),
    # several windows per cluster. Scores of a few units keep the softmax well conditioned, so the
    # comparison measures float32 rounding; with scores in the tens, two float32 summation orders
    # differ by far more than either differs from float64.
    embed, codes, values = make_inputs(2, 1, 48 * 48, 128, 128, n_values=2)
    embed = embed / 10
    codes = torch.randint(0, 16, codes.shape, generator=torch.Generator().manual_seed(2))
    fast_out, fast_grads = run(fast, embed, codes, values, 384)
    ref_out, ref_grads = run(ref, embed, codes, values, 384)
    assert len(fast_grads) == 3
    for got, expected in zip([*fast_out, *fast_grads], [*ref_out, *ref_grads], strict=True):
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_float64_stays_float64_and_matches_reference():
    embed, codes, values = make_inputs(1, 2, 13, 3, 2, n_values=1, dtype=torch.float64)
    pattern = fast.build_pattern(embed, codes, 4)
    assert pattern.weights.dtype == torch.float64
    out = fast.apply_pattern(pattern, values[0])
    assert out.dtype == torch.float64
    expected = ref.apply_pattern(ref.build_pattern(embed, codes, 4), values[0])
    assert (out - expected).abs().max() < 1e-12


@pytest.mark.parametrize('rounds', [1, 2])
def test_any_value_layout_gives_the_same_contiguous_output_and_gradients(rounds):
    # The network feeds row-major (channels-last) values; other strides take the same code, gathering strided rows.
    embed, codes, (rows,) = make_inputs(2, rounds, 20, 4, 3, n_values=1)
    layouts = {'rows': rows, 'channels_first': rows.transpose(1, 2).contiguous().transpose(1, 2),
               'strided': torch.stack([rows, -rows], dim=-1)[..., 0]}
    expected, expected_grads = run(ref, embed, codes, [rows], 8)
    for name, values in layouts.items():
        assert torch.equal(values, rows)
        assert values.is_contiguous() == (name == 'rows')
        out, grads = run(fast, embed, codes, [values], 8)
        assert out[0].is_contiguous(), name
        assert max_diff(out, expected) <= TOL, name
        assert max_diff(grads, expected_grads) <= TOL, name


def test_output_keeps_the_dtype_of_the_values():
    embed, codes, (rows,) = make_inputs(2, 1, 20, 4, 3, n_values=1)
    pattern = fast.build_pattern(embed, codes, 8)
    half = fast.apply_pattern(pattern, rows.half())
    assert half.dtype == torch.float16
    expected = ref.apply_pattern(ref.build_pattern(embed, codes, 8), rows.half())
    assert (half.float() - expected.float()).abs().max() < 1e-2


def test_output_allows_in_place_ops_and_gradients_follow():
    embed, codes, values = make_inputs(1, 1, 20, 4, 3, n_values=1)
    grads = {}
    for impl in (fast, ref):
        e, v = embed.clone().requires_grad_(), values[0].clone().requires_grad_()
        out = impl.apply_pattern(impl.build_pattern(e, codes, 8), v)
        out.mul_(torch.arange(3.0))
        grads[impl] = torch.autograd.grad(out.square().sum(), [e, v])
    assert max_diff(grads[fast], grads[ref]) <= TOL


def test_in_place_softmax_equals_softmax_on_long_rows():
    # The CPU kernel is row-wise, so aliasing input and output is safe; checked at the paper's 3 * 384 keys.
    x = 3 * torch.randn(4, 5, 1152)
    expected = torch.softmax(x, dim=-1)
    fast._softmax_(x)
    assert torch.equal(x, expected)


def test_weights_of_one_window_are_a_softmax_over_its_keys():
    # One cluster and one window: every query sees all keys three times ([self | prev | next]).
    embed, _, (values,) = make_inputs(1, 1, 6, 3, 2, n_values=1)
    codes = torch.zeros(1, 1, 6, dtype=torch.long)
    pattern = fast.build_pattern(embed, codes, 6)
    keys = torch.nn.functional.normalize(embed, dim=-1, eps=KEY_NORM_EPS)
    scores = embed @ keys.transpose(1, 2)
    expected = torch.softmax(scores.repeat(1, 1, 3), dim=-1)
    assert torch.allclose(pattern.weights[0, 0], expected[0], atol=1e-6)
    assert torch.allclose(fast.apply_pattern(pattern, values), torch.softmax(scores, dim=-1) @ values, atol=1e-5)


def test_autocast_bfloat16_keeps_softmax_in_float32_and_stays_close():
    embed, codes, values = make_inputs(2, 2, 40, 8, 6, n_values=2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pattern = fast.build_pattern(embed, codes, 16)
        outs = [fast.apply_pattern(pattern, v) for v in values]
    assert pattern.weights.dtype == torch.float32
    assert pattern.round_probs.dtype == torch.float32
    ref_pattern = ref.build_pattern(embed, codes, 16)
    for out, v in zip(outs, values, strict=True):
        expected = ref.apply_pattern(ref_pattern, v)
        assert out.shape == expected.shape
        assert (out.float() - expected).abs().max() < 0.1 * expected.abs().max()


def test_autocast_bfloat16_backward_runs_and_is_close():
    embed, codes, values = make_inputs(1, 1, 30, 4, 3, n_values=1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, fast_grads = run(fast, embed, codes, values, 8)
    _, ref_grads = run(ref, embed, codes, values, 8)
    for got, want in zip(fast_grads, ref_grads, strict=True):
        assert got.dtype == torch.float32
        assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_mismatched_shapes_are_rejected():
    embed, codes, (values,) = make_inputs(1, 1, 10, 3, 2, n_values=1)
    with pytest.raises(ValueError, match='codes must be'):
        fast.build_pattern(embed, codes[:, :, :9], 4)
    with pytest.raises(ValueError, match='window_size'):
        fast.build_pattern(embed, codes, 0)
    pattern = fast.build_pattern(embed, codes, 4)
    with pytest.raises(ValueError, match='values must be'):
        fast.apply_pattern(pattern, values[:, :9])


def test_keys_of_tiny_norm_are_normalised_with_the_same_epsilon():
    # Rows whose norm is below the epsilon are divided by the epsilon, not by their norm: both
    # implementations (forward and the fast one's own backward) must use the one shared constant.
    embed, codes, values = make_inputs(1, 2, 20, 4, 3, n_values=1)
    embed[0, :6] *= 1e-6 / embed[0, :6].norm(dim=-1, keepdim=True)
    embed[0, 6] *= 3 * KEY_NORM_EPS / embed[0, 6].norm()
    fast_out, fast_grads = run(fast, embed, codes, values, 8)
    ref_out, ref_grads = run(ref, embed, codes, values, 8)
    assert max_diff(fast_out, ref_out) <= TOL
    for got, want in zip(fast_grads, ref_grads, strict=True):  # dividing by the epsilon makes them large
        assert (got - want).abs().max() <= TOL * want.abs().max()


def test_both_implementations_follow_the_shared_interface():
    flag = next(f for f in registry.get('LCoAN').flags if f.name == 'attention_impl')
    assert tuple(lcoa.IMPLEMENTATIONS) == flag.choices
    embed, codes, (values,) = make_inputs(1, 2, 20, 4, 3, n_values=1)
    for name in flag.choices:
        impl = lcoa.attention_module(name)
        pattern = impl.build_pattern(embed, codes, 8)
        assert isinstance(pattern, Pattern), name
        assert pattern.weights.dtype == torch.float32
        assert impl.apply_pattern(pattern, values).shape == values.shape
    assert not isinstance(object(), Pattern)


def test_lcoa_modules_with_fast_kernels_match_reference_kernels():
    def chain(impl):
        torch.manual_seed(3)
        blocks = [lcoa.LearnableCollaborativeAttention(n_feats=6, reduction=2, n_clusters=3, window_size=8,
                                                       n_rounds=2, ema_decay=0.9, res_scale=0.1, attention_impl=impl)
                  .to(memory_format=torch.channels_last) for _ in range(3)]
        # Channels-last features, as in the network.
        h, pattern = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last), None
        for block in blocks:  # the first block builds the pattern, all of them apply it (CoA)
            h, pattern = block(h, pattern)
        params = [p for block in blocks for p in block.parameters()]
        return h.detach(), torch.autograd.grad(h.square().sum(), params, allow_unused=True)

    fast_out, fast_grads = chain('fast')
    ref_out, ref_grads = chain('reference')
    assert (fast_out - ref_out).abs().max() <= TOL
    assert sum(g is not None for g in fast_grads) == 8  # conv_match of block 0, conv_assembly of all
    assert max_diff([g for g in fast_grads if g is not None], [g for g in ref_grads if g is not None]) <= TOL


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('case', CASES[:3] + CASES[-2:])
def test_cuda_matches_reference(case):
    n, rounds, length, c, cv, window = case
    embed, codes, values = make_inputs(n, rounds, length, c, cv)
    embed, codes, values = embed.cuda(), codes.cuda(), [v.cuda() for v in values]
    fast_out, fast_grads = run(fast, embed, codes, values, window)
    ref_out, ref_grads = run(ref, embed, codes, values, window)
    assert max_diff(fast_out, ref_out) <= TOL
    assert max_diff(fast_grads, ref_grads) <= TOL


@pytest.mark.parametrize('length,window', [(50, 7), (16, 8), (8, 8)], ids=['many_windows', 'two_windows', 'one_window'])
def test_weights_are_the_references_with_key_blocks_in_prev_self_next_order(length, window):
    embed, codes, _ = make_inputs(2, 2, length, 5, 3, n_values=0)
    fast_weights = fast.build_pattern(embed, codes, window).weights
    ref_weights = ref.build_pattern(embed, codes, window).weights  # (N, R, W, S, 3S): [self | prev | next]
    own, prev, nxt = ref_weights.flatten(0, 1).split(window, dim=-1)
    assert fast_weights.shape == (4, -(-length // window), window, 3 * window)
    assert (fast_weights - torch.cat([prev, own, nxt], dim=-1)).abs().max() <= 1e-6


def test_neighbour_windows_are_overlapping_views_of_one_extended_sequence():
    embed, codes, _ = make_inputs(1, 1, 40, 3, 2, n_values=0)
    plan = fast.build_pattern(embed, codes, 8).plan
    ext = torch.arange(float(plan.extended)).unsqueeze(1).expand(-1, 2).contiguous()  # row j holds j
    triples = plan.triples(ext)
    assert triples.shape == (5, 24, 2) and triples.data_ptr() == ext.data_ptr()  # a view, no copy
    # Window k's keys: extended windows k, k + 1, k + 2 = sorted windows k - 1, k, k + 1 (cyclic).
    assert torch.equal(triples[:, :, 0], torch.arange(5).view(5, 1) * 8 + torch.arange(24))
    middle = plan.gather_ext[0, 8:48]  # the padded sorted sequence, 40 pixels
    assert torch.equal(middle, plan.sorted_rows[0])
    assert torch.equal(plan.gather_ext[0, :8], middle[-8:])
    assert torch.equal(plan.gather_ext[0, -8:], middle[:8])


@pytest.mark.parametrize('rounds,length,window', [(1, 40, 8), (2, 19, 6), (3, 5, 8)])
def test_several_slots_gather_the_rows_of_each_slots_overlapping_view(rounds, length, window):
    # One slot reads its windows' neighbours through an overlapping view; a chunk of several slots gathers
    # them tripled (one batch stride for the product). Both hold the same rows, window after window.
    embed, codes, _ = make_inputs(3, rounds, length, 3, 2, n_values=0)
    plan = fast.build_pattern(embed, codes, window).plan
    pixels = torch.arange(float(3 * length)).unsqueeze(1).expand(-1, 2).contiguous()  # row i holds i
    buf = torch.empty(plan.slots * 3 * plan.padded, 2)
    tripled = plan.take_triples(pixels, 0, plan.slots, buf).clone()
    assert tripled.shape == (plan.slots * plan.n_windows, 3 * window, 2)
    for b in range(plan.slots):
        one = plan.take_triples(pixels, b, b + 1, buf)
        assert one.data_ptr() == buf.data_ptr() and one.shape == (plan.n_windows, 3 * window, 2)
        assert torch.equal(one, tripled[b * plan.n_windows:(b + 1) * plan.n_windows])
        item = b // rounds
        assert torch.equal(one[:, window:2 * window, 0].flatten(), plan.sorted_rows[b].float())
        assert torch.equal(plan.sorted_rows[b] // length, torch.full_like(plan.sorted_rows[b], item))


def test_chunks_are_whole_items_within_the_scratch_budget(monkeypatch):
    embed, codes, _ = make_inputs(5, 2, 30, 4, 3, n_values=0)
    plan = fast.build_pattern(embed, codes, 8).plan
    assert plan.chunks(1000) == [(0, 10)]
    monkeypatch.setattr(fast, 'SCRATCH_BYTES', 2 * 2 * 1000 + 999)  # two items of two rounds of 1000 bytes
    assert plan.chunks(1000) == [(0, 4), (4, 8), (8, 10)]
    assert plan.chunks(10**6) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]  # at least one item


@pytest.mark.parametrize('items', [1, 2, 3])
@pytest.mark.parametrize('case', [(3, 1, 30, 4, 3, 8), (3, 2, 50, 6, 7, 7), (5, 1, 24, 4, 5, 8), (2, 3, 3, 4, 3, 8)],
                         ids=['padding', 'rounds', 'no_padding', 'cyclic_padding'])
def test_chunks_of_slots_give_the_same_results(monkeypatch, case, items):
    # Every stage cuts the slots into chunks of whole items (the last one shorter): any chunking gives the
    # one-chunk results, which equal the reference.
    n, rounds, length, c, cv, window = case
    embed, codes, values = make_inputs(n, rounds, length, c, cv)
    whole_out, whole_grads = run(fast, embed, codes, values, window)
    ref_out, ref_grads = run(ref, embed, codes, values, window)
    used = []

    def chunks(plan, bytes_per_slot):
        step = items * plan.n_rounds
        used.append([(b0, min(b0 + step, plan.slots)) for b0 in range(0, plan.slots, step)])
        return used[-1]

    monkeypatch.setattr(fast._Plan, 'chunks', chunks)
    out, grads = run(fast, embed, codes, values, window)
    assert len(used) == 1 + 3 + 3 + 1 and all(len(u) == -(-n // items) for u in used)  # build, 3 x apply, backward
    assert max_diff(out, whole_out) <= TOL and max_diff(grads, whole_grads) <= TOL
    assert max_diff(out, ref_out) <= TOL and max_diff(grads, ref_grads) <= TOL


def test_chunked_bfloat16_autocast_matches_one_chunk(monkeypatch):
    embed, codes, values = make_inputs(3, 2, 40, 8, 6, n_values=2)
    results = []
    for budget in (fast.SCRATCH_BYTES, 1):
        monkeypatch.setattr(fast, 'SCRATCH_BYTES', budget)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            results.append(run(fast, embed, codes, values, 16))
    (one_out, one_grads), (chunked_out, chunked_grads) = results
    assert all(torch.equal(a, b) for a, b in zip(one_out, chunked_out, strict=True))
    for got, want in zip(chunked_grads, one_grads, strict=True):
        assert (got - want).abs().max() <= 1e-2 * want.abs().max()
