"""Same-budget reproduction on real data: small LCoAN, EDSR and NLSN trained x2 on T91 + General100.

Every model trains with ``src/main.py`` on the same batches for the same number of steps (FSRCNN's
training data, T91 + General100, LR images made with the MATLAB-exact bicubic), is evaluated on Set5
during training (the PSNR-vs-step curve), and at the end on Set5, Set14 and, where present, B100 and
Urban100 (Y-channel PSNR, ``scale`` pixels shaved; SSIM as MATLAB computes it). The table puts the
published bicubic, SRCNN, FSRCNN and VDSR rows beside ours.

    python benchmarks/reproduce.py                     # CPU defaults: about an hour on 2 cores
    python benchmarks/reproduce.py --device cuda --steps 100000
    make reproduce                                     # the first line

``--dir_data`` holds ``train/T91/HR``, ``train/General100/HR`` and ``benchmark/Set5`` (the layout of
the project's ``../shared/data``); it is only read (LR images and caches go to the per-user cache when
it is read-only). Each model's run lives in ``<out>/<model>_x2`` (a normal run folder: log, config,
checkpoints). Interrupted, the script continues each unfinished run where it stopped (``--load
--resume -1``), skips the finished ones and writes the table (``<out>/table.md``), the figure
(``<out>/psnr_vs_step.png``) and ``<out>/results.json`` only when every model is done, each atomically.
A run made with other settings is started over.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SRC_DIR = ROOT / 'src'
sys.path.insert(0, str(SRC_DIR))

from core.io_utils import atomic_write, atomic_write_text  # noqa: E402
from model import registry  # noqa: E402

MODELS = ('LCoAN', 'EDSR', 'NLSN')
TRAIN = 'T91+General100'
CURVE_SET = 'Set5'
FINAL_SETS = ('Set5', 'Set14', 'B100', 'Urban100')
# Published x2 Y-PSNR (dB), each from its own paper: SRCNN trained on T91 (ECCV 2014), FSRCNN on
# T91 + General100 (ECCV 2016), VDSR on the 291 images, whose paper also gives the bicubic row. Sets
# a paper does not report stay empty.
PUBLISHED = (
    ('Bicubic', '-', {'Set5': 33.66, 'Set14': 30.24, 'B100': 29.56, 'Urban100': 26.88}),
    ('SRCNN', 'T91', {'Set5': 36.34, 'Set14': 32.18}),
    ('FSRCNN', 'T91+General100', {'Set5': 37.00, 'Set14': 32.63}),
    ('VDSR', 'SR291', {'Set5': 37.53, 'Set14': 33.03, 'B100': 31.90, 'Urban100': 30.76}),
)
SCORE = re.compile(r'^\[(\w+) x2\]\tPSNR: ([\d.]+) SSIM: ([\d.]+)', re.M)
EPOCH_TIME = re.compile(r'^\[Epoch (\d+)\] mean .* in ([\d.]+)s$', re.M)
PARAMS = re.compile(r'Made \w+ with ([\d,]+) parameters')
BICUBIC = re.compile(r'^average\s*\|\s*([\d.]+) / ([\d.]+) \|', re.M)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dir_data', default=str(ROOT.parent / 'shared' / 'data'),
                   help='folder with train/<set>/HR and benchmark/<set> (default: ../shared/data)')
    p.add_argument('--out', default=str(ROOT / 'experiment' / 'reproduce'), help='run folders, table and figure')
    p.add_argument('--models', default='+'.join(MODELS), help='"+"-separated, from ' + ', '.join(MODELS))
    p.add_argument('--steps', type=int, default=3000, help='training steps (batches) per model')
    p.add_argument('--eval_every', type=int, default=250, help='steps between Set5 evaluations (the curve)')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--patch_size', type=int, default=64, help='HR patch size')
    p.add_argument('--lr', type=float, default=5e-4, help='halved at 50%% and 75%% of the steps')
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    p.add_argument('--seed', type=int, default=1)
    args = p.parse_args(argv)
    args.models = args.models.split('+')
    for name in args.models:
        if name not in MODELS:
            p.error(f'--models: unknown model {name!r}; choose from {", ".join(MODELS)}')
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        p.error(f'--steps {args.steps}: must be a positive multiple of --eval_every {args.eval_every}')
    if not (Path(args.dir_data) / 'benchmark' / CURVE_SET).is_dir():
        p.error(f'--dir_data {args.dir_data}: no benchmark/{CURVE_SET} (expected train/T91/HR, '
                f'train/General100/HR and benchmark/Set5)')
    return args


def model_flags(name: str) -> list[str]:
    """The architecture's small configuration (its ``demo`` one, about 150-200 k parameters), with the
    centroids' moving average of the paper's command lines."""
    flags = dict(registry.get(name).demo)
    if name == 'LCoAN':
        flags['ema_decay'] = 0.999
    return [x for k, v in flags.items() for x in (f'--{k}', str(v))]


def train_command(args, name: str) -> list[str]:
    epochs = args.steps // args.eval_every
    decay = f'{max(1, epochs // 2)}-{max(2, 3 * epochs // 4)}'
    cmd = ['--model', name, *model_flags(name), '--scale', '2', '--rgb_range', '1',
           '--data_train', TRAIN, '--data_test', CURVE_SET, '--dir_data', str(Path(args.dir_data).resolve()),
           '--save_dir', str(Path(args.out).resolve()), '--save', f'{name}_x2',
           '--batch_size', str(args.batch_size), '--patch_size', str(args.patch_size),
           '--test_every', str(args.eval_every), '--epochs', str(epochs), '--lr', str(args.lr), '--decay', decay,
           '--seed', str(args.seed), '--n_threads', '1', '--ext', 'sep', '--print_every', '50']
    return cmd + (['--cpu'] if args.device == 'cpu' else [])


def same_settings(a: list[str], b: list[str]) -> bool:
    """Whether two training commands train the same way: the folder of the runs may have moved."""
    def settings(cmd):
        return [x for i, x in enumerate(cmd) if i == 0 or cmd[i - 1] != '--save_dir']
    return settings(a) == settings(b)


def run_main(cmd: list[str], log: Path) -> str:
    """``main.py cmd`` from ``src/``, its output shown and kept; SystemExit with its last line on failure."""
    print('$ python main.py ' + ' '.join(cmd), flush=True)
    with subprocess.Popen([sys.executable, 'main.py', *cmd], cwd=SRC_DIR, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        lines = []
        for line in proc.stdout:
            print(line, end='', flush=True)
            lines.append(line)
    text = ''.join(lines)
    with open(log, 'a') as f:
        f.write(text)
    if proc.returncode:
        last = next((ln for ln in reversed(lines) if ln.strip()), '').strip()
        raise SystemExit(f'main.py {" ".join(cmd[:2])} failed (exit {proc.returncode}): {last}')
    return text


def curve(run: Path, eval_every: int) -> list[tuple[int, float]]:
    """(step, Set5 PSNR) after every epoch of the run, from its training state."""
    import torch
    state = torch.load(run / 'training_state.pt', map_location='cpu', weights_only=True)
    psnr = state['psnr_log'][:, 0].tolist()
    return [((i + 1) * eval_every, p) for i, p in enumerate(psnr)]


def train(args, name: str) -> dict:
    """Train ``name`` (or continue its run), evaluate it, and return its row; the result is kept in
    the run folder so that a later call only reads it."""
    run = Path(args.out) / f'{name}_x2'
    cmd = train_command(args, name)
    done_file = run / 'reproduce.json'
    if done_file.is_file():
        done = json.loads(done_file.read_text())
        if same_settings(done['command'], cmd):
            print(f'{name}: done before ({done_file}), not run again', flush=True)
            return done
    # The settings of the run are kept beside its folder: --reset empties the folder itself.
    settings = run.parent / f'{name}_x2.command.json'
    same = settings.is_file() and same_settings(json.loads(settings.read_text()), cmd)
    epochs = args.steps // args.eval_every
    if same and (run / 'training_state.pt').is_file():
        if len(curve(run, args.eval_every)) < epochs:
            print(f'{name}: continuing the interrupted run in {run}', flush=True)
            run_main(cmd + ['--load', f'{name}_x2', '--resume', '-1'], run.parent / f'{name}_x2.log')
    else:
        if run.exists():
            print(f'{name}: {run} holds no finished epoch of these settings: starting over', flush=True)
        atomic_write_text(json.dumps(cmd), settings)
        run_main(cmd + ['--reset'], run.parent / f'{name}_x2.log')
    log = (run / 'log.txt').read_text()
    train_s = sum(dict((int(e), float(t)) for e, t in EPOCH_TIME.findall(log)).values())

    sets = [s for s in FINAL_SETS if (Path(args.dir_data) / 'benchmark' / s).is_dir()]
    test = [c for c in cmd if c != '--reset']
    test[test.index('--data_test') + 1] = '+'.join(sets)
    text = run_main(test + ['--load', f'{name}_x2', '--test_only', '--compare_bicubic'],
                    run.parent / f'{name}_x2.log')
    scores = {s: (float(p), float(q)) for s, p, q in SCORE.findall(text)}
    bicubic = dict(zip(sets, ((float(p), float(q)) for p, q in BICUBIC.findall(text)), strict=False))
    params = int(PARAMS.search(log).group(1).replace(',', ''))
    result = dict(model=name, command=cmd, steps=args.steps, params=params, train_s=round(train_s, 1),
                  scores=scores, bicubic=bicubic, curve=curve(run, args.eval_every))
    atomic_write_text(json.dumps(result, indent=1), done_file)
    return result


def table(args, results: list[dict]) -> str:
    sets = [s for s in FINAL_SETS if any(s in r['scores'] for r in results)]
    head = '| method | training data | params | ' + ' | '.join(f'{s} x2' for s in sets) + ' |'
    lines = [head, '|' + '---|' * (3 + len(sets))]
    for method, data, scores in PUBLISHED:
        cells = [f'{scores[s]:.2f}' if s in scores else '' for s in sets]
        lines.append(f'| {method} (published) | {data} | | ' + ' | '.join(cells) + ' |')
    first = results[0]['bicubic']
    lines.append('| Bicubic (this code) | - | | ' + ' | '.join(f'{first[s][0]:.2f} / {first[s][1]:.4f}'
                                                               for s in sets) + ' |')
    for r in results:
        cells = [f'{r["scores"][s][0]:.2f} / {r["scores"][s][1]:.4f}' for s in sets]
        lines.append(f'| {r["model"]} (this code, {r["steps"]} steps) | {TRAIN} | {r["params"] / 1e3:.0f} k | '
                     + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append(f'PSNR / SSIM on Y, x2. Ours: batch {args.batch_size} of {args.patch_size}x{args.patch_size} HR '
                 f'patches, Adam, L1, lr {args.lr:g} halved at 50% and 75% of the steps, device {args.device}. '
                 'Training time (s): ' + ', '.join(f'{r["model"]} {r["train_s"]:.0f}' for r in results) + '.')
    return '\n'.join(lines) + '\n'


def figure(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, psnr = zip(*r['curve'], strict=True)
        ax.plot(steps, psnr, marker='o', markersize=3, label=f'{r["model"]} ({r["params"] / 1e3:.0f} k)')
    for method, _, scores in PUBLISHED[1:3]:
        ax.axhline(scores['Set5'], color='grey', linestyle=':', linewidth=1)
        ax.annotate(f'{method} {scores["Set5"]:.2f}', (0, scores['Set5']), fontsize=7, color='grey',
                    xytext=(2, 2), textcoords='offset points')
    ax.set_xlabel('training step (batches)')
    ax.set_ylabel('Set5 x2 PSNR-Y (dB)')
    ax.set_title(f'Trained on {TRAIN}, same batches for every model')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120))
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [train(args, name) for name in args.models]
    text = table(args, results)
    atomic_write_text(text, out / 'table.md')
    atomic_write_text(json.dumps(results, indent=1), out / 'results.json')
    figure(results, out / 'psnr_vs_step.png')
    print('\n' + text + f'\nWritten: {out / "table.md"}, {out / "psnr_vs_step.png"}, {out / "results.json"}')


if __name__ == '__main__':
    main()
