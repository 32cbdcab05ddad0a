"""The steps of the GPU check (``benchmarks/gpu_check.py``), one per process:

    python benchmarks/gpu_check_steps.py --step NAME --config WORK/config.json --result WORK/results/NAME.json

A step writes its result file after every measurement (``{'status', 'reason', 'error', 'data',
'checks'}``), so a step killed at its timeout still reports what it measured. A *check* is a
measured value against a limit; a failed check fails the step, an exception fails it too. The issue's
goals (ratios to the official code, bf16 speed-up, compile vs eager) are no checks: the driver
compares them in the summary.

The steps drive the code through its stable surfaces: ``main.py`` and ``upscale.py`` on the command
line, pytest markers, ``option.parse_args``, ``model.lcoan.make_model`` and the ``model.Model``
wrapper. Without ``--smoke`` they run on CUDA at the issue's sizes; with it on the CPU at tiny ones.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SRC = REPO / 'src'

# The paper's configuration (src/template.py LCoAN_paper) and a tiny one for --smoke.
PAPER_MODEL = ['--n_resgroups', '10', '--n_resblocks', '4', '--n_feats', '128', '--reduction', '1',
               '--n_clusters', '128', '--window_size', '384', '--ema_decay', '0.999', '--res_scale', '0.1']
TINY_MODEL = ['--n_resgroups', '2', '--n_resblocks', '1', '--n_feats', '16', '--reduction', '2', '--n_clusters', '8',
              '--window_size', '32', '--ema_decay', '0.99', '--res_scale', '0.1']
# A tiny training run for --smoke: the demo template's data and learning rate, a smaller network and
# no result images or bicubic comparison.
TINY_RUN = ['--model', 'LCoAN', '--rgb_range', '1', '--scale', '2', '--data_train', 'Sample', '--data_test', 'Sample',
            '--lr', '5e-4', '--n_resgroups', '1', '--n_resblocks', '1', '--n_feats', '8', '--reduction', '2',
            '--n_clusters', '4', '--window_size', '32', '--ema_decay', '0.99', '--patch_size', '32', '--batch_size',
            '4', '--test_every', '2', '--n_threads', '0', '--print_every', '1']

SIZES = {
    'full': dict(
        model=PAPER_MODEL,
        attention_input=(2, 64),  # batch, LR side
        compare_side=64,
        chop_input=(100, 120), chop_flags=['--chop_size', '48', '--chop_overlap', '8', '--chop_batch', '4'],
        ensemble_side=48, chop_ensemble_input=(64, 80),  # 4 tiles: the CPU side runs 32 tile forwards
        forward_cases=[(2, 96), (2, 192), (4, 192), (4, 320)],  # (scale, LR side)
        train_case=(2, 48, 16),  # scale, LR patch side, batch
        warmup=2, repeats=5, case_seconds=4.0,
        compile_forward=(4, 192), compile_backend='inductor', compile_precisions=('fp32', 'bf16'),
        run=['--template', 'demo', '--n_threads', '4', '--test_every', '50', '--print_every', '25'],
        epochs=4, upscale_tile=48, pytest_threads=2,
    ),
    'smoke': dict(
        model=TINY_MODEL,
        attention_input=(2, 24),
        compare_side=24,
        chop_input=(40, 52), chop_flags=['--chop_size', '24', '--chop_overlap', '4', '--chop_batch', '2'],
        ensemble_side=16, chop_ensemble_input=(28, 36),
        forward_cases=[(2, 16), (4, 16)],
        train_case=(2, 16, 2),
        warmup=1, repeats=1, case_seconds=1.0,
        compile_forward=(2, 16), compile_backend='eager', compile_precisions=('fp32',),
        run=TINY_RUN,
        epochs=2, upscale_tile=32, pytest_threads=1,
    ),
}
# fp32 comparisons run with TF32 off: CPU and CUDA (and both attention kernels) then compute in float32.
FP32_TOL = 1e-4
# The fast kernels in bf16 may be at most this much less accurate than the reference kernels in bf16
# (errors against the float32 reference), plus an absolute slack for errors near zero.
BF16_ERROR_FACTOR = 2.0
BF16_SLACK = 1e-3
# With --deterministic a resumed run ends where the straight one does (PSNR is logged to 1e-6 dB).
RESUME_TOL_DB = 1e-6
# upscale.py on CUDA and on the CPU write 8-bit images that may differ by rounding only.
UPSCALE_MIN_PSNR_DB = 45.0


class Skip(Exception):
    """The step cannot run here (no CUDA, no official code, ...); the message says why."""


class Context:
    """What a step knows (the driver's config) and how it reports (its result file)."""

    def __init__(self, cfg: dict, step: str, result_path: Path) -> None:
        self.cfg = cfg
        self.step = step
        self.result_path = result_path
        self.smoke = bool(cfg['smoke'])
        self.sizes = SIZES['smoke' if self.smoke else 'full']
        self.repo = Path(cfg['repo'])
        self.src = self.repo / 'src'
        self.work = Path(cfg['work'])
        self.python = cfg['python']
        self.data: dict = {}
        self.checks: list[dict] = []
        self.status, self.reason, self.error = 'running', None, None
        self._device: str | None = None

    @property
    def device(self) -> str:
        """'cuda' without --smoke when CUDA is available, else 'cpu'."""
        if self._device is None:
            import torch

            self._device = 'cuda' if not self.smoke and torch.cuda.is_available() else 'cpu'
        return self._device

    def needs_cuda(self) -> None:
        """Skip without CUDA (the sizes are a GPU's), except in --smoke, where the step runs on the CPU at
        tiny sizes to keep its code alive."""
        if self.device == 'cpu' and not self.smoke:
            raise Skip('no CUDA')

    def save(self) -> None:
        tmp = self.result_path.with_name(self.result_path.name + '.tmp')
        tmp.write_text(json.dumps({'status': self.status, 'reason': self.reason, 'error': self.error,
                                   'data': self.data, 'checks': self.checks}, indent=1, default=str))
        os.replace(tmp, self.result_path)

    def record(self, **values) -> None:
        self.data.update(values)
        self.save()

    def check(self, name: str, value, limit: str, ok: bool) -> bool:
        """Record a check (``limit`` says what passes, e.g. '<= 1e-4'); a failed one fails the step."""
        ok = bool(ok)
        self.checks.append({'name': name, 'value': value, 'limit': limit, 'ok': ok})
        print(f'check {"ok" if ok else "FAILED"}: {name} = {value} ({limit})', flush=True)
        self.save()
        return ok


# ----------------------------------------------------------------------------------------------
# helpers


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


def run_logged(cmd: list[str], *, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    """Run ``cmd`` with its output copied to this step's log; returns ``(returncode, output)``."""
    print(f'$ {" ".join(map(str, cmd))}', flush=True)
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors='replace')
    lines = []
    for line in proc.stdout:
        print(line, end='', flush=True)
        lines.append(line)
    return proc.wait(), ''.join(lines)


def child_env(threads: int | None = None, **extra: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED='1', **extra)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions (torch's defaults: off for matmuls, on for cuDNN convolutions)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_defaults() -> tuple[bool, bool]:
    import torch

    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def rel_max(got, want) -> float:
    """max |got - want| / max |want| over all elements."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))


def rel_l2(got, want) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


def model_args(ctx: Context, scale: int, *extra: str):
    """Our parsed options for the step's LCoAN configuration (placement is up to the caller)."""
    import option

    return option.parse_args(['--model', 'LCoAN', *ctx.sizes['model'], '--rgb_range', '1', '--scale', str(scale),
                              '--patch_size', str(48 * scale), '--cpu', *extra])


def ours(ctx: Context, scale: int, impl: str = 'fast'):
    """Our LCoAN, seeded weights, centroids initialised as in a trained checkpoint."""
    import torch
    from _common import initialise_centroids

    from model import lcoan

    torch.manual_seed(0)
    net = lcoan.make_model(model_args(ctx, scale, '--attention_impl', impl))
    initialise_centroids(net)
    return net


def official(ctx: Context, scale: int):
    """The official LCoAN (``--official_src``) in the same configuration, centroids initialised."""
    import torch
    from _common import initialise_centroids
    from _official import official_lcoan

    src = official_lcoan(ctx.cfg['official_src'])
    args = model_args(ctx, scale)
    torch.manual_seed(0)
    with src.imports():
        net = src.module('model.lcoan').make_model(args)
    initialise_centroids(net)
    return net


def fixed_input(*shape: int, seed: int):
    import torch

    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def autocast(precision: str, device: str):
    import contextlib

    import torch

    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


def measure(fn: Callable[[], object], device: str, *, warmup: int, repeats: int, case_seconds: float) -> dict:
    """Median and minimum time of ``fn`` after ``warmup`` calls, and the peak CUDA memory of the timed calls.

    Fewer repeats (at least 2, if asked for) when the last warm-up call shows they would take more than
    ``case_seconds``.
    """
    import torch

    cuda = device == 'cuda'

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warm = [timed() for _ in range(max(warmup, 1))]
    repeats = max(min(2, repeats), min(repeats, int(case_seconds / max(warm[-1], 1e-6))))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else None
    times = [timed() * 1e3 for _ in range(repeats)]
    return {'median_ms': round(statistics.median(times), 3), 'min_ms': round(min(times), 3),
            'times_ms': [round(t, 3) for t in times], 'first_ms': round(warm[0] * 1e3, 3), 'repeats': repeats,
            'peak_mb': round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            'base_mb': round(base / 2**20, 1) if cuda else None}


def forward_fn(net, x, precision: str, device: str) -> Callable[[], object]:
    import torch

    def run():
        with torch.no_grad(), autocast(precision, device):
            return net(x)
    return run


def train_fn(net, scale: int, side: int, batch: int, precision: str, device: str) -> Callable[[], object]:
    """One Adam step on L1 with ``batch`` random LR patches (bf16: autocast, no loss scaling, as main.py)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    lr = fixed_input(batch, 3, side, side, seed=5).to(device)
    hr = fixed_input(batch, 3, side * scale, side * scale, seed=6).to(device)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            sr = net(lr)
        F.l1_loss(sr.float(), hr).backward()
        optimizer.step()
    return run


def free_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


def parse_pytest(output: str) -> dict:
    """Counts from pytest's closing line and the names in its short summary (FAILED/ERROR lines)."""
    counts = {}
    for line in reversed(output.splitlines()):
        found = re.findall(r'(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)', line)
        collected = re.search(r'(\d+)(?:/\d+)? tests? collected', line)
        if found or collected:
            for number, word in found:
                counts[{'error': 'errors', 'warning': 'warnings'}.get(word, word)] = int(number)
            if collected:
                counts['collected'] = int(collected.group(1))
            break
    problems = [line.strip() for line in output.splitlines() if line.startswith(('FAILED ', 'ERROR '))]
    return {'counts': counts, 'problems': problems[:40]}


def pytest_command(ctx: Context, *args: str) -> list[str]:
    return [ctx.python, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *args, 'tests']


def run_folder(ctx: Context, name: str) -> Path:
    return ctx.work / 'exp' / name


def run_flags(ctx: Context, name: str, epochs: int, *, fresh: bool = True) -> list[str]:
    """main.py flags of a training run ``name`` under the work folder (the device as the step's)."""
    flags = [*ctx.sizes['run'], '--dir_data', str(ctx.work / 'dataset'), '--save_dir', str(ctx.work / 'exp'),
             '--seed', '1', '--epochs', str(epochs)]
    flags += ['--save', name, '--reset'] if fresh else ['--load', name, '--resume', '-1']
    if ctx.device == 'cpu':
        flags.append('--cpu')
    return flags


def read_run(folder: Path) -> dict:
    """PSNR and loss per epoch, training seconds per epoch and the device line of a main.py run folder."""
    out: dict = {'psnr': [], 'loss': [], 'epoch_s': []}
    with open(folder / 'psnr_log.csv', newline='') as f:
        out['psnr'] = [float(row['psnr']) for row in csv.DictReader(f)]
    with open(folder / 'loss_log.csv', newline='') as f:
        out['loss'] = [float(next(v for k, v in row.items() if k != 'epoch')) for row in csv.DictReader(f)]
    log = (folder / 'log.txt').read_text(errors='replace')
    out['epoch_s'] = [float(s) for s in re.findall(r'\[Epoch \d+\] mean .* in ([\d.]+)s', log)]
    made = re.findall(r'Made \S+ with ([\d,]+) parameters on (\S+)\.', log)
    if made:
        out['parameters'], out['device'] = int(made[-1][0].replace(',', '')), made[-1][1]
    out['resumed'] = bool(re.search(r'Resumed .* after epoch \d+', log))
    out['final_psnr'] = out['psnr'][-1] if out['psnr'] else None
    after = out['epoch_s'][1:]
    out['epoch_s_after_first'] = sum(after) / len(after) if after else None
    return out


def run_main(ctx: Context, flags: list[str], env: dict | None = None, launcher: list[str] | None = None):
    cmd = [*(launcher or [ctx.python]), 'main.py', *flags]
    return run_logged(cmd, cwd=ctx.src, env=env or child_env())


# ----------------------------------------------------------------------------------------------
# steps


def environment(ctx: Context) -> None:
    import torch

    cuda = torch.cuda.is_available()
    machine = {
        'python': platform.python_version(), 'platform': platform.platform(), 'cpus': os.cpu_count(),
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),
        'cuda_available': cuda, 'gpu': None, 'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        'float32_matmul_precision': torch.get_float32_matmul_precision(),
    }
    machine['tf32_matmul'], machine['tf32_cudnn'] = tf32_defaults()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       capability=f'{props.major}.{props.minor}', gpus=torch.cuda.device_count(),
                       bf16_supported=torch.cuda.is_bf16_supported())
        try:
            nccl = torch.cuda.nccl.version()
            machine['nccl'] = '.'.join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as e:  # a build without NCCL is worth recording, not failing on
            machine['nccl'] = _short(e)
    ctx.record(machine=machine)
    print(json.dumps(machine, indent=1), flush=True)
    try:
        smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,memory.used',
                              '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
        ctx.record(nvidia_smi=smi.stdout.strip() or smi.stderr.strip())
    except (OSError, subprocess.TimeoutExpired) as e:
        ctx.record(nvidia_smi=_short(e))
    # (import name, distribution, needed by the code rather than only by this check's extras)
    packages = [('numpy', 'numpy', True), ('imageio', 'imageio', True), ('skimage', 'scikit-image', True),
                ('tqdm', 'tqdm', True), ('matplotlib', 'matplotlib', True), ('tensorboard', 'tensorboard', True),
                ('einops', 'einops', True), ('bicubic_pytorch', 'bicubic-pytorch', True), ('png', 'pypng', True),
                ('PIL', 'pillow', True), ('onnx', 'onnx', False), ('onnxscript', 'onnxscript', False),
                ('onnxruntime', 'onnxruntime', False), ('pytest', 'pytest', False), ('xdist', 'pytest-xdist', False),
                ('pytest_timeout', 'pytest-timeout', False), ('triton', 'triton', False),
                ('tifffile', 'tifffile', False)]
    versions, missing = {}, []
    for module, dist, needed in packages:
        found = importlib.util.find_spec(module) is not None
        try:
            versions[dist] = importlib.metadata.version(dist) if found else None
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = 'present' if found else None
        if needed and not found:
            missing.append(dist)
    ctx.record(packages=versions)
    ctx.check('packages of requirements.txt importable', ', '.join(missing) or 'all', 'none missing', not missing)
    if not ctx.smoke:
        ctx.check('CUDA available', cuda, 'True', cuda)
    if cuda:
        a = torch.randn(256, 256, device='cuda')
        value = float((a @ a).sum().cpu())
        ctx.check('a CUDA matmul gives a finite number', value, 'finite', math.isfinite(value))


def pytest_cuda(ctx: Context) -> None:
    rc, output = run_logged(pytest_command(ctx, '-m', 'cuda', '-rfEs'), cwd=ctx.repo,
                            env=child_env(2 if ctx.smoke else 8))
    result = parse_pytest(output)
    ctx.record(returncode=rc, **result)
    counts = result['counts']
    selected = sum(counts.get(k, 0) for k in ('passed', 'failed', 'skipped', 'errors', 'xfailed', 'xpassed'))
    ctx.check('tests marked cuda', selected, '>= 1', selected >= 1)
    ctx.check('failed or erroring tests', counts.get('failed', 0) + counts.get('errors', 0), '0',
              rc == 0 and not counts.get('failed') and not counts.get('errors'))
    if selected and counts.get('skipped', 0) == selected and ctx.device == 'cpu':
        raise Skip(f'no CUDA: {selected} tests selected, all skipped')


def attention(ctx: Context) -> None:
    """The paper network with fast and with reference attention kernels, same weights, one training-mode
    forward and backward on ``device``: outputs and parameter gradients, fp32 and bf16 autocast."""
    import torch
    import torch.nn.functional as F

    ctx.needs_cuda()
    device = ctx.device
    set_tf32(False)
    batch, side = ctx.sizes['attention_input']
    fast = ours(ctx, 2, 'fast')
    reference = ours(ctx, 2, 'reference')
    reference.load_state_dict(fast.state_dict())
    lr = fixed_input(batch, 3, side, side, seed=1).to(device)
    hr = fixed_input(batch, 3, 2 * side, 2 * side, seed=2).to(device)

    def run(net, precision):
        net = copy.deepcopy(net).to(device).train()  # a fresh copy: training-mode forwards move the centroids
        params = [p for p in net.parameters() if p.requires_grad]
        with autocast(precision, device):
            sr = net(lr)
        loss = F.l1_loss(sr.float(), hr)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                          for g, p in zip(grads, params, strict=True)])
        return sr.detach().float().cpu(), flat.cpu()

    results = {(impl, precision): run(net, precision) for precision in ('fp32', 'bf16')
               for impl, net in (('fast', fast), ('reference', reference))}
    data = {}
    for part, index in (('output', 0), ('gradients', 1)):
        fp32 = rel_max(results['fast', 'fp32'][index], results['reference', 'fp32'][index])
        fast_err = rel_max(results['fast', 'bf16'][index], results['reference', 'fp32'][index])
        ref_err = rel_max(results['reference', 'bf16'][index], results['reference', 'fp32'][index])
        data[part] = {'fp32_fast_vs_reference': fp32,
                      'bf16_fast_vs_reference': rel_max(results['fast', 'bf16'][index],
                                                        results['reference', 'bf16'][index]),
                      'bf16_fast_vs_fp32': fast_err, 'bf16_reference_vs_fp32': ref_err}
        ctx.record(**data, device=device, input=[batch, 3, side, side])
        ctx.check(f'fp32 {part}: max |fast - reference| / max |reference|', fp32, f'<= {FP32_TOL:g}',
                  fp32 <= FP32_TOL)
        ctx.check(f'bf16 {part}: error of fast vs fp32 (reference bf16: {ref_err:.3g})', fast_err,
                  f'<= {BF16_ERROR_FACTOR:g} x reference + {BF16_SLACK:g}',
                  fast_err <= BF16_ERROR_FACTOR * ref_err + BF16_SLACK)


def cpu_vs_device(ctx: Context) -> None:
    import torch

    ctx.needs_cuda()
    device = ctx.device
    defaults = tf32_defaults()
    side = ctx.sizes['compare_side']
    net = ours(ctx, 2).eval()
    x = fixed_input(1, 3, side, side, seed=3)
    with torch.no_grad():
        want = net(x)
    moved = copy.deepcopy(net).to(device)
    set_tf32(False)
    with torch.no_grad():
        got = moved(x.to(device)).cpu()
    error = rel_max(got, want)
    ctx.record(device=device, input=[1, 3, side, side], rel_max_fp32=error, rel_l2_fp32=rel_l2(got, want))
    ctx.check(f'fp32, TF32 off: max |{device} - cpu| / max |cpu|', error, f'<= {FP32_TOL:g}', error <= FP32_TOL)
    if device == 'cuda':  # what a user's run computes: torch's default TF32 settings
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = defaults
        with torch.no_grad():
            got = moved(x.to(device)).cpu()
        ctx.record(rel_max_default_tf32=rel_max(got, want), rel_l2_default_tf32=rel_l2(got, want),
                   default_tf32={'matmul': defaults[0], 'cudnn': defaults[1]})


class _PrintLog:
    def write_log(self, msg: str) -> None:
        print(msg, flush=True)


def chop_self_ensemble(ctx: Context) -> None:
    """The ``model.Model`` wrapper with --chop, --self_ensemble and both, on ``device`` and on the CPU."""
    import torch

    import model as wrapper_module

    ctx.needs_cuda()
    device = ctx.device
    set_tf32(False)
    state = ours(ctx, 2).state_dict()
    e = ctx.sizes['ensemble_side']
    cases = {'chop': (['--chop', *ctx.sizes['chop_flags']], ctx.sizes['chop_input']),
             'self_ensemble': (['--self_ensemble'], (e, e)),
             'chop+self_ensemble': (['--chop', *ctx.sizes['chop_flags'], '--self_ensemble'],
                                    ctx.sizes['chop_ensemble_input'])}

    def wrapper(flags, where, precision='single'):
        args = model_args(ctx, 2, *flags, '--precision', precision)
        args.device = where
        m = wrapper_module.Model(args, _PrintLog())
        m.get_model().load_state_dict(state)
        return m.eval()

    results = {}
    for name, (flags, (hh, ww)) in cases.items():
        x = fixed_input(1, 3, hh, ww, seed=4)
        want = wrapper(flags, 'cpu')(x)
        got = wrapper(flags, device)(x.to(device))
        error = rel_max(got.cpu(), want)
        results[name] = {'input': [1, 3, hh, ww], 'rel_max_fp32': error, 'shape': list(got.shape),
                         'dtype': str(got.dtype), 'device': str(got.device)}
        ctx.record(cases=results, device=device)
        ctx.check(f'{name}: shape, float32 and on {device}', list(got.shape),
                  f'[1, 3, {2 * hh}, {2 * ww}] float32',
                  list(got.shape) == [1, 3, 2 * hh, 2 * ww] and got.dtype == torch.float32
                  and got.device.type == device)
        ctx.check(f'{name} fp32, TF32 off: max |{device} - cpu| / max |cpu|', error, f'<= {FP32_TOL:g}',
                  error <= FP32_TOL)
        if name == 'chop+self_ensemble':
            bf16 = wrapper(flags, device, 'bf16')(x.to(device)).cpu()
            results[name]['rel_max_bf16_vs_fp32_cpu'] = rel_max(bf16, want)
            ctx.record(cases=results)
            ctx.check(f'{name} --precision bf16 output finite', bool(torch.isfinite(bf16).all()), 'True',
                      bool(torch.isfinite(bf16).all()))


def _train(ctx: Context, name: str, *extra: str) -> dict:
    """A short main.py run ``name`` with the flags ``extra``; compared with the plain fp32 run (train_fp32) when
    that one exists: the final PSNR difference and the seconds per epoch after the first as a ratio."""
    ctx.needs_cuda()
    epochs = ctx.sizes['epochs']
    flags = run_flags(ctx, name, epochs) + list(extra)
    rc, _ = run_main(ctx, flags)
    ctx.record(returncode=rc, flags=flags)
    ctx.check('main.py exit status', rc, '0', rc == 0)
    run = read_run(run_folder(ctx, name))
    steps = epochs * int(flags[flags.index('--test_every') + 1])
    ctx.record(**run, epochs=epochs, steps=steps)
    final = run['final_psnr']
    ctx.check('epochs evaluated', len(run['psnr']), f'{epochs}', len(run['psnr']) == epochs)
    ctx.check('final PSNR (dB) finite', final, 'finite', final is not None and math.isfinite(final))
    ctx.check('network on', run.get('device'), ctx.device, str(run.get('device', '')).startswith(ctx.device))
    if name == 'train_fp32':
        return run
    try:
        fp32 = read_run(run_folder(ctx, 'train_fp32'))
    except OSError:
        return run
    if fp32['final_psnr'] is not None and final is not None:
        ctx.record(fp32_final_psnr=fp32['final_psnr'], psnr_minus_fp32_db=final - fp32['final_psnr'])
    if fp32['epoch_s_after_first'] and run['epoch_s_after_first']:
        ctx.record(epoch_time_over_fp32=run['epoch_s_after_first'] / fp32['epoch_s_after_first'])
    return run


def train_fp32(ctx: Context) -> None:
    _train(ctx, 'train_fp32', '--precision', 'single')


def train_bf16(ctx: Context) -> None:
    _train(ctx, 'train_bf16', '--precision', 'bf16')


def train_compile(ctx: Context) -> None:
    """The fp32 run with ``--compile``: its first epoch pays for compiling, the later ones are compared (the same
    seed; not bit-identical: other kernels)."""
    ctx.record(backend=ctx.sizes['compile_backend'])
    _train(ctx, 'train_compile', '--precision', 'single', '--compile', ctx.sizes['compile_backend'])


def resume(ctx: Context) -> None:
    """A run stopped after half its epochs and resumed with --load --resume -1 against the same run straight
    through, both with --deterministic: the same numbers to the last bit (CUDA's default kernels are not
    bit-reproducible, which the fp32 run against the straight one here also measures)."""
    ctx.needs_cuda()
    epochs = ctx.sizes['epochs']
    half = epochs // 2
    rc, _ = run_main(ctx, run_flags(ctx, 'straight', epochs) + ['--deterministic'])
    ctx.check(f'main.py --epochs {epochs} --deterministic exit status', rc, '0', rc == 0)
    rc, _ = run_main(ctx, run_flags(ctx, 'resume', half) + ['--deterministic'])
    ctx.check(f'main.py --epochs {half} --deterministic exit status', rc, '0', rc == 0)
    rc, _ = run_main(ctx, run_flags(ctx, 'resume', epochs, fresh=False) + ['--deterministic'])
    ctx.check('main.py --load resume --resume -1 exit status', rc, '0', rc == 0)
    resumed, straight = read_run(run_folder(ctx, 'resume')), read_run(run_folder(ctx, 'straight'))
    default = read_run(run_folder(ctx, 'train_fp32'))
    ctx.record(resumed_psnr=resumed['psnr'], straight_psnr=straight['psnr'], resumed_loss=resumed['loss'],
               straight_loss=straight['loss'], default_kernels_psnr=default['psnr'],
               exact=resumed['psnr'] == straight['psnr'] and resumed['loss'] == straight['loss'])
    ctx.check('the log says it resumed', resumed['resumed'], 'True', resumed['resumed'])
    ctx.check('epochs evaluated', len(resumed['psnr']), f'{epochs}', len(resumed['psnr']) == epochs)
    if resumed['final_psnr'] is not None and straight['final_psnr'] is not None:
        delta = abs(resumed['final_psnr'] - straight['final_psnr'])
        ctx.check('|final PSNR resumed - straight| (dB), both --deterministic', delta, f'<= {RESUME_TOL_DB}',
                  delta <= RESUME_TOL_DB)
        if default['final_psnr'] is not None:
            ctx.record(default_kernels_delta_db=abs(default['final_psnr'] - straight['final_psnr']))


def upscale(ctx: Context) -> None:
    """upscale.py with the fp32 run's checkpoint on the Sample LR images: on ``device``, on the CPU, tiled."""
    import imageio.v3 as iio
    import numpy as np

    ctx.needs_cuda()
    weights = run_folder(ctx, 'train_fp32') / 'model' / 'model_latest.pt'
    inputs = ctx.work / 'dataset' / 'benchmark' / 'Sample' / 'LR_bicubic' / 'X2'
    device_flags = ['--cpu'] if ctx.device == 'cpu' else []
    runs = {'tiled': [*device_flags, '--tile', str(ctx.sizes['upscale_tile'])]}
    if ctx.device != 'cpu':  # on the CPU (--smoke) these would repeat the tiled run's code without the tiles
        runs.update(device=[], cpu=['--cpu'])
    outputs = {}
    for name, flags in runs.items():
        out = ctx.work / 'upscale' / name
        rc, _ = run_logged([ctx.python, str(ctx.src / 'upscale.py'), str(inputs), '--weights', str(weights), '-o',
                            str(out), '--overwrite', *flags], cwd=ctx.repo, env=child_env(2 if ctx.smoke else None))
        outputs[name] = sorted(out.glob('*.png'))
        ctx.record(**{f'{name}_returncode': rc, f'{name}_images': len(outputs[name])})
        ctx.check(f'upscale.py {" ".join(flags) or "(" + ctx.device + ")"}: exit status', rc, '0', rc == 0)
        ctx.check(f'{name}: images written', len(outputs[name]), '>= 1', len(outputs[name]) >= 1)

    def psnr(a: Path, b: Path) -> float:
        x, y = iio.imread(a).astype(np.float64), iio.imread(b).astype(np.float64)
        mse = float(((x - y) ** 2).mean())
        return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)

    for other, limit in (('cpu', UPSCALE_MIN_PSNR_DB), ('tiled', None)):
        if other not in outputs or 'device' not in outputs:
            continue
        values = [psnr(a, b) for a, b in zip(outputs['device'], outputs[other], strict=False)]
        worst = min(values) if values else None
        ctx.record(**{f'psnr_device_vs_{other}_db': values})
        if limit is not None:
            ctx.check(f'PSNR of {ctx.device} vs cpu images (dB, worst)', worst, f'>= {limit}',
                      worst is not None and worst >= limit)


def torchrun(ctx: Context) -> None:
    """main.py under ``torchrun --standalone --nproc_per_node 1``: NCCL on CUDA (gloo on the CPU), one epoch."""
    ctx.needs_cuda()
    backend = 'gloo' if ctx.device == 'cpu' else 'nccl'
    flags = run_flags(ctx, 'torchrun', 1) + ['--dist_timeout', '60']
    env = child_env(2 if ctx.smoke else None, NCCL_DEBUG='INFO', NCCL_DEBUG_SUBSYS='INIT')
    launcher = [ctx.python, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1']
    rc, output = run_main(ctx, flags, env=env, launcher=launcher)
    version = re.search(r'NCCL version ([\w.+-]+)', output)
    ctx.record(returncode=rc, backend=backend, nccl_version=version.group(1) if version else None)
    ctx.check('torchrun exit status', rc, '0', rc == 0)
    if backend == 'nccl':
        ctx.check('NCCL initialised (NCCL_DEBUG=INFO lines)', 'NCCL INFO' in output, 'True', 'NCCL INFO' in output)
    run = read_run(run_folder(ctx, 'torchrun'))
    ctx.record(**run)
    ctx.check('epoch 1 trained and evaluated', len(run['psnr']), '1', len(run['psnr']) == 1
              and run['final_psnr'] is not None and math.isfinite(run['final_psnr']))


def _bench(ctx: Context, build: Callable[[int], object]) -> None:
    """Forward (eval, no grad) at every size and one training step, in fp32 and bf16 autocast, eager."""
    ctx.needs_cuda()
    s = ctx.sizes
    device = ctx.device
    timing = dict(warmup=s['warmup'], repeats=s['repeats'], case_seconds=s['case_seconds'])
    cases: dict = {}

    def attempt(name: str, factory: Callable[..., Callable[[], object]], *args) -> None:
        try:
            cases[name] = measure(factory(*args), device, **timing)
        except Exception as e:  # one case (an OOM, a dtype the official code refuses) stops only itself
            cases[name] = {'error': _short(e)}
            traceback.print_exc()
        print(f'{name}: {cases[name]}', flush=True)
        free_memory(device)
        ctx.record(cases=cases, device=device)

    for scale in dict.fromkeys(scale for scale, _ in s['forward_cases']):
        net = build(scale).to(device).eval()
        for _, side in [c for c in s['forward_cases'] if c[0] == scale]:
            x = fixed_input(1, 3, side, side, seed=7).to(device)
            for precision in ('fp32', 'bf16'):
                attempt(f'forward x{scale} LR {side} {precision}', forward_fn, net, x, precision, device)
        del net
        free_memory(device)
    scale, side, batch = s['train_case']
    for precision in ('fp32', 'bf16'):
        net = build(scale).to(device).train()
        attempt(f'train x{scale} {batch}x{side}x{side} {precision}', train_fn, net, scale, side, batch, precision,
                device)
        del net
        free_memory(device)
    failed = [name for name, c in cases.items() if 'error' in c]
    ctx.check('cases measured', f'{len(cases) - len(failed)} of {len(cases)}',
              'all' + (f' (failed: {", ".join(failed)})' if failed else ''), not failed)


def bench_ours(ctx: Context) -> None:
    _bench(ctx, lambda scale: ours(ctx, scale))


def bench_official(ctx: Context) -> None:
    ctx.needs_cuda()
    if not ctx.cfg.get('official_src'):
        raise Skip('no --official_src given')
    _bench(ctx, lambda scale: official(ctx, scale))


def _graph_breaks(clear: bool = False) -> int | None:
    """Graph breaks counted by dynamo since the last clear (a private counter: None where it moved)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    breaks = counters.get('graph_break', {})
    total = int(sum(breaks.values()))
    if clear:
        counters.clear()
    return total


def bench_compile(ctx: Context) -> None:
    """torch.compile of our network against eager, in one process: the first call's time (compilation
    included) and the median after it; forward first, then the training step, fp32 before bf16."""
    import torch

    from model import compiling

    ctx.needs_cuda()
    s = ctx.sizes
    device = ctx.device
    backend = s['compile_backend']
    timing = dict(warmup=s['warmup'], repeats=s['repeats'], case_seconds=s['case_seconds'])
    ctx.record(backend=backend, device=device, cases={})
    fscale, fside = s['compile_forward']
    tscale, tside, batch = s['train_case']
    forward_name, train_name = f'forward x{fscale} LR {fside}', f'train x{tscale} {batch}x{tside}x{tside}'
    plan = [(f'{name} {precision}', kind, precision) for precision in s['compile_precisions']
            for name, kind in ((forward_name, 'forward'), (train_name, 'train'))]
    cases = ctx.data['cases']
    for name, kind, precision in plan:
        entry = cases[name] = {}
        try:
            torch._dynamo.reset()
            compiling.fence()
            _graph_breaks(clear=True)
            if kind == 'forward':
                net = ours(ctx, fscale).to(device).eval()
                x = fixed_input(1, 3, fside, fside, seed=7).to(device)
                eager = measure(forward_fn(net, x, precision, device), device, **timing)
                entry.update(eager_median_ms=eager['median_ms'], eager_peak_mb=eager['peak_mb'])
                ctx.record(cases=cases)
                compiled = torch.compile(net, backend=backend)
                fn = forward_fn(compiled, x, precision, device)
            else:
                net = ours(ctx, tscale).to(device).train()
                eager = measure(train_fn(copy.deepcopy(net), tscale, tside, batch, precision, device), device, **timing)
                entry.update(eager_median_ms=eager['median_ms'], eager_peak_mb=eager['peak_mb'])
                ctx.record(cases=cases)
                compiled = torch.compile(net, backend=backend)
                fn = train_fn(compiled, tscale, tside, batch, precision, device)
            start = time.perf_counter()
            fn()
            if device == 'cuda':
                torch.cuda.synchronize()
            entry['compile_s'] = round(time.perf_counter() - start, 2)
            entry['graph_breaks'] = _graph_breaks()
            ctx.record(cases=cases)
            result = measure(fn, device, **timing)
            entry.update(compiled_median_ms=result['median_ms'], compiled_peak_mb=result['peak_mb'],
                         compiled_times_ms=result['times_ms'])
        except Exception as e:  # a failed compilation is a result: recorded, the next case runs
            entry['error'] = _short(e)
            traceback.print_exc()
        print(f'{name}: {entry}', flush=True)
        ctx.record(cases=cases)
        free_memory(device)
    # A compilation that fails is a finding about the code, not a failure of this check: it is recorded
    # (summary.md's compile table and goals) and the step only fails when eager itself fails.
    eager_failed = [name for name, e in cases.items() if 'eager_median_ms' not in e]
    ctx.record(compile_failed=[name for name, e in cases.items() if 'error' in e])
    ctx.check('eager cases measured', f'{len(cases) - len(eager_failed)} of {len(cases)}',
              'all' + (f' (failed: {", ".join(eager_failed)})' if eager_failed else ''), not eager_failed)


def pytest_fast(ctx: Context) -> None:
    """The fast suite on this machine's torch (in --smoke only collected: CI runs it)."""
    args = ['-m', 'not slow', '-rfE']
    if ctx.smoke:
        args.append('--collect-only')
    else:
        if importlib.util.find_spec('xdist') is not None:
            args += ['-n', '8']
        if importlib.util.find_spec('pytest_timeout') is not None:
            args += ['--timeout', '60']
    rc, output = run_logged(pytest_command(ctx, *args), cwd=ctx.repo, env=child_env(ctx.sizes['pytest_threads']))
    result = parse_pytest(output)
    ctx.record(returncode=rc, args=args, **result)
    counts = result['counts']
    ran = counts.get('collected', 0) + sum(counts.get(k, 0) for k in ('passed', 'failed', 'skipped', 'errors'))
    ctx.check('tests collected or run', ran, '>= 1', ran >= 1)
    ctx.check('failed or erroring tests', counts.get('failed', 0) + counts.get('errors', 0), '0',
              rc == 0 and not counts.get('failed') and not counts.get('errors'))


STEP_FUNCTIONS = {f.__name__: f for f in (environment, pytest_cuda, attention, cpu_vs_device, chop_self_ensemble,
                                          train_fp32, train_bf16, train_compile, resume, upscale, torchrun, bench_ours,
                                          bench_official, bench_compile, pytest_fast)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description='Run one step of the GPU check (used by gpu_check.py).')
    p.add_argument('--step', required=True, choices=sorted(STEP_FUNCTIONS))
    p.add_argument('--config', required=True, type=Path)
    p.add_argument('--result', required=True, type=Path)
    opts = p.parse_args(argv)
    for path in (str(SRC), str(BENCH_DIR)):  # our modules as main.py sees them, and the benchmarks' helpers
        if path not in sys.path:
            sys.path.insert(0, path)
    cfg = json.loads(opts.config.read_text())
    ctx = Context(cfg, opts.step, opts.result)
    ctx.save()
    print(f'step {opts.step} ({"smoke" if ctx.smoke else "full"}) in {ctx.repo}', flush=True)
    try:
        if cfg.get('fail_step') == opts.step:
            raise RuntimeError('injected failure (--fail_step)')
        STEP_FUNCTIONS[opts.step](ctx)
        failed = [c['name'] for c in ctx.checks if not c['ok']]
        ctx.status = 'failed' if failed else 'ok'
        ctx.reason = f'failed check(s): {"; ".join(failed)}' if failed else None
    except Skip as e:
        ctx.status, ctx.reason = 'skipped', str(e)
        print(f'skipped: {e}', flush=True)
    except BaseException as e:  # the driver reads the result file; the traceback is in the log
        ctx.status, ctx.error = 'failed', _short(e)
        traceback.print_exc()
    ctx.save()
    return 0 if ctx.status in ('ok', 'skipped') else 1


if __name__ == '__main__':
    sys.exit(main())
