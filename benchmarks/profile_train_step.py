"""Where a training step's time goes: ``torch.profiler`` on the CPU, by part of the network and by operator.

One step is forward, L1 loss, backward and Adam on ``--batch`` LR patches (``--size``, 48 x 48) at x2, the paper
configuration (``bench_model.PAPER_FLAGS``), ours and, with ``--official_src``, the official LCoAN in
the same configuration. Each side runs in a fresh process: warm-up steps, then ``--steps`` profiled
steps, averaged.

Parts are found by module: forward hooks open a ``record_function`` range per module, the innermost
range names the part (``conv``: every ``nn.Conv2d`` but the frozen mean shifts; ``k-means``: the
centroid module, i.e. assignment and centroid update; ``LCoA attention``: the rest of the attention
module: sort, gather, score and apply products, softmax; ``other layers``: ReLU, residual sums, pixel
shuffle, mean shifts). A backward node belongs to the part of the forward operation that made it
(autograd's sequence numbers); ``accumulate grads`` is autograd writing ``.grad``. ``untracked`` is
the step's wall time that no profiled operation covers (Python between operations).

The *floor* of a part is its arithmetic at this machine's measured rate: 3x3 convolution forward,
input- and weight-gradient FLOPs counted by hooks, and the attention's matrix products (score
product, ten applications, and twice each in backward), at the rate of a 128 -> 128 3x3
channels-last convolution timed in the same process (the best of 10 calls).

Usage: ``python benchmarks/profile_train_step.py [--batch 2] [--steps 2] [--threads 2] [--official_src DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_src_to_path, child_result, machine_info  # noqa: E402
from _official import official_lcoan  # noqa: E402

_RESULT = 'PROFILE_RESULT '
PARTS = ('conv', 'LCoA attention', 'k-means', 'other layers', 'loss', 'optimizer', 'accumulate grads', 'zero_grad',
         'untracked')
_KMEANS = {'KMeansCentroids', 'Kmeans'}
_ATTENTION = {'LearnableCollaborativeAttention', 'RecurrentNonLocalKmeansAttention'}
_MEAN_SHIFT = 'MeanShift'
_PREFIX = 'part::'


def _part_of(module) -> str:
    from torch import nn

    name = type(module).__name__
    if name in _KMEANS:
        return 'k-means'
    if name in _ATTENTION:
        return 'LCoA attention'
    if isinstance(module, nn.Conv2d) and name != _MEAN_SHIFT:
        return 'conv'
    return 'other layers'


def _label_modules(net) -> tuple[list, list]:
    """Forward hooks that open a ``part::<part>`` profiler range around every labelled module, and hooks
    that count the convolutions' FLOPs (forward, input gradient, weight gradient)."""
    import torch
    from torch import nn

    handles, flops = [], collections.Counter()
    stack: list = []

    def enter(part):
        def hook(_module, _inputs):
            ranged = torch.profiler.record_function(_PREFIX + part)
            ranged.__enter__()
            stack.append(ranged)
        return hook

    def leave(_module, _inputs, _output):
        stack.pop().__exit__(None, None, None)

    def count(module, inputs, output):
        if not torch.is_grad_enabled():
            return
        k = module.kernel_size[0] * module.kernel_size[1]
        product = 2.0 * output.numel() * module.in_channels // module.groups * k
        flops['conv forward'] += product
        if output.grad_fn is None:
            return
        needs_input, needs_weight = inputs[0].requires_grad, module.weight.requires_grad

        def backward_ran(_grad_inputs, _grad_outputs):
            # Counted when the convolution's backward runs: an output nothing uses has none.
            flops['conv input grad'] += product if needs_input else 0.0
            flops['conv weight grad'] += product if needs_weight else 0.0

        output.grad_fn.register_hook(backward_ran)

    for module in net.modules():
        if module is net:
            part = 'other layers'
        elif type(module).__name__ in _KMEANS | _ATTENTION or isinstance(module, nn.Conv2d):
            part = _part_of(module)
        else:
            continue
        handles.append(module.register_forward_pre_hook(enter(part)))
        handles.append(module.register_forward_hook(leave))
        if part == 'conv':
            handles.append(module.register_forward_hook(count))
    return handles, flops


def _network(side: str, official_src: str | None):
    import bench_model

    if side == 'ours':
        return bench_model._network(2, 'fast')
    return bench_model._official_network(official_src, 2)


def _conv_rate(batch: int, size: int) -> float:
    """FLOP/s of a 128 -> 128 3x3 channels-last convolution on the step's feature maps (best of 10)."""
    import torch

    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 128, size, size).contiguous(memory_format=torch.channels_last)
    best = float('inf')
    with torch.no_grad():
        for _ in range(11):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return 2.0 * batch * size * size * 128 * 128 * 9 / best


def _attention_flops(batch: int, length: int, groups: int = 10, channels: int = 128, window: int = 384) -> dict:
    """Matrix-product FLOPs of the shared attention: one score product, ``groups`` applications;
    backward twice each (the gradients of both operands)."""
    padded = -(-length // window) * window
    product = 2.0 * batch * padded * 3 * window * channels
    return {'forward': product * (1 + groups), 'backward': 2 * product * (1 + groups)}


def _innermost_part(event) -> str | None:
    while event is not None:
        if event.name.startswith(_PREFIX):
            return event.name[len(_PREFIX):]
        event = event.cpu_parent
    return None


def _descendants(event):
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def training_step(net, batch: int, size: int):
    """One step of ``net`` (Adam, L1, x2, ``batch`` random ``size`` x ``size`` LR patches), its parts outside
    the network labelled for the profiler."""
    import torch
    from torch import nn
    from torch.profiler import record_function

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, size, size)
    hr = torch.rand(batch, 3, 2 * size, 2 * size)

    def step():
        with record_function(_PREFIX + 'zero_grad'):
            optimizer.zero_grad(set_to_none=True)
        sr = net(lr)
        with record_function(_PREFIX + 'loss'):
            loss = nn.functional.l1_loss(sr, hr)
        with record_function('backward'):
            loss.backward()
        with record_function(_PREFIX + 'optimizer'):
            optimizer.step()
    return step


def node_parts(events) -> dict[int, str]:
    """Which part made each autograd node: the forward operation with its sequence number."""
    part_of_node: dict[int, str] = {}
    for event in sorted(events, key=lambda e: e.time_range.start):
        if event.sequence_nr >= 0 and not event.name.startswith('autograd::'):
            part = _innermost_part(event)
            if part is not None:
                part_of_node[event.sequence_nr] = part
    return part_of_node


def _child(side: str, batch: int, size: int, steps: int, warmup: int, official_src: str | None) -> dict:
    add_src_to_path()
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = _network(side, official_src).train()
    step = training_step(net, batch, size)
    handles, conv_flops = _label_modules(net)
    for _ in range(warmup):
        step()
    conv_flops.clear()
    wall = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            wall += time.perf_counter() - start
    for handle in handles:
        handle.remove()
    events = prof.events()
    part_of_node = node_parts(events)
    times = collections.defaultdict(float)  # (part, 'forward'/'backward') -> s
    ops = collections.defaultdict(float)  # (part, direction, operator) -> self s

    def attribute(event, part: str, direction: str) -> None:
        """An operation's whole span to ``part``, and the self time of it and everything it called."""
        times[(part, direction)] += event.time_range.elapsed_us() / 1e6
        for e in [event, *_descendants(event)]:
            ops[(part, direction, e.name.removeprefix('autograd::engine::evaluate_function: '))] += (
                e.self_cpu_time_total / 1e6)

    for event in events:
        parent = event.cpu_parent
        if event.name.startswith(_PREFIX) or event.name == 'backward':
            continue
        if parent is None:
            attribute(event, 'other layers', 'forward')
        elif parent.name.startswith(_PREFIX):
            attribute(event, parent.name[len(_PREFIX):], 'forward')
        elif parent.name == 'backward':
            if 'AccumulateGrad' in event.name:
                part = 'accumulate grads'
            else:
                part = part_of_node.get(event.sequence_nr, 'other layers')
            attribute(event, part, 'backward')
    covered = sum(times.values())
    times[('untracked', 'forward')] += wall - covered
    attention = _attention_flops(batch, size * size)
    return {
        'side': side, 'batch': batch, 'size': size, 'steps': steps, 'wall_s': wall / steps,
        'times_s': {f'{p}|{d}': t / steps for (p, d), t in times.items()},
        'ops_s': {f'{p}|{d}|{o}': t / steps for (p, d, o), t in ops.items() if t / steps >= 1e-3},
        'flops': {**{k: v / steps for k, v in conv_flops.items()},
                  'attention forward': attention['forward'], 'attention backward': attention['backward']},
        'conv_rate': _conv_rate(batch, size),
    }


def _floor(result: dict, part: str) -> float | None:
    flops = result['flops']
    if part == 'conv':
        total = flops.get('conv forward', 0) + flops.get('conv input grad', 0) + flops.get('conv weight grad', 0)
    elif part == 'LCoA attention':
        total = flops['attention forward'] + flops['attention backward']
    else:
        return None
    return total / result['conv_rate']


def _tables(results: list[dict], top_ops: int) -> str:
    lines = []
    for r in results:
        total = r['wall_s']
        lines += [f"\n### {r['side']}: one step, batch {r['batch']} x {r['size']}x{r['size']}, x2 "
                  f"(mean of {r['steps']} profiled steps): {total:.3f} s; "
                  f"3x3 conv rate {r['conv_rate'] / 1e9:.0f} GFLOP/s", '',
                  '| part | forward s | backward s | total s | share | floor s | floor / measured |',
                  '|---|---:|---:|---:|---:|---:|---:|']
        for part in PARTS:
            fwd = r['times_s'].get(f'{part}|forward', 0.0)
            bwd = r['times_s'].get(f'{part}|backward', 0.0)
            if fwd == bwd == 0:
                continue
            floor = _floor(r, part)
            floor_cells = f'{floor:.3f} | {floor / (fwd + bwd):.0%}' if floor else ' | '
            lines.append(f'| {part} | {fwd:.3f} | {bwd:.3f} | {fwd + bwd:.3f} | {(fwd + bwd) / total:.0%} '
                         f'| {floor_cells} |')
        lines += ['', f'Top operators by self time, {r["side"]} (s per step):', '',
                  '| part | direction | operator | self s |', '|---|---|---|---:|']
        ranked = sorted(r['ops_s'].items(), key=lambda item: -item[1])[:top_ops]
        for key, value in ranked:
            part, direction, op = key.split('|', 2)
            lines.append(f'| {part} | {direction} | `{op}` | {value:.3f} |')
        attention = sorted(((k, v) for k, v in r['ops_s'].items() if k.startswith('LCoA attention|')),
                           key=lambda item: -item[1])[:top_ops]
        lines += ['', f'LCoA attention by operator, {r["side"]} (s per step):', '',
                  '| direction | operator | self s |', '|---|---|---:|']
        lines += [f"| {k.split('|')[1]} | `{k.split('|', 2)[2]}` | {v:.3f} |" for k, v in attention]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, default=48, help='LR patch height and width')
    parser.add_argument('--steps', type=int, default=2, help='profiled steps (after the warm-up), averaged')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--top', type=int, default=15, help='operators listed per table')
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder: profiles the official "
                        'step too, in its own process')
    parser.add_argument('--json', type=Path)
    parser.add_argument('--child', choices=('ours', 'official'), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        import torch

        torch.set_num_threads(opts.threads)
        result = _child(opts.child, opts.batch, opts.size, opts.steps, opts.warmup, opts.official_src)
        print(_RESULT + json.dumps(result), flush=True)
        return [result]
    try:
        official = str(official_lcoan(opts.official_src).src) if opts.official_src else None
    except FileNotFoundError as error:
        parser.error(str(error))
    results = []
    for side in ('ours', 'official') if official else ('ours',):
        print(f'profiling {side} ...', file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), '--child', side, '--batch', str(opts.batch),
               '--size', str(opts.size), '--steps', str(opts.steps), '--warmup', str(opts.warmup),
               '--threads', str(opts.threads)]
        if official:
            cmd += ['--official_src', official]
        results.append(child_result(cmd, _RESULT, f'profiling {side}', threads=opts.threads))
    info = machine_info(opts.threads)
    print(f"machine: {info['cpu']} ({info['logical_cpus']} logical CPUs), torch {info['torch']}, "
          f"{opts.threads} threads, {info['date']}")
    print(_tables(results, opts.top))
    if opts.json:
        opts.json.write_text(json.dumps({'machine': info, 'results': results}, indent=1))
    return results


if __name__ == '__main__':
    main()
