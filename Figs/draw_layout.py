"""Draw the code layout (Figs/code_layout.png): the layers of ``src/`` and the parts of ``src/model/``.

Run ``make figs`` (or ``python Figs/draw_layout.py``); the PNG is committed and shown in
docs/architecture.md. An arrow is an import (A -> B: A imports B); every arrow points down a layer
or within one, and every layer imports ``core/``.
"""

import io
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

OUT = Path(__file__).with_name('code_layout.png')

COLORS = {
    'entry': '#e8e8e8', 'service': '#d9c8ef', 'mid': '#fde2b8', 'domain': '#bcd7f0', 'core': '#c9e7c1',
    'arch': '#f7b7a3',
}
EDGE = '#333333'


class Box:
    def __init__(self, ax, x, y, w, h, title, note='', color='domain', fontsize=9):
        self.x, self.y, self.w, self.h = x, y, w, h
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.02,rounding_size=0.08',
                                    fc=COLORS[color], ec=EDGE, lw=1.0))
        if note:
            ax.text(x + w / 2, y + h * 0.66, title, ha='center', va='center', fontsize=fontsize, weight='bold',
                    family='monospace')
            ax.text(x + w / 2, y + h * 0.29, note, ha='center', va='center', fontsize=fontsize - 1.5,
                    linespacing=1.1)
        else:
            ax.text(x + w / 2, y + h / 2, title, ha='center', va='center', fontsize=fontsize, weight='bold',
                    family='monospace')

    def top(self, f=0.5):
        return self.x + self.w * f, self.y + self.h

    def bottom(self, f=0.5):
        return self.x + self.w * f, self.y

    def left(self, f=0.5):
        return self.x, self.y + self.h * f

    def right(self, f=0.5):
        return self.x + self.w, self.y + self.h * f


def arrow(ax, start, end, color='#555555', ls='-', rad=0.0, lw=1.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle='-|>', mutation_scale=10, color=color, lw=lw,
                                 linestyle=ls, connectionstyle=f'arc3,rad={rad}', shrinkA=1, shrinkB=1))


def band(ax, y, h, label, x0=-0.1, x1=8.1):
    ax.add_patch(Rectangle((x0, y), x1 - x0, h, fc='#f6f6f6', ec='none', zorder=-2))
    ax.text(x0 + 0.08, y + h - 0.06, label, ha='left', va='top', fontsize=7.5, style='italic', color='#666666',
            zorder=5, bbox=dict(fc='#f6f6f6', ec='none', pad=0.6))


def draw_layers(ax):
    """src/: five layers, arrows are imports (core/, imported by all, is the bottom band)."""
    ax.text(-0.1, 7.95, 'src/: layers (A → B: A imports B; every layer imports core/)', fontsize=10.5,
            weight='bold', va='bottom')
    band(ax, 6.25, 1.3, 'entry points')
    band(ax, 4.7, 1.3, 'the loop and the API')
    band(ax, 3.15, 1.3, 'options, training parts')
    band(ax, 1.6, 1.3, 'networks, data, losses, metrics')
    band(ax, 0.0, 1.35, 'plumbing')

    h = 0.85
    main = Box(ax, 0.2, 6.4, 1.2, h, 'main.py', 'train, evaluate', 'entry', fontsize=8.5)
    upscale = Box(ax, 1.5, 6.4, 1.2, h, 'upscale.py', 'files, folders', 'entry', fontsize=8.5)
    export = Box(ax, 2.8, 6.4, 1.2, h, 'export.py', 'ONNX', 'entry', fontsize=8.5)
    convert = Box(ax, 4.1, 6.4, 1.2, h, 'convert.py', 'layouts, formats', 'entry', fontsize=8.5)
    visualize = Box(ax, 5.4, 6.4, 1.25, h, 'visualize.py', 'what LCoA learns', 'entry', fontsize=8)
    prepare = Box(ax, 6.75, 6.4, 1.25, h, 'prepare_data', 'LR images', 'entry', fontsize=8)

    trainer = Box(ax, 0.2, 4.85, 2.1, h, 'trainer.py', 'the loop, resume', 'service')
    api = Box(ax, 3.0, 4.85, 2.9, h, 'api.py', 'Python API: load_pretrained,\nupscale, super_resolve', 'service')

    training = Box(ax, 0.2, 3.3, 2.9, h, 'training/', 'step, evaluation, state,\nRunFolder, optim, monitors', 'mid')
    option = Box(ax, 3.5, 3.3, 2.3, h, 'option.py', "main.py's parsing; options\nfrom the checkpoint", 'mid')
    template = Box(ax, 6.2, 3.3, 1.8, h, 'template.py', 'presets', 'mid')

    model = Box(ax, 0.2, 1.75, 2.9, h, 'model/', 'architectures, checkpoints,\nregistry, inference', 'domain')
    Box(ax, 3.4, 1.75, 1.1, h, 'loss/', 'terms', 'domain')
    data = Box(ax, 4.75, 1.75, 1.6, h, 'data/', 'sets, cache, LR', 'domain')
    metrics = Box(ax, 6.55, 1.75, 1.45, h, 'metrics.py', 'PSNR, SSIM', 'domain')

    Box(ax, 0.2, 0.15, 7.8, 0.85, 'core/', 'errors · io_utils (atomic writes, the weights_only loader) · precision\n'
        'rng · timing · distributed (DDP launch, select_device)', 'core')

    a = arrow
    a(ax, main.bottom(0.3), trainer.top(0.3))
    a(ax, main.bottom(0.8), option.top(0.1), rad=0.15)
    a(ax, upscale.bottom(0.5), api.top(0.15))
    a(ax, export.bottom(0.5), api.top(0.4))
    a(ax, convert.bottom(0.5), api.top(0.75))
    a(ax, visualize.bottom(0.5), option.top(0.85), rad=-0.15)
    a(ax, prepare.bottom(0.5), data.top(0.85), rad=-0.1)
    a(ax, trainer.bottom(0.4), training.top(0.4))
    a(ax, api.bottom(0.15), model.top(0.75), rad=0.1)
    a(ax, option.right(0.5), template.left(0.5))
    a(ax, option.bottom(0.6), data.top(0.3))
    a(ax, option.bottom(0.1), model.top(0.9), rad=-0.05)
    a(ax, option.left(0.5), training.right(0.5))
    a(ax, template.bottom(0.3), model.top(0.98), rad=-0.12)
    a(ax, training.bottom(0.5), model.top(0.5))
    a(ax, training.bottom(0.85), metrics.top(0.3), rad=-0.1)
    a(ax, training.bottom(0.7), data.top(0.15), rad=-0.08)
    a(ax, data.right(0.5), metrics.left(0.5))
    ax.text(8.0, -0.2, 'not drawn: main.py also imports data/, loss/, model/, training/; trainer.py, export.py,\n'
            'convert.py and visualize.py import model/; training/ imports data/ (imresize). Never: model/ → an entry\n'
            'point or option.py; api.py, upscale.py, export.py, convert.py → training/ (tests/test_layout.py)',
            ha='right', va='top', fontsize=7.5, color='#666666')


def draw_model(ax):
    """src/model/: the wrapper, the services around the registry, the self-describing architectures."""
    x0 = 8.7
    ax.text(x0, 7.95, 'src/model/: architectures describe themselves', fontsize=10.5, weight='bold', va='bottom')
    h = 0.85
    wrapper = Box(ax, x0 + 1.6, 6.4, 3.6, h, '__init__.py: Model',
                  'device, --pre_train, eval through inference', 'service')

    registry = Box(ax, x0, 4.85, 2.0, h, 'registry.py', 'finds every ARCH,\nbuilds from keywords', 'mid')
    ckpt = Box(ax, x0 + 2.15, 4.85, 3.15, h, 'checkpoint/', 'read once: files, layouts,\ndetect, run_config', 'mid')
    infer = Box(ax, x0 + 5.45, 4.85, 1.85, h, 'inference.py', 'self-ensemble,\nthe tiler', 'mid')

    ax.add_patch(FancyBboxPatch((x0 - 0.08, 3.2), 7.46, 1.05, boxstyle='round,pad=0.02,rounding_size=0.1',
                                fc='#fbe3dc', ec='#b03a2e', lw=1.0, ls='--', zorder=-1))
    archs = []
    names = ('lcoan.py', 'edsr.py', 'rcan.py', 'rdn.py', 'nlsn.py', 'swinir.py')
    for i, name in enumerate(names):
        archs.append(Box(ax, x0 + i * 1.23, 3.3, 1.12, h, name, 'make_model\nARCH', 'arch', fontsize=8.5))
    arch_bottom = 3.2

    spec = Box(ax, x0, 1.75, 2.2, h, 'spec.py', 'Architecture, ModelFlag,\nlayout helpers', 'domain')
    blocks = Box(ax, x0 + 2.4, 1.75, 4.9, h, 'blocks/', 'common.py (EDSR blocks) · lcoa.py (LSP k-means, CoA)\n'
                 'nlsa.py (NLSN) · lcoa_stats.py', 'domain')
    sparse = Box(ax, x0 + 2.4, 0.15, 4.9, h, 'blocks/sparse_attention.py',
                 'fast LCoA attention; sparse_attention_reference.py\n(the plain oracle) · attention_interface.py',
                 'core')

    a = arrow
    a(ax, wrapper.bottom(0.1), registry.top(0.7), rad=0.1)
    a(ax, wrapper.bottom(0.5), ckpt.top(0.5))
    a(ax, wrapper.bottom(0.9), infer.top(0.4), rad=-0.1)
    a(ax, ckpt.left(0.5), registry.right(0.5))
    for i, arch in enumerate(archs):
        a(ax, registry.bottom(0.15 + 0.14 * i), arch.top(0.5), color='#b03a2e', ls='--', rad=0.0)
    a(ax, (spec.x + spec.w * 0.3, arch_bottom), spec.top(0.3))
    a(ax, (blocks.x + blocks.w * 0.5, arch_bottom), blocks.top(0.5))
    a(ax, registry.left(0.3), spec.left(0.7), rad=0.5)
    a(ax, blocks.bottom(0.5), sparse.top(0.5))
    ax.text(x0 + 7.3, -0.2, 'one file per architecture: make_model(args) and ARCH = spec.Architecture(...);\n'
            'red dashed: the registry imports every model/<name>.py that defines ARCH; spec.py also\n'
            'serves checkpoint/ (key layouts)',
            ha='right', va='top', fontsize=7.5, color='#b03a2e')


def main() -> None:
    fig, ax = plt.subplots(figsize=(13.0, 7.0))
    ax.set_xlim(-0.2, 16.1)
    ax.set_ylim(-0.5, 8.4)
    ax.axis('off')
    draw_layers(ax)
    draw_model(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)
    # A palette of 64 colours keeps the flat drawing sharp and the file small.
    Image.open(buffer).convert('RGB').quantize(colors=64).save(OUT, optimize=True)
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
