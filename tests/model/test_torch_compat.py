"""Code that depends on the torch release (requirements.txt pins 2.13, the CUDA machines have 2.11)
or on torch.compile."""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import model
import option
from model import compiling, lcoan
from model.blocks import lcoa


def test_the_ddp_keyword_is_one_this_torch_has():
    (name,) = model.ddp_without_buffer_sync()
    assert name in inspect.signature(DistributedDataParallel).parameters


def test_torch_before_2_13_gets_broadcast_buffers(monkeypatch):
    class DDPBefore213:  # torch 2.11's keywords, without forward_sync_buffers
        def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                     init_sync=True, process_group=None):
            pass

    monkeypatch.setattr(model, 'DistributedDataParallel', DDPBefore213)
    assert model.ddp_without_buffer_sync() == {'broadcast_buffers': False}


def test_torch_2_13_gets_forward_sync_buffers(monkeypatch):
    class DDP213:  # broadcast_buffers deprecated: it warns when given
        def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
            pass

    monkeypatch.setattr(model, 'DistributedDataParallel', DDP213)
    assert model.ddp_without_buffer_sync() == {'forward_sync_buffers': False}


def _small_lcoan_args():
    return option.parse_args(['--n_resgroups', '2', '--n_resblocks', '1', '--n_feats', '16', '--reduction', '2',
                              '--n_clusters', '8', '--window_size', '32', '--rgb_range', '1', '--scale', '2', '--cpu'])


@pytest.mark.slow
def test_a_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    net = lcoan.make_model(_small_lcoan_args()).train()
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    net(lr)  # initialises the centroids from this batch, outside the compiled graph
    twin = copy.deepcopy(net)

    def train_step(run, params):
        loss = F.l1_loss(run(lr), hr)
        loss.backward()
        return loss.detach(), [p.grad for p in params if p.requires_grad]

    torch._dynamo.reset()
    compiling.fence()
    # backend='eager': dynamo's tracing of forward and backward (where the custom kernels' autograd
    # functions are traced), without generating code.
    compiled_loss, compiled_grads = train_step(torch.compile(twin, backend='eager'), twin.parameters())
    eager_loss, eager_grads = train_step(net, net.parameters())
    assert all(g is not None for g in eager_grads) and len(eager_grads) == len(compiled_grads)
    assert torch.allclose(compiled_loss, eager_loss, rtol=0, atol=1e-6)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def _graph_breaks(fn, *args) -> list[str]:
    torch._dynamo.reset()
    compiling.fence()
    explained = torch._dynamo.explain(fn)(*args)
    return [reason.reason for reason in explained.break_reasons]


@pytest.mark.parametrize('training', [True, False])
def test_initialised_kmeans_compiles_without_a_graph_break(training):
    km = lcoa.KMeansCentroids(n_rounds=2, dim=4, n_clusters=3, ema_decay=0.9).train(training)
    embed = torch.randn(2, 10, 4)
    km.train()(embed)  # initialises the centroids
    km.train(training)
    assert _graph_breaks(km, embed) == []


@pytest.mark.slow
def test_the_network_forward_compiles_to_one_graph():
    # The k-means flag is not read from the tensor, and the attention's autograd functions (forward and
    # backward, which dynamo traces with the forward) take no strided out= and no duplicated input.
    torch.manual_seed(0)
    net = lcoan.make_model(_small_lcoan_args()).train()
    lr = torch.rand(2, 3, 16, 16)
    net(lr)
    assert _graph_breaks(net, lr) == []
