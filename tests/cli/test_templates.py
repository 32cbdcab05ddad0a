"""Every ``--template`` resolves to the published numbers: the model flags of each paper's configuration (declared
in the architecture's own file) and the template's training values, and it marks as given exactly the flags
it sets."""

import pytest

import option
import template

# The published configurations, every model flag (those a template leaves out take the model's default).
LCOAN_PAPER = dict(n_resgroups=10, n_resblocks=4, n_feats=128, reduction=1, res_scale=0.1, n_clusters=128,
                   window_size=384, ema_decay=0.999, n_hashes=1, attention_impl='fast')
SWINIR = dict(window_size=8, mlp_ratio=2.0, resi_connection='1conv', drop_path_rate=0.1)
MODEL_FLAGS = {
    'LCoAN_paper': LCOAN_PAPER,
    'LCoAN_paper_x4': LCOAN_PAPER,
    'demo': dict(n_resgroups=2, n_resblocks=2, n_feats=32, reduction=2, res_scale=0.1, n_clusters=16, window_size=96,
                 ema_decay=0.99, n_hashes=1, attention_impl='fast'),
    'EDSR_baseline': dict(n_resblocks=16, n_feats=64, res_scale=1.0),
    'EDSR_paper': dict(n_resblocks=32, n_feats=256, res_scale=0.1),
    'RCAN': dict(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, res_scale=1.0),
    'RDN': dict(G0=64, RDNkSize=3, RDNconfig='B'),
    'NLSN': dict(n_resblocks=32, n_feats=256, res_scale=0.1, chunk_size=144, n_hashes=4),
    'SwinIR_paper': dict(SWINIR, embed_dim=180, depths='6+6+6+6+6+6', num_heads='6+6+6+6+6+6', img_size=48,
                         upsampler='pixelshuffle'),
    'SwinIR_light': dict(SWINIR, embed_dim=60, depths='6+6+6+6', num_heads='6+6+6+6', img_size=64,
                         upsampler='pixelshuffledirect'),
}
# The model and the training values of each template; the parser's defaults where a template sets none.
DEFAULT_TRAINING = dict(scale=[4], rgb_range=255, batch_size=16, patch_size=192, lr=1e-4, decay=[200], epochs=1000,
                        test_every=1000, chop=False, data_train=['DIV2K'], train_range=(1, 800),
                        test_range=(801, 810))
LCOAN_TRAINING = dict(DEFAULT_TRAINING, rgb_range=1, chop=True, test_range=(1, 5))
SWINIR_TRAINING = dict(DEFAULT_TRAINING, scale=[2], rgb_range=1, lr=2e-4, decay=[250, 400, 450, 475], epochs=500)
TRAINING = {
    'LCoAN_paper': dict(LCOAN_TRAINING, model='LCoAN', scale=[2], patch_size=96, decay=[300, 600, 900, 1200],
                        epochs=1500),
    'LCoAN_paper_x4': dict(LCOAN_TRAINING, model='LCoAN', scale=[4], patch_size=192, decay=[100, 200, 300, 400],
                           epochs=500),
    'demo': dict(DEFAULT_TRAINING, model='LCoAN', scale=[2], rgb_range=1, batch_size=8, patch_size=64, lr=5e-4,
                 decay=[8], epochs=12, test_every=50, data_train=['Sample']),
    'EDSR_baseline': dict(DEFAULT_TRAINING, model='EDSR'),
    'EDSR_paper': dict(DEFAULT_TRAINING, model='EDSR'),
    'RCAN': dict(DEFAULT_TRAINING, model='RCAN', chop=True),
    'RDN': dict(DEFAULT_TRAINING, model='RDN'),
    'NLSN': dict(DEFAULT_TRAINING, model='NLSN'),
    'SwinIR_paper': dict(SWINIR_TRAINING, model='SwinIR', batch_size=32, patch_size=96),
    'SwinIR_light': dict(SWINIR_TRAINING, model='SwinIR', batch_size=64, patch_size=128),
}
# The model flags each template sets (and so marks as given, which a --pre_train checkpoint does not override).
GIVEN_MODEL_FLAGS = {
    'LCoAN_paper': set(LCOAN_PAPER) - {'n_hashes', 'attention_impl'},
    'LCoAN_paper_x4': set(LCOAN_PAPER) - {'n_hashes', 'attention_impl'},
    'demo': set(MODEL_FLAGS['demo']) - {'n_hashes', 'attention_impl'},
    'EDSR_baseline': set(MODEL_FLAGS['EDSR_baseline']),
    'EDSR_paper': set(MODEL_FLAGS['EDSR_paper']),
    'RCAN': set(MODEL_FLAGS['RCAN']) - {'res_scale'},
    'RDN': set(MODEL_FLAGS['RDN']),
    'NLSN': set(MODEL_FLAGS['NLSN']),
    'SwinIR_paper': set(MODEL_FLAGS['SwinIR_paper']) - {'drop_path_rate'},
    'SwinIR_light': set(MODEL_FLAGS['SwinIR_light']) - {'drop_path_rate'},
}


def test_every_template_is_pinned():
    assert set(template.TEMPLATES) == set(MODEL_FLAGS) == set(TRAINING) == set(GIVEN_MODEL_FLAGS)


@pytest.mark.parametrize('name', list(MODEL_FLAGS))
def test_template_resolves_to_the_published_values(name):
    args = vars(option.parse_args(['--template', name, '--cpu']))
    assert {k: args[k] for k in MODEL_FLAGS[name]} == MODEL_FLAGS[name]
    assert {k: args[k] for k in TRAINING[name]} == TRAINING[name]
    model_flags = set(option.registry.model_flags())
    assert args['given'] & model_flags == GIVEN_MODEL_FLAGS[name]


def test_a_template_applies_no_model_flags_to_another_model():
    args = option.parse_args(['--template', 'LCoAN_paper', '--model', 'RCAN', '--cpu'])
    assert (args.n_resgroups, args.n_resblocks, args.n_feats, args.reduction) == (10, 20, 64, 16)
    assert args.given & set(option.registry.model_flags()) == set()
