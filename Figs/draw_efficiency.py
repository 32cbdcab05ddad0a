"""Draw the efficiency figure (Figs/efficiency.png) from the recorded benchmark results.

CPU time of one forward against parameters, one panel per scale; marker area is the peak memory
of the measuring process and each model has one colour. The numbers come from
``benchmarks/compare_models.json``, written by ``python benchmarks/compare_models.py --json
benchmarks/compare_models.json`` (see benchmarks/RESULTS.md); ``make figs`` only draws.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'compare_models.json'
OUT = Path(__file__).with_name('efficiency.png')
# One colour per model; models without one take the next of matplotlib's cycle.
COLORS = {'LCoAN': '#d62728', 'EDSR': '#7f7f7f', 'EDSR_paper': '#1f77b4', 'RCAN': '#2ca02c', 'RDN': '#9467bd',
          'NLSN': '#ff7f0e'}
# Points of marker area per MB of peak memory.
AREA_PER_MB = 0.5
# Labelled below their marker (EDSR and NLSN have about the same size).
# Label offsets in points (default: centred above): NLSN's large marker, and RCAN and LCoAN, which
# have about the same parameter count and time, to either side.
LABEL_OFFSET = {'NLSN': (0, -26, 'center'), 'RCAN': (-14, -4, 'right'), 'LCoAN': (14, -4, 'left')}


def main() -> None:
    results = json.loads(RESULTS.read_text())
    rows = [r for r in results['models'].values() if 'time_s' in r and 'params' in r]
    scales = sorted({r['scale'] for r in rows})
    fig, axes = plt.subplots(1, len(scales), figsize=(5.2 * len(scales), 4.4), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        lr = results['time_lr'][str(scale)] if str(scale) in results['time_lr'] else results['time_lr'][scale]
        for r in (r for r in rows if r['scale'] == scale):
            ax.scatter(r['params'] / 1e6, r['time_s'], s=r['peak_rss_mb'] * AREA_PER_MB, color=COLORS.get(r['model']),
                       alpha=0.6, edgecolors='black', linewidths=0.8, label=r['model'])
            dx, dy, ha = LABEL_OFFSET.get(r['model'], (0, 12, 'center'))
            ax.annotate(f"{r['model']}\n{r['peak_rss_mb'] / 1024:.1f} GB", (r['params'] / 1e6, r['time_s']),
                        textcoords='offset points', xytext=(dx, dy), ha=ha, fontsize=8)
        ax.set_xlabel('parameters (M)')
        ax.set_ylabel('CPU time of one forward (s)')
        ax.set_title(f'x{scale}, LR {lr}x{lr}')
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    info = results['machine']
    note = f"; {results['note']}" if results.get('note') else ''
    fig.suptitle(f"Efficiency on {info['cpu']}, {info['threads']} threads, fp32 (marker area: peak memory{note})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
