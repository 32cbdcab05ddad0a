"""--compile: the C++ compiler check agrees with inductor's own search, and TorchDynamo is imported only when
something is compiled."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from helpers import SRC
from model import compiling

_CHECK = ("import sys, torch; sys.path.insert(0, {src!r}); from core.errors import UserError; "
          "from model import compiling\n"
          "try:\n    compiling.check_compiler('inductor', torch.device('cpu')); print('accepted')\n"
          "except UserError as e:\n    print(e)")


def _fake_compiler(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text('#!/bin/sh\necho fake 1.0\n')
    path.chmod(0o755)
    return path


def _check_with(path: Path, cxx: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != 'CXX'}
    env.update(PATH=str(path), OMP_NUM_THREADS='1')
    env.pop('TORCH_INDUCTOR_INSTALL_GXX', None)
    if cxx is not None:
        env['CXX'] = cxx
    out = subprocess.run([sys.executable, '-c', _CHECK.format(src=str(SRC))], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_the_compiler_check_is_inductors_search(tmp_path):
    """inductor runs $CXX, else g++: c++ and clang++ on the PATH do not count, a g++ or a $CXX does."""
    others = tmp_path / 'others'
    others.mkdir()
    _fake_compiler(others, 'c++')
    _fake_compiler(others, 'clang++')
    refused = _check_with(others, None)
    assert refused.startswith('--compile inductor on the CPU needs the C++ compiler inductor runs (g++; ')
    assert refused.endswith('or give --compile eager, or leave out --compile')
    gxx = tmp_path / 'gxx'
    gxx.mkdir()
    _fake_compiler(gxx, 'g++')
    assert _check_with(gxx, None) == 'accepted'
    assert _check_with(others, str(_fake_compiler(tmp_path, 'my-cxx'))) == 'accepted'
    missing = _check_with(gxx, str(tmp_path / 'no-such-cxx'))  # $CXX replaces g++ in inductor's search
    assert f'({tmp_path / "no-such-cxx"}; ' in missing


def test_no_compiler_is_needed_without_inductor_on_the_cpu():
    compiling.check_compiler('eager', torch.device('cpu'))  # no code generation
    compiling.check_compiler('inductor', torch.device('cuda'))  # Triton kernels, not C++


def test_a_user_error_type_is_raised(monkeypatch):
    from torch._inductor import cpp_builder, exc

    def missing():
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, 'get_cpp_compiler', missing)
    with pytest.raises(UserError, match=r'--compile inductor on the CPU needs the C\+\+ compiler'):
        compiling.check_compiler('inductor', torch.device('cpu'))


IMPORTS = ('from model import lcoan', 'import main', 'import api', 'import upscale')
# An upscale.py run, start to end: TorchDynamo stays out of its start-up time and memory.
UPSCALING = """
import imageio.v3 as iio, numpy as np, torch, warnings
from model.lcoan import LCoAN
import upscale
net = LCoAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2, n_clusters=4, window_size=16)
with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter('ignore')
    net.eval()(torch.rand(1, 3, 16, 16))
torch.save(net.state_dict(), 'w.pt')
iio.imwrite('in.png', np.zeros((12, 10, 3), np.uint8))
assert upscale.main(['--weights', 'w.pt', 'in.png', '-o', 'out']) == 0, 'upscale failed'
"""


@pytest.fixture(scope='module')
def dynamo_imported(tmp_path_factory) -> dict[str, bool]:
    """Whether torch._dynamo is loaded after each of :data:`IMPORTS`, then :data:`UPSCALING`, run in this
    order in one fresh process: each adds to what ran before, so the first that loads it is the one to blame."""
    steps = [*IMPORTS, UPSCALING]
    script = ['import json, sys', f'sys.path.insert(0, {str(SRC)!r})']
    for i, body in enumerate(steps):
        script += [body, f"print(json.dumps([{i}, 'torch._dynamo' in sys.modules]))"]
    out = subprocess.run([sys.executable, '-c', '\n'.join(script)], cwd=tmp_path_factory.mktemp('dynamo'),
                         capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert out.returncode == 0, out.stderr
    seen = dict(json.loads(line) for line in out.stdout.splitlines() if line.startswith('['))
    return {body: seen[i] for i, body in enumerate(steps)}


@pytest.mark.parametrize('body', IMPORTS)
def test_importing_imports_no_dynamo(body, dynamo_imported):
    assert dynamo_imported[body] is False


def test_upscaling_imports_no_dynamo(dynamo_imported):
    assert dynamo_imported[UPSCALING] is False


def test_fence_wraps_the_marked_functions_where_they_are_defined():
    from model.blocks import lcoa

    compiling.fence()
    assert getattr(lcoa._read_flag, '_torchdynamo_disable', False)
    assert getattr(lcoa.KMeansCentroids.initialise, '_torchdynamo_disable', False)
    assert lcoa._read_flag(torch.tensor(True)) is True
