"""One bad file in src/model/ takes no command down: the others work (``--help`` included), and the bad file is
named in one line whenever it is needed (``--model <it>``, ``--help``)."""

import shutil
import subprocess
import sys

import pytest

from helpers import MAIN_ENV, SRC

EDSR = (SRC / 'model' / 'edsr.py').read_text()
BAD = {
    'edsr_backup': EDSR,  # cp model/edsr.py model/edsr_backup.py: a second EDSR
    'syntaxerr': 'def broken(:\n',
    'noimport': 'import no_such_module_for_lcoan_tests\n',
    'clash': EDSR.replace("name='EDSR'", "name='Clash'").replace(
        "spec.ModelFlag('n_resblocks', int, ", "spec.ModelFlag('n_resblocks', float, "),
    'nodefault': EDSR.replace("name='EDSR'", "name='NoDefault'").replace(
        'defaults=BASELINE,', 'defaults=dict(n_feats=64, res_scale=1.0),'),
}
WHY = {
    'edsr_backup': "declares ARCH.name 'EDSR': an architecture lives in model/<name in lower case>.py, as --model "
                   'finds it',
    'syntaxerr': 'SyntaxError: ',
    'noimport': "ModuleNotFoundError: No module named 'no_such_module_for_lcoan_tests'",
    'clash': '--n_resblocks is float here but int for LCoAN',
    'nodefault': "ValueError: NoDefault: defaults must give every flag a value; missing ['n_resblocks']",
}


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    src = tmp_path_factory.mktemp('broken') / 'src'
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns('__pycache__'))
    for name, text in BAD.items():
        (src / 'model' / f'{name}.py').write_text(text)
    return src


def run(src, *argv):
    return subprocess.run([sys.executable, *argv], cwd=src, env=MAIN_ENV, capture_output=True, text=True,
                          timeout=300)


def test_help_works_and_names_the_bad_files(src):
    done = run(src, 'main.py', '--help')
    assert done.returncode == 0 and done.stderr == ''
    text = ' '.join(done.stdout.split())
    assert 'LCoAN (' in text and 'EDSR (' in text and 'Clash (' not in text
    for name, why in WHY.items():
        assert f'model/{name}.py: {why}' in text


def test_the_bad_file_is_named_in_one_line_when_asked_for(src):
    script = ('import sys; sys.path.insert(0, "."); from core.errors import UserError; from model import registry\n'
              f'for name in {sorted(BAD)!r} + ["EDSR"]:\n'
              '    try:\n        print(registry.get(name).name)\n'
              '    except UserError as e:\n        print(e)\n')
    lines = run(src, '-c', script).stdout.splitlines()
    assert lines[-1] == 'EDSR'  # the other architectures work
    for name, line in zip(sorted(BAD), lines, strict=False):
        assert line.startswith(f'model/{name}.py: {WHY[name]}'), line


def test_main_py_with_a_bad_model_is_one_line(src):
    done = run(src, 'main.py', '--model', 'noimport', '--cpu')
    assert done.returncode == 2
    assert done.stderr == ("error: model/noimport.py: ModuleNotFoundError: No module named "
                           "'no_such_module_for_lcoan_tests'\n")
