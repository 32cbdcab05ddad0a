"""Our architectures in spandrel's registry, so that tools built on spandrel (chaiNNer, ComfyUI) load our weights.

    import sys; sys.path.insert(0, 'src')
    from model import spandrel_support
    spandrel_support.register()                       # once, before loading
    model = spandrel.ModelLoader().load_from_file('LCoAN_x4.safetensors')
    sr = model(lr)                                    # (1, 3, H, W) in [0, 1] -> (1, 3, sH, sW) in [0, 1]

Every architecture of :mod:`model.registry` is added, detected by this code's own detection (the
layout rebuilt and compared key by key, so it claims no other architecture's file) and placed
before spandrel's built-in ones. spandrel's RCAN keeps its own entry: our RCAN files without the
placeholder ``a`` (``convert.py --layout spandrel``) load there; with it, they load through ours.
BasicSR-layout files of EDSR and RCAN load too (renamed as in :mod:`model.checkpoint.layouts`).

spandrel is optional and imported only by :func:`register`. It needs torchvision, which does not
import beside the CPU build of torch 2.13 that ``requirements.txt`` pins (its compiled operators
need CUDA libraries); ``tests/model/test_spandrel_support.py`` runs where both import (a separate
environment with torch 2.14.1, torchvision 0.29.1 and spandrel 0.4.2; docs/inference.md).
"""

from typing import Any

from torch import Tensor, nn

from model import registry
from model.checkpoint import detect
from model.spec import UnknownCheckpoint

# Added to an architecture's name when spandrel already has an architecture of that name.
ID_SUFFIX = '-ours'


def _recognised(state: dict) -> tuple[dict, detect.Detected] | None:
    try:
        return detect.recognise(dict(state))
    except UnknownCheckpoint:
        return None


def _network(state: dict) -> tuple[nn.Module, dict, detect.Detected]:
    """Our network for ``state`` (not yet loaded), the state in our layout with its placeholders, and what was read."""
    ours, found = detect.recognise(dict(state))
    net = registry.build(found.model, **found.options, **found.assumed)
    own = net.state_dict()
    ours = {k: ours[k] if k in ours else own[k] for k in own}  # placeholders the file may lack
    return net, ours, found


def _call(net: nn.Module, image: Tensor) -> Tensor:
    """spandrel's convention, [0, 1] in and out, on our network's [0, rgb_range]."""
    rgb_range = float(net.sr_args.rgb_range)
    return net(image * rgb_range) / rgb_range


def architectures() -> list[Any]:
    """One ``spandrel.Architecture`` per architecture of ours (spandrel imported here)."""
    import spandrel

    class Ours(spandrel.Architecture):
        def __init__(self, name: str, taken: bool) -> None:
            super().__init__(id=name + ID_SUFFIX if taken else name, name=name,
                             detect=lambda state: (found := _recognised(state)) is not None and found[1].model == name)

        def load(self, state_dict):
            net, state, found = _network(state_dict)
            arch = registry.get(found.model)
            options = ', '.join(f'{k}={v}' for k, v in found.options.items() if k != 'scale')
            return spandrel.ImageModelDescriptor(
                net, state, architecture=self, purpose='SR', tags=[options], supports_half=False,
                supports_bfloat16=False, scale=found.scale, input_channels=net.sr_args.n_colors,
                output_channels=net.sr_args.n_colors,
                tiling=spandrel.ModelTiling.SUPPORTED if arch.local else spandrel.ModelTiling.DISCOURAGED,
                call_fn=_call)

    taken = {str(support.architecture.id) for support in spandrel.MAIN_REGISTRY}
    return [Ours(name, name in taken) for name in registry.names()]


def register(target: Any = None) -> list[Any]:
    """Add our architectures to spandrel's registry ``target`` (default: ``spandrel.MAIN_REGISTRY``), before its
    own; already added ones are kept. Returns the ``ArchSupport`` entries added."""
    import spandrel

    target = spandrel.MAIN_REGISTRY if target is None else target
    before = tuple(support.architecture.id for support in target)
    supports = [spandrel.ArchSupport.from_architecture(arch, before=before) for arch in architectures()]
    return target.add(*supports, ignore_duplicates=True)


__all__ = ['ID_SUFFIX', 'architectures', 'register']
