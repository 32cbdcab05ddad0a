"""Other code bases' layouts of our networks (``Architecture.layouts``: BasicSR's EDSR and RCAN, spandrel's and
super-image's), renamed to ours on reading."""

import torch

from model import registry
from model.spec import Layout, UnknownCheckpoint, natural_order

# EDSR-PyTorch's rgb_range: assumed where the weights do not record it (a layout that keeps the mean shift out
# of its weights, as BasicSR's img_range; a network without a mean shift, as RDN).
DEFAULT_RGB_RANGE = 255


def layouts() -> dict[str, list[Layout]]:
    """Layout name -> the layouts of that name (one per architecture that has it), from the registry."""
    found: dict[str, list[Layout]] = {}
    for arch in registry.architectures().values():
        for layout in arch.layouts:
            found.setdefault(layout.name, []).append(layout)
    return found


def in_our_layout(state: dict[str, torch.Tensor], *, rgb_range: float | None = None,
                  layout: str | None = None) -> tuple[dict[str, torch.Tensor], Layout | None]:
    """``state`` in our key names, and the other code base's layout it was in (None: already ours).

    Args:
        state: a plain state_dict, prefixes removed.
        rgb_range: for a layout that keeps the mean shift out of its weights, the ``rgb_range`` to
            build it for (None: 255, BasicSR's ``img_range`` default).
        layout: read ``state`` as this layout (``'super-image'``, whose weights cannot be told from
            ours); None: recognise it by a layout's signature key.

    Raises:
        UnknownCheckpoint: ``layout`` is given but no architecture's layout of that name fits ``state``.
    """
    rgb_range = DEFAULT_RGB_RANGE if rgb_range is None else rgb_range
    if layout is None:
        owned = {arch.signature for arch in registry.architectures().values()}
        if any(k in state for k in owned):
            return state, None
        found = [lay for group in layouts().values() for lay in group if lay.signature and lay.signature in state]
    else:  # a layout without a signature key has ours: the architecture's own signature tells whose it is
        found = [lay for arch in registry.architectures().values() for lay in arch.layouts
                 if lay.name == layout and (lay.signature or arch.signature) in state]
        if not found:
            known = ', '.join(layouts())
            raise UnknownCheckpoint(f'not in the {layout!r} layout of any architecture (layouts read: {known})')
    if not found:
        return state, None
    return natural_order(found[0].to_ours(state, rgb_range)), found[0]


def renamed_note(source: str, layout: Layout, rgb_range: float | None) -> str:
    """The log line for the file ``source`` (``'--pre_train X.pt'``) read in ``layout``, with what was assumed."""
    note = (f'; rgb_range {DEFAULT_RGB_RANGE if rgb_range is None else rgb_range} and the DIV2K mean assumed '
            '(not stored in its weights)' if layout.mean_outside else '')
    return f'{source} is in the layout of {layout.source}: its keys were renamed to ours{note}.'
