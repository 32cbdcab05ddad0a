"""Size bars that keep the code readable: the ``Trainer`` class reads as a loop, on a few screens, and
no function in src/ runs over 80 lines (the argument parser, a list of flags, excepted)."""

import ast

from helpers import SRC

MAX_TRAINER_LINES = 220
MAX_FUNCTION_LINES = 80
EXEMPT = {('option.py', 'build_parser')}


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def test_trainer_class_is_at_most_220_lines():
    tree = ast.parse((SRC / 'trainer.py').read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'Trainer']
    assert _lines(trainer) <= MAX_TRAINER_LINES


def test_no_function_in_src_is_over_80_lines():
    long = []
    for path in sorted(SRC.rglob('*.py')):
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _lines(node) > MAX_FUNCTION_LINES
                    and (where, node.name) not in EXEMPT):
                long.append(f'{where}:{node.lineno} {node.name} ({_lines(node)} lines)')
    assert not long, 'functions over 80 lines: ' + ', '.join(long)
