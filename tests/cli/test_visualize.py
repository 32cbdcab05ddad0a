"""src/visualize.py: what the figures show is the network's own attention, and the files are written."""


import imageio.v3 as iio
import numpy as np
import pytest
import skimage.data
import torch
from einops import rearrange

import option
import visualize
from core.errors import UserError
from model.blocks import lcoa_stats
from model.lcoan import make_model

TINY = ['--template', 'demo', '--n_resgroups', '2', '--n_resblocks', '1', '--n_feats', '8', '--n_clusters', '6',
        '--window_size', '24']


def tiny_lcoan(*extra):
    args = option.parse_args([*TINY, *extra])
    torch.manual_seed(0)
    net = make_model(args)
    net.train()(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))  # initialise the centroids
    return net.eval(), args


def photo(h=20, w=26) -> np.ndarray:
    return np.ascontiguousarray(skimage.data.chelsea()[::8, ::8][:h, :w])


@pytest.mark.parametrize('impl', ['fast', 'reference'])
def test_captured_attention_rows_reproduce_the_first_module_output(impl):
    net, _ = tiny_lcoan('--n_hashes', '2', '--attention_impl', impl)
    image = photo()
    lr = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None] / 255
    module = net.body[0].attention[0]
    seen = {}

    def keep(_m, inputs, output):
        seen.update(x=inputs[0], out=output[0])

    module.register_forward_hook(keep)
    cap = visualize.capture_lcoa(net, lr)
    assert cap.codes.shape == (2, image.shape[0] * image.shape[1]) and cap.n_clusters == 6 and cap.window == 24
    assert (cap.codes[0] != cap.codes[1]).any()  # two different clusterings
    dense = lcoa_stats.dense_attention(cap.pattern)
    torch.testing.assert_close(dense.sum(1), torch.ones(dense.shape[0]))
    with torch.no_grad():
        values = rearrange(module.conv_assembly(seen['x']), 'n c h w -> n (h w) c')[0]
        expected = seen['out'] - seen['x']
    got = rearrange(dense @ values, '(h w) c -> c h w', h=image.shape[0])[None] * module.res_scale
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_visualize_writes_every_figure(tmp_path, capsys):
    net, _ = tiny_lcoan()
    torch.save(net.state_dict(), tmp_path / 'w.pt')
    image = photo()
    iio.imwrite(tmp_path / 'img.png', image)
    out = tmp_path / 'vis'
    written = visualize.run(['--weights', str(tmp_path / 'w.pt'), '--image', str(tmp_path / 'img.png'), '-o',
                             str(out), '--pixel', '5,7', '--pixel', '19,0', *TINY])
    names = sorted(p.name for p in written)
    assert names == sorted(['clusters.png', 'cluster_patches.png', 'attention_y5_x7.png', 'attention_y19_x0.png',
                            'cluster_stats.png', 'overview.png', 'statistics.txt'])
    for path in written:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == '.png':
            assert iio.imread(path).ndim == 3
    # The numbers agree with the statistics computed from the captured pattern.
    lr = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None] / 255
    cap = visualize.capture_lcoa(net, lr)
    self_w = lcoa_stats.self_weights(cap.pattern)[0]
    text = (out / 'statistics.txt').read_text()
    assert f'pixel (5, 7): weight on itself {float(self_w[5 * 26 + 7]):.4f}' in text
    assert f'mean attention weight on self: {float(self_w.mean()):.4f}' in text
    sizes = lcoa_stats.cluster_sizes(cap.codes[None], 6)[0]
    assert f'sizes (largest first) {sorted(sizes.tolist(), reverse=True)}' in text
    assert 'Wrote 7 files' in capsys.readouterr().out


def test_visualize_chooses_pixels_on_texture(tmp_path):
    net, _ = tiny_lcoan()
    torch.save(net.state_dict(), tmp_path / 'w.pt')
    image = np.full((24, 30, 3), 128, dtype=np.uint8)
    image[:, 15:] = np.random.default_rng(0).integers(0, 255, (24, 15, 3))  # texture on the right half only
    iio.imwrite(tmp_path / 'img.png', image)
    picked = visualize.textured_pixels(image, 3)
    assert len(picked) == 3 and all(x >= 13 for _, x in picked)
    assert all((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 > 4 ** 2 for i, a in enumerate(picked) for b in picked[i + 1:])
    written = visualize.run(['--weights', str(tmp_path / 'w.pt'), '--image', str(tmp_path / 'img.png'), '-o',
                             str(tmp_path / 'vis'), '--n_pixels', '2', *TINY])
    assert sum(p.name.startswith('attention_') for p in written) == 2


@pytest.mark.parametrize('flags, message', [
    (['--pixel', '30,2'], '--pixel 30,2: outside the 20x26 image'),
    (['--pixel', '3;4'], "--pixel '3;4': expected y,x"),
    (['--n_feats', '16'], '--weights .* does not fit this model'),
])
def test_visualize_errors_name_the_flag(tmp_path, flags, message):
    net, _ = tiny_lcoan()
    torch.save(net.state_dict(), tmp_path / 'w.pt')
    iio.imwrite(tmp_path / 'img.png', photo())
    with pytest.raises(UserError, match=message):
        visualize.run(['--weights', str(tmp_path / 'w.pt'), '--image', str(tmp_path / 'img.png'), '-o',
                       str(tmp_path / 'vis'), *TINY, *flags])


def test_nlsn_buckets_reproduce_the_attention_output():
    """With NLSN in the checkout: the rebuilt pattern is the module's own (its output, from the dense rows)."""
    nlsa = pytest.importorskip('model.blocks.nlsa')
    from model.nlsn import NLSN
    torch.manual_seed(0)
    net = NLSN(scale=2, n_resblocks=2, n_feats=8, chunk_size=16, n_hashes=2, rgb_range=1).eval()
    module = next(m for m in net.modules() if isinstance(m, nlsa.NonLocalSparseAttention))
    seen = {}
    module.register_forward_hook(lambda _m, inputs, output: seen.update(x=inputs[0], out=output))
    image = photo(12, 14)
    lr = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None] / 255
    cap = visualize.capture_nlsn(net, lr)
    assert cap.codes.shape == (2, 12 * 14) and cap.kind == 'LSH bucket' and cap.window == 16
    assert 0 <= int(cap.codes.min()) and int(cap.codes.max()) < cap.n_clusters
    dense = lcoa_stats.dense_attention(cap.pattern)
    with torch.no_grad():
        values = rearrange(module.conv_assembly(seen['x']), 'n c h w -> n (h w) c')[0]
    got = rearrange(dense @ values, '(h w) c -> c h w', h=12)[None] * module.res_scale
    torch.testing.assert_close(got, seen['out'] - seen['x'], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(('h', 'w'), [(1, 1), (1, 9), (7, 1)])
def test_visualize_an_image_of_one_pixel_row_or_column(tmp_path, h, w):
    net, _ = tiny_lcoan()
    torch.save(net.state_dict(), tmp_path / 'w.pt')
    image = np.ascontiguousarray(photo()[:h, :w])
    iio.imwrite(tmp_path / 'img.png', image)
    picked = visualize.textured_pixels(image, 2)
    assert picked and all(0 <= y < h and 0 <= x < w for y, x in picked)
    written = visualize.run(['--weights', str(tmp_path / 'w.pt'), '--image', str(tmp_path / 'img.png'), '-o',
                             str(tmp_path / 'vis'), *TINY])
    assert any(p.name.startswith('attention_') for p in written) and (tmp_path / 'vis' / 'overview.png').is_file()
