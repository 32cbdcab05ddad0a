"""Networks built in code from keyword arguments (``Architecture.build``, ``registry.build``): the network and
the options of the command line, its defaults, and its errors in the words of the flags."""

import pytest
import torch

import option
from core.errors import UserError
from helpers.architectures import tiny_flags
from model import registry

pytestmark = pytest.mark.filterwarnings('ignore:k-means centroids are not initialised')
NAMES = registry.names()


def output(net, x):
    torch.manual_seed(0)  # NLSN draws random hash rotations in every forward
    with torch.no_grad():
        return net.eval()(x)


def parsed(argv):
    """The error that ``option.parse_args(argv)`` raises, as text."""
    with pytest.raises(UserError) as e:
        option.parse_args([*argv, '--cpu'])
    return str(e.value)


def built(name, **options):
    """The error that ``registry.build(name, **options)`` raises, as text."""
    with pytest.raises(UserError) as e:
        registry.build(name, **options)
    return str(e.value)


@pytest.mark.parametrize('name', NAMES)
def test_keywords_build_the_network_of_the_command_line(name):
    arch = registry.get(name)
    args = option.parse_args([*tiny_flags(name), '--scale', '2', '--rgb_range', '1', '--cpu'])
    torch.manual_seed(3)
    from_flags = arch.make_model(args)
    torch.manual_seed(3)
    net = arch.build(scale=2, rgb_range=1, **arch.tiny)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in from_flags.state_dict().items()}
    assert all(torch.equal(v, from_flags.state_dict()[k]) for k, v in net.state_dict().items())
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(output(net, x), output(from_flags, x))
    # The options it carries are the parser's values of the same names (scale as the list [2]).
    assert vars(net.sr_args) == {k: getattr(args, k) for k in vars(net.sr_args)}
    assert net.sr_args.scale == [2] and net.sr_args.model == arch.name


@pytest.mark.parametrize('name', NAMES)
def test_flags_not_given_take_the_published_defaults(name):
    arch = registry.get(name)
    values = arch.options(scale=arch.scales[0])
    assert {k: getattr(values, k) for k in arch.defaults} == dict(arch.defaults)
    assert (values.n_colors, values.rgb_range) == (3, 255)  # the parser's defaults
    assert vars(values) == {k: v for k, v in vars(option.parse_args(['--model', name, '--scale',
                                                                     str(arch.scales[0]), '--cpu'])).items()
                            if k in vars(values)}


def test_registry_build_finds_the_architecture_in_any_letter_case():
    net = registry.build('edsr', scale=3, **registry.get('EDSR').tiny)
    assert net.sr_args.model == 'EDSR' and net.sr_args.scale == [3] and type(net).__name__ == 'EDSR'


def test_an_unknown_option_is_a_type_error_naming_it():
    arch = registry.get('EDSR')
    with pytest.raises(TypeError, match="EDSR: unknown option 'colour'; its options are scale, n_colors, rgb_range, "
                                        'n_resblocks, n_feats, res_scale'):
        arch.build(scale=2, colour=3)
    with pytest.raises(TypeError, match="unknown option 'cpu'"):
        registry.build('EDSR', scale=2, cpu=True)
    with pytest.raises(TypeError, match="'scale'"):
        arch.build(n_feats=8)


@pytest.mark.parametrize(('name', 'flags', 'options'), [
    ('LCoAN', ['--n_feats', '0'], dict(n_feats=0)),
    ('LCoAN', ['--reduction', '3', '--n_feats', '8'], dict(reduction=3, n_feats=8)),
    ('LCoAN', ['--ema_decay', '1.5'], dict(ema_decay=1.5)),
    ('LCoAN', ['--res_scale', 'nan'], dict(res_scale=float('nan'))),
    ('LCoAN', ['--attention_impl', 'nope'], dict(attention_impl='nope')),
    ('LCoAN', ['--scale', '8'], dict(scale=8)),
    ('LCoAN', ['--scale', '2+3'], dict(scale=[2, 3])),
    ('LCoAN', ['--scale', 'x2'], dict(scale='x2')),
    ('LCoAN', ['--rgb_range', '0'], dict(rgb_range=0)),
    ('EDSR', ['--n_colors', '2'], dict(n_colors=2)),
    ('EDSR', ['--n_hashes', '4'], dict(n_hashes=4)),
    ('RDN', ['--RDNkSize', '4'], dict(RDNkSize=4)),
    ('SwinIR', ['--num_heads', '7'], dict(num_heads='7')),
    ('SwinIR', ['--depths', '6+0'], dict(depths=[6, 0])),
])
def test_a_bad_value_gives_the_error_of_its_flag(name, flags, options):
    argv = ['--model', name, *flags] + ([] if 'scale' in options else ['--scale', '2'])
    expected = parsed(argv)
    assert expected.split()[0] in argv  # one line naming a flag of the command line
    assert built(name, **{'scale': 2, **options}) == expected


def test_a_value_of_the_wrong_type_is_named():
    assert built('EDSR', scale=2, n_feats='8') == "--n_feats '8': must be an integer"
    assert built('EDSR', scale=2, n_resblocks=True) == '--n_resblocks True: must be an integer'
    assert built('SwinIR', scale=2, upsampler=1) == '--upsampler 1: must be a string'
    assert registry.build('EDSR', scale=2, n_resblocks=1, n_feats=8, res_scale=1).sr_args.res_scale == 1.0


def test_list_flags_as_lists_or_as_their_strings():
    tiny = dict(registry.get('SwinIR').tiny, embed_dim=8, window_size=4, img_size=8)
    as_text = registry.build('SwinIR', scale='2', **{**tiny, 'depths': '2+2', 'num_heads': '2+4'})
    for depths, heads, scale in (([2, 2], [2, 4], 2), ((2, 2), (2, 4), [2]), ('2,2', '2,4', '2')):
        net = registry.build('SwinIR', scale=scale, **{**tiny, 'depths': depths, 'num_heads': heads})
        assert vars(net.sr_args) == vars(as_text.sr_args)
        assert (net.sr_args.depths, net.sr_args.num_heads, net.sr_args.scale) == ('2+2', '2+4', [2])
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in
                                                                      as_text.state_dict().items()}


def test_choices_are_matched_in_any_letter_case_and_stored_as_declared():
    net = registry.build('SwinIR', scale=2, **{**registry.get('SwinIR').tiny, 'upsampler': 'PixelShuffleDirect'})
    assert net.sr_args.upsampler == 'pixelshuffledirect' and 'conv_last.weight' not in net.state_dict()
