"""Named presets of options (``--template NAME``).

A template only changes defaults: any flag given on the command line still wins.
"""

TEMPLATES = {
    # The paper's configuration (all flags of the paper's x2 command line except paths and --save).
    'LCoAN_paper': dict(
        model='LCoAN', n_resgroups=10, n_resblocks=4, n_feats=128, reduction=1, n_clusters=128,
        window_size=384, ema_decay=0.999, res_scale=0.1, rgb_range=1, batch_size=16, patch_size=96,
        scale='2', lr=1e-4, decay='300-600-900-1200', epochs=1500, data_train='DIV2K',
        data_range='1-800/1-5', chop=True,
    ),
    # The paper's x4 fine-tuning from the x2 weights (its own milestones; add --pre_train <x2 .pt>).
    'LCoAN_paper_x4': dict(
        model='LCoAN', n_resgroups=10, n_resblocks=4, n_feats=128, reduction=1, n_clusters=128,
        window_size=384, ema_decay=0.999, res_scale=0.1, rgb_range=1, batch_size=16, patch_size=192,
        scale='4', lr=1e-4, decay='100-200-300-400', epochs=500, data_train='DIV2K',
        data_range='1-800/1-5', chop=True,
    ),
    # A small LCoAN that learns something useful on the built-in sample data in about two minutes
    # on two CPU cores (``make demo``).
    'demo': dict(
        model='LCoAN', n_resgroups=2, n_resblocks=2, n_feats=32, reduction=2, n_clusters=16,
        window_size=96, ema_decay=0.99, res_scale=0.1, rgb_range=1, scale='2', patch_size=64,
        batch_size=8, test_every=50, epochs=12, lr=5e-4, decay='8', data_train='Sample',
        data_test='Sample', ext='sep', n_threads=1, print_every=25, save='demo',
        save_results=True, compare_bicubic=True,
    ),
}


def get_template(name: str) -> dict:
    """The defaults of template ``name``; KeyError if there is none."""
    return dict(TEMPLATES[name])
