"""Seeds and the state of every random number generator a run uses, saved with ``weights_only=True``."""

import contextlib
import os
import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from ``parts`` (e.g. seed, epoch, rank) so that streams do not overlap."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def seed_everything(seed: int, generator: torch.Generator | None = None) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators, and ``generator``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = 'cpu'):
    """torch's generators of the CPU and ``device`` seeded with ``seed`` inside, restored after (None: as is).

    A network that draws random numbers in its forward (NLSN's hashing) then gives one output per image
    and seed, whatever ran before, and the caller's random stream is left as it was.
    """
    if seed is None:
        yield
        return
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: the same seed gives bit-identical runs on CUDA too, with deterministic kernels.

    The CPU kernels are deterministic already. On CUDA, kernels that accumulate with atomics (and
    cuDNN's autotuned algorithms) change the last bits from run to run, which a training run amplifies
    into visibly different numbers after a few hundred steps. Kernels without a deterministic
    version warn once (``warn_only``) instead of stopping the run.
    """
    if not enabled:
        return
    # cuBLAS reads its workspace setting when it starts: before the first CUDA matrix product.
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def get_rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG state as tensors and plain types, so that it loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': version, 'internal': list(internal), 'gauss_next': gauss_next},
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'loader': generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`get_rng_state` saved (CUDA states only on the same number of devices)."""
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['internal']), p['gauss_next']))
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    if generator is not None and state['loader'] is not None:
        generator.set_state(state['loader'])
