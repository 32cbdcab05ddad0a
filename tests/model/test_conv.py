"""model.conv.Conv2d: nn.Conv2d with a faster CPU weight gradient; same parameters, values and gradients."""

import pytest
import torch
from torch import nn

from model import conv, lcoan


def pair(c_in, c_out, k, *, bias=True, dtype=torch.float32, channels_last=True, seed=0, **kwargs):
    """A model.conv.Conv2d and an nn.Conv2d with the same weights."""
    torch.manual_seed(seed)
    fast = conv.Conv2d(c_in, c_out, k, padding=kwargs.pop('padding', k // 2), bias=bias, **kwargs).to(dtype)
    plain = nn.Conv2d(c_in, c_out, k, padding=fast.padding, bias=bias, stride=fast.stride, dilation=fast.dilation,
                      groups=fast.groups).to(dtype)
    plain.load_state_dict(fast.state_dict(), strict=True)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
        plain.to(memory_format=torch.channels_last)
    return fast, plain


def forward_backward(module, x, grad_out_seed=1):
    x = x.detach().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=y.dtype)
    y.backward(g)
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return y.detach(), grads, y.grad_fn


# (batch, in, out, kernel, height, width)
SHAPES = [(2, 16, 16, 3, 7, 9), (1, 16, 48, 3, 5, 4), (3, 24, 16, 3, 6, 6), (1, 16, 16, 5, 8, 6), (2, 32, 16, 3, 1, 1)]


@pytest.mark.parametrize('channels_last', [True, False], ids=['channels_last', 'contiguous'])
@pytest.mark.parametrize('shape', SHAPES, ids=[f'N{s[0]}_{s[1]}to{s[2]}_k{s[3]}_{s[4]}x{s[5]}' for s in SHAPES])
def test_same_outputs_and_gradients_as_nn_conv2d(shape, channels_last):
    n, c_in, c_out, k, h, w = shape
    fast, plain = pair(c_in, c_out, k, dtype=torch.float64, channels_last=channels_last)
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y_fast, g_fast, fn = forward_backward(fast, x)
    y_plain, g_plain, _ = forward_backward(plain, x)
    assert type(fn).__name__ == '_SameConv2dBackward'  # the fast weight gradient really ran
    assert torch.equal(y_fast, y_plain)
    assert len(g_fast) == 3
    for a, b in zip(g_fast, g_plain, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The weight gradient keeps the parameter's memory layout (no copy in the optimiser).
    weight_cl = fast.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.weight.grad.is_contiguous(memory_format=torch.channels_last) == weight_cl


def test_float32_gradients_match_within_rounding():
    fast, plain = pair(64, 64, 3)
    x = torch.randn(2, 64, 12, 10).contiguous(memory_format=torch.channels_last)
    _, g_fast, _ = forward_backward(fast, x)
    _, g_plain, _ = forward_backward(plain, x)
    for a, b in zip(g_fast, g_plain, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_gradcheck(monkeypatch):
    monkeypatch.setattr(conv, 'MIN_CHANNELS', 1)  # tiny channels keep the numerical Jacobian cheap
    fast, _ = pair(2, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert fast._fast_weight_grad_applies(x)
    assert torch.autograd.gradcheck(lambda inp, w, b: conv._SameConv2d.apply(inp, w, b),
                                    (x, fast.weight, fast.bias))


def test_no_bias_and_frozen_input():
    fast, plain = pair(16, 16, 3, bias=False, dtype=torch.float64)
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64)  # no gradient wanted for the input
    fast(x).sum().backward()
    plain(x).sum().backward()
    assert fast.bias is None
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kernel', [1, 3, 5])
def test_weight_gradient_function_equals_aten(kernel):
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, dtype=torch.float64)
    grad_out = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    expected = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [kernel // 2] * 2, [1, 1],
                                                   False, [0, 0], 1, [False, True, False])[1]
    got = conv.conv_weight_grad(grad_out, x, kernel)
    assert got.shape == (4, 5, kernel, kernel)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('case', ['stride', 'groups', 'dilation', 'padding', 'thin', 'pointwise', 'frozen', 'no_grad',
                                  'switch_off', 'float16'])
def test_other_cases_are_plain_nn_conv2d(case, monkeypatch):
    kwargs, dtype, kernel = {}, torch.float32, 3
    c_in, c_out = 16, 16
    if case == 'pointwise':
        kernel = 1  # oneDNN's 1x1 weight gradient is as fast
    elif case == 'stride':
        kwargs['stride'] = 2
    elif case == 'groups':
        kwargs['groups'] = 2
    elif case == 'dilation':
        kwargs['dilation'] = 2
    elif case == 'padding':
        kwargs['padding'] = 0
    elif case == 'thin':
        c_in = 3  # RGB head: thin GEMMs are slower than oneDNN
    elif case == 'switch_off':
        monkeypatch.setattr(conv, 'FAST_WEIGHT_GRAD', False)
    elif case == 'float16':
        dtype = torch.float16
    fast, plain = pair(c_in, c_out, kernel, dtype=dtype, **kwargs)
    if case == 'frozen':
        fast.requires_grad_(False)
        plain.requires_grad_(False)
    x = torch.randn(1, c_in, 8, 8, dtype=dtype, requires_grad=True)
    if case == 'no_grad':
        with torch.no_grad():
            assert not fast._fast_weight_grad_applies(x)
            assert torch.equal(fast(x), plain(x))
        return
    assert not fast._fast_weight_grad_applies(x)
    y = fast(x)
    assert type(y.grad_fn).__name__ != '_SameConv2dBackward'
    assert torch.equal(y, plain(x))


def test_state_dict_is_that_of_nn_conv2d():
    fast, plain = pair(16, 8, 3)
    assert list(fast.state_dict()) == list(plain.state_dict()) == ['weight', 'bias']
    plain.load_state_dict(fast.state_dict(), strict=True)
    assert isinstance(fast, nn.Conv2d)


def test_network_training_gradients_equal_with_and_without_fast_weight_gradient(monkeypatch):
    torch.manual_seed(0)
    net = lcoan.LCoAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=16, reduction=2, n_clusters=4, window_size=16,
                      n_hashes=1, ema_decay=0.9, rgb_range=1).double().train()
    body_convs = [m for m in net.modules() if isinstance(m, conv.Conv2d) and m.in_channels >= 16]
    assert len(body_convs) >= 8
    x = torch.rand(2, 3, 8, 7, dtype=torch.float64)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def grads():
        net.load_state_dict(state, strict=True)  # the k-means moving average moved the centroids
        torch.manual_seed(1)  # the same k-means initialisation
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}

    with_fast = grads()
    monkeypatch.setattr(conv, 'FAST_WEIGHT_GRAD', False)
    without = grads()
    assert with_fast.keys() == without.keys() and len(with_fast) > 10
    for name, g in with_fast.items():
        torch.testing.assert_close(g, without[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize('chunk_rows', [1, 50, 10**6], ids=['image_by_image', 'two_images', 'whole_batch'])
def test_weight_gradient_in_chunks_of_images(chunk_rows, monkeypatch):
    monkeypatch.setattr(conv, 'CHUNK_ROWS', chunk_rows)  # 5 x 6 padded pixels per image: 50 rows = 1 image
    fast, plain = pair(16, 16, 3, dtype=torch.float64)
    x = torch.randn(5, 16, 3, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    _, g_fast, _ = forward_backward(fast, x)
    _, g_plain, _ = forward_backward(plain, x)
    for a, b in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_switch_is_process_wide_and_read_at_every_forward(monkeypatch):
    # Flipped after the layers are built, it still decides their next forward (unlike a default
    # argument bound at import time); the gradients agree either way.
    fast, plain = pair(16, 16, 3, dtype=torch.float64)
    other, _ = pair(16, 16, 3, dtype=torch.float64, seed=1)
    x = torch.randn(1, 16, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    _, g_on, fn_on = forward_backward(fast, x)
    assert type(fn_on).__name__ == '_SameConv2dBackward'
    monkeypatch.setattr(conv, 'FAST_WEIGHT_GRAD', False)
    fast.zero_grad(set_to_none=True)
    _, g_off, fn_off = forward_backward(fast, x)
    assert type(fn_off).__name__ == type(plain(x).grad_fn).__name__ != '_SameConv2dBackward'
    assert not other._fast_weight_grad_applies(x.requires_grad_())  # every layer in the process
    for a, b in zip(g_on, g_off, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(conv, 'FAST_WEIGHT_GRAD', True)
    assert type(fast(x).grad_fn).__name__ == '_SameConv2dBackward'


def test_double_backward_needs_the_switch_off(monkeypatch):
    fast, _ = pair(16, 16, 3, dtype=torch.float64)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fast(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable'):
        g.sum().backward()
    monkeypatch.setattr(conv, 'FAST_WEIGHT_GRAD', False)
    (g,) = torch.autograd.grad(fast(x).square().sum(), x, create_graph=True)
    g.sum().backward()
    assert fast.weight.grad is not None and fast.weight.grad.abs().sum() > 0
