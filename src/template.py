"""Named presets of options (``--template NAME``).

A template only changes defaults: any flag given on the command line still wins. Its model flags
are a published configuration that the architecture's own file declares: ``models`` names, per
model, one of its ``Architecture.configurations``. A template applies that of the model in force
(its own ``model``, or the one given with ``--model``, e.g. ``--template demo --model NLSN`` for a
small NLSN demo); other model flags keep the chosen model's published defaults. The demo's model
flags are each architecture's own small configuration (``Architecture.demo``), so every
architecture has a demo.
"""

from model import registry


def _demo_configuration(model: str) -> dict:
    names = {name.lower() for name in registry.names()}
    return dict(registry.get(model).demo) if str(model).lower() in names else {}


TEMPLATES = {
    # The paper's configuration (all flags of the paper's x2 command line except paths and --save).
    'LCoAN_paper': dict(
        model='LCoAN', rgb_range=1, batch_size=16, patch_size=96, scale='2', lr=1e-4, decay='300-600-900-1200',
        epochs=1500, data_train='DIV2K', data_range='1-800/1-5', chop=True, models={'LCoAN': 'paper'},
    ),
    # The paper's x4 fine-tuning from the x2 weights (its own milestones; add --pre_train <x2 .pt>).
    'LCoAN_paper_x4': dict(
        model='LCoAN', rgb_range=1, batch_size=16, patch_size=192, scale='4', lr=1e-4, decay='100-200-300-400',
        epochs=500, data_train='DIV2K', data_range='1-800/1-5', chop=True, models={'LCoAN': 'paper'},
    ),
    # A small model that learns something useful on the built-in sample data in about two minutes
    # on two CPU cores (``make demo``); ``--model`` picks another network, in a small configuration.
    'demo': dict(
        model='LCoAN', rgb_range=1, scale='2', patch_size=64, batch_size=8, test_every=50, epochs=12, lr=5e-4,
        decay='8', data_train='Sample', data_test='Sample', ext='sep', n_threads=1, print_every=25, save='demo',
        save_results=True, compare_bicubic=True,
        models=_demo_configuration,
    ),
    # The baselines' published configurations (EDSR-PyTorch and NLSN documentation).
    'EDSR_baseline': dict(model='EDSR', models={'EDSR': 'baseline'}),
    'EDSR_paper': dict(model='EDSR', models={'EDSR': 'paper'}),
    'RCAN': dict(model='RCAN', chop=True, models={'RCAN': 'paper'}),
    'RDN': dict(model='RDN', models={'RDN': 'paper'}),
    'NLSN': dict(model='NLSN', models={'NLSN': 'paper'}),
    # SwinIR's classical SR model (SwinIR-M) and its training (KAIR's train_swinir_sr_classical.json: batch 32,
    # 96x96 HR patches at x2, lr 2e-4 halved at 250k, 400k, 450k and 475k of 500k iterations; here 1000
    # iterations an epoch). At x3/x4 give --scale and --patch_size 48*scale.
    'SwinIR_paper': dict(
        model='SwinIR', rgb_range=1, scale='2', patch_size=96, batch_size=32, lr=2e-4, decay='250-400-450-475',
        epochs=500, test_every=1000, models={'SwinIR': 'classical'}),
    # Its lightweight SR model (SwinIR-S): batch 64, 64x64 LR patches.
    'SwinIR_light': dict(
        model='SwinIR', rgb_range=1, scale='2', patch_size=128, batch_size=64, lr=2e-4, decay='250-400-450-475',
        epochs=500, test_every=1000, models={'SwinIR': 'lightweight'}),
}


def get_template(name: str, model: str | None = None) -> dict:
    """The defaults of template ``name`` for ``model`` (default: the template's own); KeyError if there is none.

    ``model`` is matched in any letter case.
    """
    preset = dict(TEMPLATES[name])
    models = preset.pop('models', {})
    chosen = str(model if model is not None else preset.get('model', ''))
    if callable(models):
        preset.update(models(chosen))
    else:
        configuration = {m.lower(): c for m, c in models.items()}.get(chosen.lower())
        if configuration is not None:
            preset.update(registry.get(chosen).configurations[configuration])
    return preset
