"""Benchmark of a convolution's weight gradient: oneDNN's (``nn.Conv2d``) against ``model.conv``'s
one-GEMM-per-tap version, on the shapes LCoAN trains with.

Each measurement runs in a fresh process and times only the weight gradient
(``aten.convolution_backward`` with the weight mask vs ``model.conv.conv_weight_grad``), channels-last
like the network. The input gradient and the forward pass are timed alongside for scale: they are
what the weight gradient should cost.

Usage: ``python benchmarks/bench_conv.py [--threads 2] [--repeats 10] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_src_to_path, machine_info, run_in_subprocess  # noqa: E402

add_src_to_path()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# (batch, in channels, out channels, kernel, LR size): the body's 3x3 convs at the batch of 2
# and the paper's batch of 16, a whole 96x96 image, the x2 upsampler's conv and a 1x1 value conv.
SHAPES = [(2, 128, 128, 3, 48), (16, 128, 128, 3, 48), (1, 128, 128, 3, 96), (2, 128, 512, 3, 48),
          (2, 128, 128, 1, 48)]
OPS = ('forward', 'input_grad', 'weight_grad_onednn', 'weight_grad_gemm')


def conv_op(*, op: str, batch: int, c_in: int, c_out: int, kernel: int, size: int):
    """Setup: one of ``OPS`` for a stride-1 'same' convolution of that shape."""
    from model import conv

    cl = torch.channels_last
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=cl)
    weight = torch.randn(c_out, c_in, kernel, kernel).contiguous(memory_format=cl)
    grad_out = torch.randn(batch, c_out, size, size).contiguous(memory_format=cl)
    pad = [kernel // 2] * 2

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], pad, [1, 1], False,
                                                           [0, 0], 1, mask)

    if op == 'forward':
        return lambda: F.conv2d(x, weight, padding=pad)
    if op == 'input_grad':
        return backward([True, False, False])
    if op == 'weight_grad_onednn':
        return backward([False, True, False])
    if op == 'weight_grad_gemm':
        return lambda: conv.conv_weight_grad(grad_out, x, kernel)
    raise ValueError(f'unknown op {op!r}; expected one of {OPS}')


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)
    info = machine_info(args.threads)
    lines = [f'conv weight gradient, GFLOP/s (median of {args.repeats}), {info["cpu"]}, torch {info["torch"]}, '
             f'{args.threads} threads, {info["date"]}', '',
             '| N x C_in -> C_out, k, size | forward | input grad | weight grad oneDNN | weight grad GEMM '
             '| GEMM / oneDNN |',
             '|---|---:|---:|---:|---:|---:|']
    results = {}
    for batch, c_in, c_out, kernel, size in SHAPES:
        name = f'{batch} x {c_in} -> {c_out}, {kernel}x{kernel}, {size}x{size}'
        gflop = 2.0 * batch * size * size * c_in * c_out * kernel * kernel / 1e9
        rates = {}
        for op in OPS:
            print(f'running {name}: {op} ...', file=sys.stderr, flush=True)
            r = run_in_subprocess('bench_conv:conv_op', dict(op=op, batch=batch, c_in=c_in, c_out=c_out,
                                                              kernel=kernel, size=size),
                                  threads=args.threads, repeats=args.repeats)
            rates[op] = gflop / r['median_s']
        results[name] = rates
        lines.append(f'| {name} | ' + ' | '.join(f'{rates[op]:.0f}' for op in OPS)
                     + f' | {rates["weight_grad_gemm"] / rates["weight_grad_onednn"]:.2f}x |')
    print('\n'.join(lines))
    report = {'machine': info, 'gflops_per_s': results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')
    return report


if __name__ == '__main__':
    main()
