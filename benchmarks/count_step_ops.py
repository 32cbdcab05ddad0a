"""How many operators, Python loop iterations and host-device synchronisations one training step makes.

On a GPU a training step of small patches is bound by launching kernels, not by computing them: every
operator the host issues costs microseconds, every Python loop iteration issues more of them, and every
read of a device value (``.item()``, ``bool(tensor)``, ``nonzero``, a data-dependent shape) makes the
host wait for the device instead of queueing ahead. Those counts do not depend on the device, so they
are measured here on the CPU: one step (forward, L1 loss, backward, Adam) on ``--batch`` LR patches
(``--size``, 48 x 48) at x2 in the paper configuration (``bench_model.PAPER_FLAGS``), after a warm-up
step, in a fresh process per side: ours, with ``--before_rev REV`` / ``--before_src DIR`` another
revision of ours, with ``--official_src DIR`` the official LCoAN.

Counted per part of the network (``profile_train_step``'s parts: modules, and backward nodes by the
forward operation that made them) and direction:

* *aten calls*: every ``aten::`` operator the profiler records, nested calls included;
* *kernels*: the ``aten::`` calls that do work themselves: not those that only make views, allocate
  or return their input (``view``, ``slice``, ``as_strided``, ``empty``, a no-op ``to``, ``resolve_conj``
  ...), and not those whose work is done by an ``aten::`` call inside them (``to`` by ``copy_``,
  ``zeros`` by ``fill_``): about one device kernel each;
* *syncs*: ``aten::_local_scalar_dense`` (``.item()``, ``bool()``, ``.tolist()``) and ``aten::nonzero``;
* *loop iterations*: jumps back to a ``for``/``while`` line or comprehension of the side's ``model/``
  source files (``sys.settrace``, in a second, untimed step): one per iteration, the exhausting one
  included. The official network runs its groups through ``nn.Sequential`` (a loop in torch, not
  counted); ours loops over them in ``lcoan.py`` (11 per step).

Usage: ``python benchmarks/count_step_ops.py [--batch 16] [--official_src DIR] [--before_rev REV]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SRC_DIR, add_src_to_path, child_result, machine_info  # noqa: E402
from _official import official_lcoan  # noqa: E402
from profile_train_step import _PREFIX  # noqa: E402

_RESULT = 'COUNT_RESULT '
# Innermost operators that launch no kernel: views, allocations, and conversions that return their input.
NO_KERNEL = frozenset(f'aten::{name}' for name in (
    'view', '_unsafe_view', 'as_strided', 'slice', 'select', 'unsqueeze', 'squeeze', 'transpose', 't', 'permute',
    'expand', 'alias', 'unflatten', 'flatten', 'reshape', '_reshape_alias', 'empty', 'empty_strided', 'empty_like',
    'resize_', 'detach', 'detach_', 'lift_fresh', 'narrow', 'unbind', 'split', 'split_with_sizes', 'chunk', 'view_as',
    'expand_as', 'contiguous', 'to', 'set_', 'result_type', 'is_nonzero', 'item', 'unfold', 'diagonal',
    'resolve_conj', 'resolve_neg', 'promote_types', '_has_compatible_shallow_copy_type', 'conj', 'numpy_T',
    'new_empty', 'new_empty_strided'))
SYNCS = frozenset({'aten::_local_scalar_dense', 'aten::nonzero'})
_LOOP_LINE = re.compile(r'^\s*(for|while|async for)\b|\bfor\b.+\bin\b')


def _network(side: str, src: str | None):
    import bench_model
    from _common import initialise_centroids

    if side == 'ours':
        return bench_model._network(2, 'fast')
    if side == 'official':
        return bench_model._official_network(src, 2)
    from bench_train_step import before_source

    args = bench_model._args(2)  # our options, parsed outside the sealed block
    before = before_source(src)
    with before.imports():
        net = before.module('model.lcoan').make_model(args)
    initialise_centroids(net)
    return net


def _part_of_event(event, part_of_node: dict[int, str]) -> tuple[str, str]:
    """(part, direction) of a profiler event, from its innermost labelled range or its autograd node."""
    direction, part = 'forward', None
    node = event
    while node is not None:
        if node.name == 'backward':
            direction = 'backward'
        if part is None and node.name.startswith(_PREFIX):
            part = node.name[len(_PREFIX):]
        node = node.cpu_parent
    if direction == 'backward':
        node = event
        while node is not None and node.name != 'backward':
            if node.name.startswith('autograd::engine::evaluate_function: '):
                if 'AccumulateGrad' in node.name:
                    return 'accumulate grads', direction
                return part_of_node.get(node.sequence_nr, 'other layers'), direction
            node = node.cpu_parent
        return 'other layers', direction
    return part or 'other layers', direction


def _child(side: str, src: str | None, batch: int, size: int) -> dict:
    add_src_to_path()
    import torch
    from profile_train_step import _label_modules, node_parts, training_step
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = _network(side, src).train()
    step = training_step(net, batch, size)
    step()  # warm-up: first-call allocations, lazy initialisations
    handles, _ = _label_modules(net)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    for handle in handles:
        handle.remove()
    events = prof.events()
    part_of_node = node_parts(events)
    counts: dict[str, collections.Counter] = {key: collections.Counter() for key in ('aten', 'kernels', 'syncs')}
    kernel_ops: collections.Counter = collections.Counter()
    works: dict[int, bool] = {}

    def does_work(event) -> bool:
        """Whether ``event`` or an ``aten::`` call inside it does work (see the module docstring)."""
        key = id(event)
        if key not in works:
            inside = [does_work(child) for child in event.cpu_children if child.name.startswith('aten::')]
            works[key] = any(inside) or event.name not in NO_KERNEL
        return works[key]

    for event in events:
        if not event.name.startswith('aten::'):
            continue
        where = '|'.join(_part_of_event(event, part_of_node))
        counts['aten'][where] += 1
        if event.name in SYNCS:
            counts['syncs'][where] += 1
        inner_work = any(does_work(child) for child in event.cpu_children if child.name.startswith('aten::'))
        if event.name not in NO_KERNEL and not inner_work:
            counts['kernels'][where] += 1
            kernel_ops[f'{where}|{event.name}'] += 1

    model_dir = str((Path(src) if src else SRC_DIR) / 'model') + os.sep
    lines: collections.Counter = collections.Counter()
    source_lines: dict[str, list[str]] = {}

    def is_loop(filename: str, lineno: int) -> bool:
        text = source_lines.get(filename)
        if text is None:
            text = source_lines[filename] = Path(filename).read_text().splitlines()
        return 0 < lineno <= len(text) and bool(_LOOP_LINE.search(text[lineno - 1].split('#')[0]))

    last_line: dict[int, int] = {}  # frame id -> its last line event

    def local_trace(frame, event, _arg):
        if event == 'return':
            last_line.pop(id(frame), None)
        elif event == 'line':
            previous = last_line.get(id(frame))
            last_line[id(frame)] = frame.f_lineno
            if (previous is not None and previous >= frame.f_lineno
                    and is_loop(frame.f_code.co_filename, frame.f_lineno)):
                lines[f'{Path(frame.f_code.co_filename).name}:{frame.f_lineno}'] += 1
        return local_trace

    def global_trace(frame, _event, _arg):
        return local_trace if frame.f_code.co_filename.startswith(model_dir) else None

    sys.settrace(global_trace)
    try:
        step()
    finally:
        sys.settrace(None)
    return {'side': side, 'batch': batch, 'size': size,
            **{key: dict(counter) for key, counter in counts.items()},
            'kernel_ops': dict(kernel_ops), 'loop_lines': dict(lines)}


def _total(counter: dict, direction: str | None = None, part: str | None = None) -> int:
    return sum(v for k, v in counter.items()
               if (part is None or k.split('|')[0] == part) and (direction is None or k.split('|')[1] == direction))


def _table(results: list[dict], top: int) -> str:
    names = [r['side'] for r in results]
    out = ['| count per step | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]

    def row(label, fn):
        out.append(f'| {label} | ' + ' | '.join(str(fn(r)) for r in results) + ' |')

    for key, label in (('aten', 'aten calls'), ('kernels', 'kernels (aten calls doing work)')):
        row(f'{label}, whole step', lambda r, key=key: _total(r[key]))
        row(f'{label}, forward', lambda r, key=key: _total(r[key], 'forward'))
        row(f'{label}, backward', lambda r, key=key: _total(r[key], 'backward'))
        for part in ('LCoA attention', 'k-means'):
            row(f'{label}, {part} (fwd + bwd)', lambda r, key=key, part=part: _total(r[key], part=part))
    row('syncs, network (forward + backward)', lambda r: _total(r['syncs']) - _total(r['syncs'], part='optimizer'))
    row('syncs, optimizer', lambda r: _total(r['syncs'], part='optimizer'))
    row('Python loop iterations (model/ files)', lambda r: sum(r['loop_lines'].values()))
    for r in results:
        out += ['', f"{r['side']}: busiest loop lines: " + ', '.join(
            f'{k} x{v}' for k, v in sorted(r['loop_lines'].items(), key=lambda kv: -kv[1])[:top])]
        attention = sorted(((k, v) for k, v in r['kernel_ops'].items() if k.startswith('LCoA attention|')),
                           key=lambda kv: -kv[1])[:top]
        out.append(f"{r['side']}: LCoA attention kernels by operator: "
                   + ', '.join(f"{k.split('|')[1]} {k.split('|')[2]} x{v}" for k, v in attention))
        syncs = {k: v for k, v in r['syncs'].items()}
        out.append(f"{r['side']}: syncs by part: {syncs or 'none'}")
    return '\n'.join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--size', type=int, default=48, help='LR patch height and width')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--top', type=int, default=8, help='loop lines and operators listed per side')
    parser.add_argument('--official_src', help="a checkout of YigangZhao/LCoAN's src/ folder")
    before_side = parser.add_mutually_exclusive_group()
    before_side.add_argument('--before_rev', help='a git revision of this repository: its src/ is another side')
    before_side.add_argument('--before_src', help="another checkout of this repository's src/ folder")
    parser.add_argument('--json', type=Path)
    parser.add_argument('--child', choices=('ours', 'before', 'official'), help=argparse.SUPPRESS)
    parser.add_argument('--src', help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        import torch

        torch.set_num_threads(opts.threads)
        result = _child(opts.child, opts.src, opts.batch, opts.size)
        print(_RESULT + json.dumps(result), flush=True)
        return [result]
    from bench_train_step import before_source, extract_src

    results = []
    with tempfile.TemporaryDirectory(prefix='count_step_ops_') as scratch:
        try:
            sides = {'ours': None}
            before = str(extract_src(opts.before_rev, Path(scratch))) if opts.before_rev else opts.before_src
            if before:
                sides['before'] = str(before_source(before).src)
            if opts.official_src:
                sides['official'] = str(official_lcoan(opts.official_src).src)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        for side, src in sides.items():
            print(f'counting {side} ...', file=sys.stderr, flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), '--child', side, '--batch', str(opts.batch),
                   '--size', str(opts.size), '--threads', str(opts.threads)] + (['--src', src] if src else [])
            results.append(child_result(cmd, _RESULT, f'counting {side}', threads=opts.threads))
    info = machine_info(opts.threads)
    print(f"torch {info['torch']}, {info['date']}; one step: x2, batch {opts.batch} x {opts.size}x{opts.size}, "
          'paper configuration, fp32, Adam, L1' + (f'; before = {opts.before_rev}' if opts.before_rev else ''))
    print(_table(results, opts.top))
    if opts.json:
        opts.json.write_text(json.dumps({'machine': info, 'before_rev': opts.before_rev, 'results': results},
                                        indent=1))
    return results


if __name__ == '__main__':
    main()
