"""``--compile``: the functions that run outside a compiled graph, the C++ compiler inductor needs, and compiling.

TorchDynamo (``torch._dynamo``) costs about 1.8 s and 70 MB to import, so nothing imports it unless a network
is compiled. ``torch.compiler.disable`` imports it, so it cannot decorate a function at import time: a
network's module marks such functions with :func:`outside_compiled_graph`, and :func:`fence` wraps them with
``torch.compiler.disable`` in place just before anything is compiled (:func:`compile_network`; code that calls
``torch.compile`` itself calls :func:`fence` first).
"""

import sys
from collections.abc import Callable

import torch
from torch import nn

from core.errors import UserError

_UNFENCED: list[Callable] = []


def outside_compiled_graph(fn: Callable) -> Callable:
    """Mark ``fn`` (a module-level function or a method, defined at import time) to run eagerly under
    ``torch.compile``; :func:`fence` wraps it in ``torch.compiler.disable`` where it is defined."""
    _UNFENCED.append(fn)
    return fn


def fence() -> None:
    """Wrap every function marked by :func:`outside_compiled_graph` in ``torch.compiler.disable``, in place
    (its module's or class's attribute is replaced, so calls by name reach the wrapped one)."""
    while _UNFENCED:
        fn = _UNFENCED.pop()
        owner = sys.modules[fn.__module__]
        *path, name = fn.__qualname__.split('.')
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, torch.compiler.disable(fn))


def eager_hook(fn: Callable) -> Callable:
    """``fn`` (a hook made at run time) to run outside any compiled graph: disabled for dynamo when dynamo is
    loaded, else ``fn`` itself (nothing is compiled in a process that never imported dynamo)."""
    if 'torch._dynamo' not in sys.modules:
        return fn
    return torch.compiler.disable(fn)


def check_compiler(backend: str, device: torch.device) -> None:
    """``--compile inductor`` on the CPU generates C++: without the compiler inductor looks for ($CXX, else
    g++; clang++ on macOS) it would fail at the first batch, deep inside torch, so it is refused here in one
    line. The compiler is found by inductor's own search."""
    if backend != 'inductor' or device.type != 'cpu':
        return
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        wanted = ' or '.join(c for c in ([config.cpp.cxx] if isinstance(config.cpp.cxx, str) else config.cpp.cxx)
                             if c)
        raise UserError(f'--compile inductor on the CPU needs the C++ compiler inductor runs ({wanted}; $CXX '
                        'names another) and it was not found: install it or set CXX, or give --compile eager, or '
                        'leave out --compile') from None


def compile_network(net: nn.Module, backend: str, device: torch.device) -> None:
    """``net.compile(backend=backend)`` in place (the network keeps its class and state_dict keys), after
    :func:`check_compiler` and :func:`fence`."""
    check_compiler(backend, device)
    fence()
    net.compile(backend=backend)
