"""Code that differs between torch releases: requirements.txt pins 2.13, the CUDA machines have 2.11."""

import inspect

from torch.nn.parallel import DistributedDataParallel

import model


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
