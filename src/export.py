"""Export a checkpoint to ONNX: ``python src/export.py --weights X.pt --onnx out.onnx``.

The architecture is detected from the weights. The ONNX graph takes one float32 image
``lr`` (1, n_colors, H, W) with values in [0, 1] and any H and W, and returns ``sr``
(1, n_colors, scale*H, scale*W) in [0, 1] (the checkpoint's ``rgb_range`` is applied inside).
It is written by PyTorch's own exporter (``torch.onnx.export(..., dynamo=True)``, via
``torch.export``) and, with onnxruntime installed, checked against PyTorch on the example input.

LCoAN is exported with its reference attention implementation: the fast one keeps per-pattern
plans and custom autograd functions that ``torch.export`` cannot trace; both compute the same
function. Two ATen operators that the exporter cannot translate with symbolic sizes get
translations here: the stable sort by cluster id (as a TopK over the unique keys
``cluster * L + position``, which is the stable order) and the integer remainder by a symbolic
size (ONNX ``Mod``, Python sign convention). An LCoAN whose k-means centroids were never
initialised (saved before its first training step) is refused: there is no pattern to export.

The options the weights do not record (``--window_size``, ``--chunk_size``, ``--res_scale``,
``--rgb_range`` ...) come from the flags, else from the config.txt of the run that saved the
weights, else the published values; the first line says which came from where. A network that
draws random numbers in its forward (NLSN's hashing) cannot match PyTorch value for value: its
ONNX output is checked in shape only, and says so.
"""

import argparse
import contextlib
import copy
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import api
from core.errors import UserError, run_entry_point
from model.blocks.lcoa import LearnableCollaborativeAttention

OPSET = 18
EXAMPLE_SIZE = (32, 40)
MAX_SIDE = 1 << 15


class ZeroOneRange(nn.Module):
    """``net`` on [0, 1] images: scales to the network's [0, rgb_range] and back."""

    def __init__(self, net: nn.Module, rgb_range: float) -> None:
        super().__init__()
        self.net = net
        self.rgb_range = float(rgb_range)

    def forward(self, lr: Tensor) -> Tensor:
        return self.net(lr * self.rgb_range) / self.rgb_range


def _stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
    """aten.sort.stable along the last axis of integer keys (cluster ids): TopK of ``key * L + position``."""
    from onnxscript import opset18 as op
    if descending or dim not in (-1,):
        raise NotImplementedError('only an ascending sort along the last axis is exported')
    k = op.Shape(self, start=-1)
    length = op.Squeeze(k)
    position = op.Range(op.Constant(value_int=0), length, op.Constant(value_int=1))
    key = op.Add(op.Mul(op.Cast(self, to=7), length), position)  # 7: INT64; unique keys make the order stable
    _, index = op.TopK(key, k, axis=-1, largest=0, sorted=1)
    return op.GatherElements(self, index, axis=-1), index


def _remainder(self, other):
    """aten.remainder.Scalar with a symbolic divisor (integer indices): Python's sign convention."""
    from onnxscript import opset18 as op
    return op.Mod(self, op.CastLike(other, self), fmod=0)


def prepare(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that ``torch.export`` can trace, computing the same function.

    - LCoA modules switch to the reference implementation (their ``attention_impl``, read at every forward);
    - the k-means ``initted`` flag becomes a plain bool: the check of a trained checkpoint's flag
      is otherwise data-dependent control flow.
    """
    net = copy.deepcopy(net).eval()
    for m in net.modules():
        if isinstance(m, LearnableCollaborativeAttention):
            m.attention_impl = 'reference'
        flag = m._buffers.get('initted')
        if isinstance(flag, Tensor):  # (later groups reuse the first group's pattern: theirs stay False, unused)
            del m._buffers['initted']
            object.__setattr__(m, 'initted', bool(flag))
    return net


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The log records of ``name`` (and its children) below ERROR dropped inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_trained(net: nn.Module) -> None:
    """UserError if ``net``'s attention has k-means centroids that were never initialised (the first LCoA module
    clusters for all groups; the later groups' centroids are unused and stay uninitialised)."""
    first = next((m for m in net.modules() if isinstance(m, LearnableCollaborativeAttention)), None)
    if first is not None and not bool(first.kmeans.initted):
        raise UserError('the k-means centroids of its attention were never initialised (weights saved before the '
                        'first training step?): there is no trained attention pattern to export')


def export_onnx(net: nn.Module, path: str | Path, *, example_size: tuple[int, int] = EXAMPLE_SIZE,
                opset: int = OPSET) -> Path:
    """Write ``net`` (from :func:`api.load_pretrained`) to ``path`` as ONNX with dynamic height and width.

    Raises:
        UserError: an LCoAN whose centroids were never initialised (:func:`check_trained`).
    """
    path = Path(path)
    args = net.sr_args
    check_trained(net)
    wrapped = ZeroOneRange(prepare(net).cpu(), args.rgb_range)
    example = torch.rand(1, args.n_colors, *example_size, generator=torch.Generator().manual_seed(0))
    height = torch.export.Dim('height', min=4, max=MAX_SIDE)
    width = torch.export.Dim('width', min=4, max=MAX_SIDE)
    with warnings.catch_warnings(), _quiet_logger('torch.onnx'):  # its notes (e.g. on torchvision) are not ours
        warnings.simplefilter('ignore')
        program = torch.onnx.export(
            wrapped, (example,), dynamo=True, opset_version=opset, input_names=['lr'], output_names=['sr'],
            dynamic_shapes={'lr': {2: height, 3: width}}, verbose=False,
            custom_translation_table={torch.ops.aten.sort.stable: _stable_sort,
                                      torch.ops.aten.remainder.Scalar: _remainder})
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def onnx_output(path: str | Path, lr: Tensor) -> np.ndarray:
    """onnxruntime's output of the graph at ``path`` on ``lr`` (1, C, H, W) in [0, 1]."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {'lr': lr.numpy().astype(np.float32)})[0]


def torch_output(net: nn.Module, lr: Tensor) -> np.ndarray:
    """PyTorch's output of ``net`` on ``lr`` (1, C, H, W) in [0, 1], in [0, 1]."""
    rgb_range = float(net.sr_args.rgb_range)
    with torch.no_grad():
        return (net(lr.to(next(net.parameters()).device) * rgb_range) / rgb_range).cpu().numpy()


def draws_random_numbers(net: nn.Module, lr: Tensor) -> bool:
    """Whether ``net``'s output on ``lr`` depends on the random generator (NLSN's hashing); the generator is left
    as it was."""
    outputs = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for seed in (0, 1):
            torch.manual_seed(seed)
            outputs.append(net(lr.to(next(net.parameters()).device)))
    return not torch.equal(*outputs)


def max_difference(path: str | Path, net: nn.Module, lr: Tensor) -> float:
    """Largest |onnxruntime - PyTorch| on ``lr`` (1, C, H, W) in [0, 1], both outputs in [0, 1]."""
    got, want = onnx_output(path, lr), torch_output(net, lr)
    if got.shape != want.shape:
        raise RuntimeError(f'onnxruntime returned {got.shape}, PyTorch {want.shape}')
    return float(np.abs(got - want).max())


def check(path: Path, net: nn.Module) -> int:
    """Compare onnxruntime with PyTorch on a 29x37 input; 1 if they differ by more than 1e-4."""
    lr = torch.rand(1, net.sr_args.n_colors, 29, 37, generator=torch.Generator().manual_seed(1))
    if draws_random_numbers(net, lr):
        got, want = onnx_output(path, lr).shape, torch_output(net, lr).shape
        if got != want:
            print(f'error: onnxruntime returned {got}, PyTorch {want}', file=sys.stderr)
            return 1
        print(f'onnxruntime on a 29x37 input: output {"x".join(map(str, got))} as PyTorch\'s; the values are not '
              'compared: this network draws random numbers in every forward (its hashing), PyTorch\'s own output '
              'changes from call to call.')
        return 0
    diff = max_difference(path, net, lr)
    print(f'onnxruntime vs PyTorch on a 29x37 input: max abs difference {diff:.2e} (in [0, 1]).')
    if diff > 1e-4:
        print('error: the exported model differs from PyTorch by more than 1e-4', file=sys.stderr)
        return 1
    return 0


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description='Export a checkpoint to ONNX (architecture detected from the weights).')
    p.add_argument('--weights', required=True, help='checkpoint (.pt state_dict)')
    p.add_argument('--onnx', required=True, help='output .onnx file')
    p.add_argument('--opset', type=int, default=OPSET, help='ONNX opset')
    p.add_argument('--no_check', action='store_true', help='skip the onnxruntime comparison')
    api.add_model_flags(p)
    args = p.parse_args(argv)
    net = api.load_pretrained(args.weights, device='cpu', **api.model_overrides(args))
    print(net.sr_options)
    try:
        path = export_onnx(net, args.onnx, opset=args.opset)
    except UserError as e:
        raise UserError(f'weights {args.weights}: {e}') from None
    print(f'Wrote {path} (input lr: 1 x {net.sr_args.n_colors} x H x W in [0, 1]; output sr: x{net.sr_args.scale[0]}).')
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print('onnxruntime is not installed: output not checked.')
        return 0
    return check(path, net)


def main(argv=None) -> int:
    return run_entry_point(lambda: run(argv))


if __name__ == '__main__':
    sys.exit(main())
