"""Draw the LCoAN architecture diagram (Figs/lcoan_architecture.png) with matplotlib.

Run ``make figs`` (or ``python Figs/draw_architecture.py``); the PNG is committed and shown in the
README.
"""

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name('lcoan_architecture.png')

COLORS = {
    'io': '#e8e8e8', 'conv': '#bcd7f0', 'group': '#fde2b8', 'attn': '#f7b7a3', 'coa': '#c9e7c1', 'up': '#d9c8ef',
}


def box(ax, x, y, w, h, text, color, fontsize=9, style='round,pad=0.02,rounding_size=0.08'):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=color, ec='#333333', lw=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha='center', va='center', fontsize=fontsize)


def arrow(ax, start, end, color='#333333', style='-|>', ls='-', rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.2,
                                 linestyle=ls, connectionstyle=f'arc3,rad={rad}'))


def draw_network(ax):
    y, h = 3.2, 1.0
    stages = [
        (0.0, 0.9, 'LR', 'io'), (1.2, 1.0, 'MeanShift\n3×3 conv', 'conv'),
        (2.6, 1.5, 'Residual\nGroup 1\n(LSP + attention)', 'attn'), (4.5, 1.5, 'Residual\nGroup 2\n(CoA)', 'coa'),
        (6.4, 0.6, '···', 'io'), (7.4, 1.5, 'Residual\nGroup G\n(CoA)', 'coa'), (9.3, 0.9, '3×3\nconv', 'conv'),
        (10.8, 1.4, 'sub-pixel\nupsampler\n×2 / ×3 / ×4', 'up'), (12.6, 1.1, '3×3 conv\nMeanShift', 'conv'),
        (14.1, 0.9, 'SR', 'io'),
    ]
    for i, (x, w, text, color) in enumerate(stages):
        box(ax, x, y, w, h, text, COLORS[color])
        if i:
            prev_x, prev_w = stages[i - 1][0], stages[i - 1][1]
            arrow(ax, (prev_x + prev_w, y + h / 2), (x, y + h / 2))
    # Global skip from the head to the sum after the body.
    ax.plot([2.2, 2.2, 10.45], [y + h, y + h + 0.45, y + h + 0.45], color='#555555', lw=1.0)
    arrow(ax, (10.45, y + h + 0.45), (10.45, y + h / 2 + 0.12))
    ax.add_patch(plt.Circle((10.45, y + h / 2), 0.12, fc='white', ec='#333333'))
    ax.text(10.45, y + h / 2, '+', ha='center', va='center', fontsize=8)
    # The sparse pattern and attention weights flow from group 1 to every later group.
    for x in (4.5, 7.4):
        arrow(ax, (3.35, y), (x + 0.75, y), color='#b03a2e', ls='--', rad=0.35)
    ax.text(5.4, y - 1.3, 'shared: cluster order + attention weights (computed once)', color='#b03a2e',
            ha='center', fontsize=9)


def draw_group(ax):
    y, h = 0.0, 0.9
    parts = [(0.6, 1.2, 'ResBlock\n(conv-ReLU-conv)', 'conv'), (2.1, 0.5, '···', 'io'),
             (2.9, 1.2, 'ResBlock', 'conv'), (4.4, 1.6, 'LCoA attention\n×res_scale + x', 'attn'),
             (6.3, 0.9, '3×3 conv', 'conv'), (7.5, 1.1, '×res_scale\n+ group input', 'io')]
    for i, (x, w, text, color) in enumerate(parts):
        box(ax, x, y, w, h, text, COLORS[color], fontsize=8)
        if i:
            arrow(ax, (parts[i - 1][0] + parts[i - 1][1], y + h / 2), (x, y + h / 2))
    ax.text(0.6, y + h + 0.2, 'Residual group', fontsize=9, weight='bold')

    x0 = 9.3
    steps = [('query/key: 3×3 conv → embed', 'conv'), ('k-means: nearest unit-norm centroid (EMA-updated)', 'attn'),
             ('sort pixels by cluster, cut into windows', 'attn'),
             ('softmax(q · k̂) over own + 2 neighbour windows', 'attn'),
             ('× values (1×1 conv), undo sort', 'coa')]
    ax.text(x0, y + h + 0.45, 'LCoA in group 1 (later groups: last step only)', fontsize=9, weight='bold')
    for i, (text, color) in enumerate(steps):
        box(ax, x0, y + 0.75 - i * 0.5, 5.8, 0.38, text, COLORS[color], fontsize=7.5,
            style='round,pad=0.01,rounding_size=0.05')


def main() -> None:
    fig, ax = plt.subplots(figsize=(15.5, 5.6))
    ax.set_xlim(-0.2, 15.3)
    ax.set_ylim(-1.8, 5.2)
    ax.axis('off')
    draw_network(ax)
    draw_group(ax)
    ax.set_title('LCoAN: Learnable Collaborative Attention Network', fontsize=12, weight='bold')
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
