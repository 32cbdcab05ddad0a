"""The wrapper around the super-resolution network.

:class:`Model` keeps everything that is not the network itself out of it: device placement,
loading ``--pre_train``, and the test-time extras (``--precision`` autocast, ``--self_ensemble``,
``--chop`` tiled inference, all from :mod:`model.inference`). In training mode it is the plain network.
"""

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import distributed, precision
from model import checkpoint, compiling, inference, registry


class Model(nn.Module):
    """Builds the architecture ``args.model`` (``model.registry``) and runs it for training and testing.

    Args:
        args: parsed options (``option.parse_args``): ``model, device, scale, precision, chop,
            chop_size, chop_overlap, chop_batch, self_ensemble, pre_train, rgb_range, compile``, and
            ``checkpoint``, the ``--pre_train`` file as ``option.parse_main_args`` read it (absent or None: read
            here).
        ckp: the run's checkpoint object; only ``ckp.write_log(msg)`` is used.
    """

    def __init__(self, args, ckp) -> None:
        super().__init__()
        self.ckp = ckp
        self.scale = args.scale[0]
        self.device = torch.device(args.device)
        self.precision = args.precision
        self.self_ensemble = args.self_ensemble
        self.chop = args.chop
        self.chop_size = args.chop_size
        self.chop_overlap = args.chop_overlap
        self.chop_batch = args.chop_batch
        precision.check(self.precision, self.device)

        self.model = registry.get(args.model).make_model(args).to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.ckp.write_log(f'Made {args.model} with {n_params:,} parameters on {self.device}.')
        if args.pre_train:
            self.load_pretrained(args)
        if args.compile:
            # In place: checkpoints of a compiled run are the plain network's.
            compiling.compile_network(self.model, args.compile, self.device)
            self.ckp.write_log(f'torch.compile (backend {args.compile}): the first batches of every input '
                               'shape are slow while it compiles.')
        if distributed.is_initialized():
            # The k-means centroids are kept equal on every rank by the model itself, from statistics
            # all-reduced over the ranks; DDP's buffer broadcast from rank 0 would overwrite them with
            # rank 0's alone, so the per-forward sync is off.
            self.model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                **ddp_without_buffer_sync())

    def log(self, msg: str) -> None:
        self.ckp.write_log(msg)

    def get_model(self) -> nn.Module:
        """The bare network, also when it has been wrapped in (Distributed)DataParallel."""
        return getattr(self.model, 'module', self.model)

    def state_dict(self, *args, **kwargs):
        """The bare network's state_dict: keys carry neither ``model.`` nor ``module.``."""
        return self.get_model().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.get_model().load_state_dict(state_dict, strict=strict, assign=assign)

    def load_pretrained(self, args) -> list[str]:
        """Load ``--pre_train`` (a fresh upsampler for another scale: see :mod:`model.checkpoint.loading`): the
        weights parsing read (``args.checkpoint``), else the file, read now. Returns the checkpoint keys not
        loaded."""
        ckpt = getattr(args, 'checkpoint', None)
        if ckpt is None or ckpt.path != Path(args.pre_train):
            ckpt = checkpoint.read(args.pre_train, what='--pre_train', given={'rgb_range': args.rgb_range},
                                   recognise=False)
        return ckpt.load_into(self.get_model(), log=self.log)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``lr`` (N, C, h, w) by ``--scale``.

        Training mode: the plain network (through its DDP wrapper, if any). Eval mode: the bare
        network for inference (:func:`inference.make_forward`: no gradients, ``--precision``
        autocast, ``--self_ensemble``), in ``--chop`` tiles of ``chop_size`` LR pixels overlapping by
        ``chop_overlap``, ``chop_batch`` tiles a call; the result is float32.
        """
        if self.training:
            return self.model(lr)

        lr = lr.to(self.device)
        # Eval runs the bare network: a DDP forward would start a buffer broadcast that ranks testing
        # different numbers of images would never all join.
        forward = inference.make_forward(self.get_model(), precision=self.precision, ensemble=self.self_ensemble,
                                         device_type=self.device.type)
        if not self.chop:
            return forward(lr)
        h, w = lr.shape[-2:]
        return inference.tiled_forward(
            forward, lr, scale=self.scale, rows=inference.overlap_spans(h, self.chop_size, self.chop_overlap),
            cols=inference.overlap_spans(w, self.chop_size, self.chop_overlap), batch=self.chop_batch)


def ddp_without_buffer_sync() -> dict:
    """The DistributedDataParallel keyword that turns off its buffer broadcast at every forward.

    torch 2.13 added ``forward_sync_buffers`` and deprecated ``broadcast_buffers``; earlier releases (the
    CUDA machines' 2.11) have only the latter, which also skips the broadcast when DDP is built. That
    one changes nothing here: every rank builds the network from the same seed and loads the same
    checkpoint, so the buffers already agree.
    """
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters:
        return {'forward_sync_buffers': False}
    return {'broadcast_buffers': False}
