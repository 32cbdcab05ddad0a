"""The layout that shows the design: few top-level modules, no model named outside its own file, docs for their
readers, and an import graph without cycles."""

import ast
import re

import pytest

import helpers
from model import registry

SRC = helpers.SRC
# Files that may name models: each architecture's own file, the registry (its default) and the presets.
MAY_NAME_MODELS = {SRC / 'template.py', SRC / 'model' / 'registry.py'} | {
    SRC / 'model' / f'{name.lower()}.py' for name in registry.names()}
DOCS = ('architecture', 'adding_a_model', 'data', 'baselines', 'inference', 'multi_gpu', 'troubleshooting')


def python_files():
    return sorted(p for p in SRC.rglob('*.py') if '__pycache__' not in p.parts)


def test_src_has_at_most_twelve_top_level_modules():
    top = sorted(p.name for p in SRC.glob('*.py'))
    assert len(top) <= 12, top


def test_no_code_outside_an_architectures_file_names_a_model():
    names = {name.lower() for name in registry.names()}
    found = []
    for path in python_files():
        if path in MAY_NAME_MODELS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in names:
                found.append(f'{path.relative_to(SRC)}:{node.lineno} {node.value!r}')
    assert not found


def test_readme_is_short_and_the_docs_exist():
    assert (helpers.ROOT / 'README.md').stat().st_size <= 20_000
    for name in DOCS:
        assert (helpers.ROOT / 'docs' / f'{name}.md').read_text().startswith('# ')


def _imports(path) -> set[str]:
    """The first-party modules ``path`` imports (dotted, as written), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports directly (a package's own ``__init__`` left out: Python's
    import order, not a dependency of ideas)."""
    modules = {}
    for path in python_files():
        parts = path.relative_to(SRC).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    return {name: {m for m in deps if not name.startswith(m + '.')} for name, deps in graph.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_of_src_has_no_cycles():
    graph = import_graph()
    visiting, done, cycles = set(), set(), []

    def visit(node, stack):
        visiting.add(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles


ENTRY_POINTS = {'main', 'upscale', 'export', 'convert', 'visualize', 'prepare_data', 'option', 'template', 'api',
                'trainer'}


def test_the_network_never_imports_an_entry_point():
    graph = import_graph()
    upward = {name: reachable(graph, name) & ENTRY_POINTS for name in graph if name.split('.')[0] == 'model'}
    assert not {name: found for name, found in upward.items() if found}


@pytest.mark.parametrize('tool', ['api', 'upscale', 'export', 'convert'])
def test_using_weights_needs_no_training_loop(tool):
    loop = {m for m in reachable(import_graph(), tool) if m == 'trainer' or m.split('.')[0] == 'training'}
    assert not loop


@pytest.mark.parametrize('path', [p for p in python_files() if p.parent == SRC / 'model'
                                  and p.stem in {n.lower() for n in registry.names()}], ids=lambda p: p.stem)
def test_architecture_files_import_no_program_code(path):
    # An architecture file is read by the registry, the options and detection: it must not import them back.
    imported = _imports(path)
    program = r'option|template|api|trainer|model\.(registry|checkpoint(\..+)?)'
    assert not {m for m in imported if re.fullmatch(program, m)}


def test_tests_mirror_src_and_share_code_through_helpers():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and any(p.glob('*.py'))}  # core has no __init__.py
    assert packages and all((helpers.TESTS / name).is_dir() for name in packages)
    # Besides one folder per package: the front ends, the benchmarks/ scripts, shared code and data.
    folders = {p.name for p in helpers.TESTS.iterdir() if p.is_dir() and not p.name.startswith(('_', '.'))}
    assert folders <= packages | {'cli', 'benchmarks', 'helpers', 'fixtures'}, folders
    for path in helpers.TESTS.rglob('*.py'):
        if path.name != 'conftest.py':
            assert not {m for m in _imports(path) if m.split('.')[0] == 'conftest'}, path
