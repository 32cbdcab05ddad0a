"""model.Model (device, precision, self-ensemble, chop) and model.checkpoint (loading state dicts).

Most tests use small stand-in networks registered as ``model.<name>`` modules, so that exact
properties can be asserted (a purely local network chops without any difference); the real LCoAN
is used in tiny configurations where the property is about its checkpoints.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import model
import option
from core.errors import UserError
from model import checkpoint, inference, registry, spec


class Log:
    """The part of ``run_folder.RunFolder`` the wrapper uses."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_log(self, msg: str) -> None:
        self.lines.append(msg)

    @property
    def text(self) -> str:
        return '\n'.join(self.lines)


def upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """Same key layout as LCoAN's ``tail.0``: conv + PixelShuffle stages (two x2 stages for x4)."""
    stages = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for r in stages:
        layers += [nn.Conv2d(n_feats, r * r * n_feats, 3, padding=1), nn.PixelShuffle(r)]
    return nn.Sequential(*layers)


class LocalNet(nn.Module):
    """A purely local SR network: LR receptive-field radius 4 (three 3x3 LR convs, one 3x3 HR conv)."""

    def __init__(self, args) -> None:
        super().__init__()
        nf, scale = args.n_feats, args.scale[0]
        self.head = nn.Sequential(nn.Conv2d(args.n_colors, nf, 3, padding=1))
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.ReLU())
        self.tail = nn.Sequential(upsampler(scale, nf), nn.Conv2d(nf, args.n_colors, 3, padding=1))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.tail(self.body(self.head(x)))


class NearestNet(nn.Module):
    """Nearest-neighbour upsampling of a pointwise function: equivariant to every flip and transpose."""

    def __init__(self, args) -> None:
        super().__init__()
        self.scale = args.scale[0]
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gain * x * x + x
        return y.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


class GlobalNet(LocalNet):
    """Like LocalNet plus the image mean: a non-local network, so chopping changes the output a little."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.05 * x.mean(dim=(-3, -2, -1), keepdim=True)


def register(monkeypatch, name: str, cls) -> None:
    """Make ``--model name`` build ``cls(args)``: an architecture of its own in the registry."""
    arch = spec.Architecture(name=name, description='stand-in', make_model=cls, flags=(), defaults={}, scales=(2, 3, 4),
                             demo={}, tiny={}, local=True, signature=f'{name}.signature', key_pattern='(?!)',
                             read_options=dict, shapes=dict)
    architectures = {**registry.architectures(), name: arch}
    monkeypatch.setattr(registry, 'architectures', lambda: architectures)


def make_args(*extra: str, model_name: str | None = None):
    # --pre_train is set after parsing: the stand-in networks' checkpoints are unknown to model.checkpoint.detect.
    extra = list(extra)
    pre_train = extra.pop(extra.index('--pre_train') + 1) if '--pre_train' in extra else ''
    if pre_train:
        extra.remove('--pre_train')
    args = option.parse_args(['--template', 'demo', '--cpu', '--n_feats', '4', '--n_colors', '3', '--patch_size', '96',
                              *extra])
    args.pre_train = pre_train
    if model_name is not None:
        args.model = model_name
    return args


def wrap(monkeypatch, cls, *extra: str, dtype=torch.float32) -> tuple[model.Model, Log]:
    name = f'standin_{cls.__name__.lower()}'
    register(monkeypatch, name, cls)
    log = Log()
    torch.manual_seed(0)
    m = model.Model(make_args(*extra, model_name=name), log)
    m.get_model().to(dtype)
    return m.eval(), log


def integer_weights(net: nn.Module) -> None:
    """Small-integer float64 weights: every sum is exact, whatever order a conv kernel adds in."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-1, 2, p.shape, generator=g, dtype=torch.float64))


def photo(h: int, w: int, n: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Crops of skimage photographs in [0, 1], (n, 3, h, w)."""
    from skimage import data as skdata
    images = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]
    crops = [torch.from_numpy(images[i % 3][40:40 + h, 60:60 + w].copy()).permute(2, 0, 1) for i in range(n)]
    return torch.stack(crops).to(dtype) / 255


# --------------------------------------------------------------------------------------------- chop

@pytest.mark.parametrize(('length', 'size', 'overlap'), [(10, 24, 4), (24, 24, 4), (25, 24, 4), (53, 24, 10),
                                                           (97, 16, 5), (1024, 96, 12)])
def test_tile_spans_cover_each_pixel_once_with_half_the_overlap_as_margin(length, size, overlap):
    spans = inference.overlap_spans(length, size, overlap)
    tile = min(length, size)
    covered = []
    for k, (start, stop, keep0, keep1) in enumerate(spans):
        assert 0 <= start and stop == start + tile <= length
        assert start <= keep0 < keep1 <= start + tile
        if k > 0:
            assert keep0 - start >= overlap // 2
        if k < len(spans) - 1:
            assert start + tile - keep1 >= overlap // 2
        covered += range(keep0, keep1)
    assert covered == list(range(length))
    if length > size:
        # Tiles are as far apart as the overlap allows: one more tile would be needed with a larger overlap.
        assert len(spans) == -(-(length - size) // (size - overlap)) + 1


def test_chop_of_an_image_that_fits_one_tile_is_exactly_the_plain_output(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2', '--chop', '--chop_size', '24', '--chop_overlap', '4')
    lr = photo(24, 19)
    chopped = m(lr)
    m.chop = False
    assert torch.equal(chopped, m(lr))
    assert chopped.shape == (1, 3, 48, 38) and chopped.dtype == torch.float32


@pytest.mark.parametrize(('scale', 'h', 'w', 'n'), [(2, 37, 53, 1), (3, 61, 29, 2), (4, 25, 40, 1), (2, 17, 50, 1)])
def test_chop_of_a_local_network_equals_the_plain_output_for_odd_sizes(monkeypatch, scale, h, w, n):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', str(scale), '--chop', '--chop_size', '24', '--chop_overlap', '10',
                '--chop_batch', '3', dtype=torch.float64)
    net = m.get_model()
    integer_weights(net)
    lr = torch.round(photo(h, w, n, torch.float64) * 255)
    chopped = m(lr)
    tile_calls = list(net.calls)
    m.chop = False
    plain = m(lr)
    assert chopped.shape == plain.shape == (n, 3, scale * h, scale * w)
    assert torch.equal(chopped, plain)
    # Memory is bounded by the tiles: no call sees more than chop_batch tiles of at most chop_size.
    assert sum(c[0] for c in tile_calls) > n
    assert all(c[0] <= 3 and c[2] <= 24 and c[3] <= 24 for c in tile_calls)


def test_chop_of_a_non_local_network_is_close_but_not_equal(monkeypatch):
    m, _ = wrap(monkeypatch, GlobalNet, '--scale', '2', '--chop', '--chop_size', '24', '--chop_overlap', '8')
    lr = photo(50, 41)
    chopped = m(lr)
    m.chop = False
    plain = m(lr)
    assert not torch.equal(chopped, plain)
    assert (chopped - plain).abs().max() < 0.02


def test_chop_of_lcoan_is_close_to_the_plain_output():
    args = option.parse_args(['--template', 'demo', '--cpu', '--n_feats', '8', '--reduction', '2', '--n_resgroups',
                              '1', '--n_resblocks', '1', '--n_clusters', '4', '--window_size', '32', '--chop',
                              '--chop_size', '24', '--chop_overlap', '8'])
    torch.manual_seed(0)
    m = model.Model(args, Log())
    lr = photo(40, 33)
    m(lr)  # a training step's forward initialises the k-means centroids, as in a trained checkpoint
    m.eval()
    chopped = m(lr)
    m.chop = False
    plain = m(lr)
    assert chopped.shape == plain.shape == (1, 3, 80, 66)
    assert not torch.equal(chopped, plain)  # attention across tile borders is lost
    assert (chopped - plain).abs().mean() < 1e-4 and (chopped - plain).abs().max() < 0.01  # rgb_range 1


# ------------------------------------------------------------------------------------ self-ensemble

def test_self_ensemble_is_the_mean_over_the_eight_rotations_and_reflections(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2', '--self_ensemble')
    net = m.get_model()
    lr = photo(13, 17)
    with torch.no_grad():
        outs = []
        for image, transposed in ((lr, False), (lr.transpose(-2, -1), True)):
            for k in range(4):
                y = torch.rot90(net(torch.rot90(image, k, (-2, -1))), -k, (-2, -1))
                outs.append(y.transpose(-2, -1) if transposed else y)
        reference = torch.stack(outs).mean(0)
    ensemble = m(lr)
    assert ensemble.shape == (1, 3, 26, 34)
    torch.testing.assert_close(ensemble, reference, rtol=0, atol=1e-6)
    m.self_ensemble = False
    assert (m(lr) - ensemble).abs().max() > 1e-3  # the stand-in is not equivariant: the average differs


def test_self_ensemble_of_an_equivariant_network_equals_its_plain_output(monkeypatch):
    m, _ = wrap(monkeypatch, NearestNet, '--scale', '3', '--self_ensemble')
    lr = photo(11, 14)
    ensemble = m(lr)
    m.self_ensemble = False
    assert torch.equal(ensemble, m(lr))


def test_self_ensemble_with_chop(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2', '--self_ensemble', '--chop', '--chop_size', '24',
                '--chop_overlap', '10', dtype=torch.float64)
    integer_weights(m.get_model())
    lr = torch.round(photo(30, 41, dtype=torch.float64) * 255)
    both = m(lr)
    m.chop = False
    assert torch.equal(both, m(lr))


# -------------------------------------------------------------------------------- modes, precision

def test_training_mode_is_the_plain_network_with_gradients(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2', '--chop', '--chop_size', '24', '--chop_overlap', '4',
                '--self_ensemble', '--precision', 'bf16')
    m.train()
    lr = photo(30, 30)
    sr = m(lr)
    assert sr.requires_grad and sr.dtype == torch.float32
    assert torch.equal(sr, m.get_model()(lr))
    assert len(m.get_model().calls) == 2  # no tiles, no ensemble


def test_eval_runs_without_gradients(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2')
    assert not m(photo(8, 8)).requires_grad


@pytest.mark.parametrize('precision', ['bf16', 'half'])
def test_reduced_precision_runs_under_autocast_and_returns_float32(monkeypatch, precision):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2', '--precision', precision)
    lr = photo(9, 10)
    low = m(lr)
    m.precision = 'single'
    full = m(lr)
    assert low.dtype == torch.float32 and low.shape == (1, 3, 18, 20)
    assert not torch.equal(low, full)
    torch.testing.assert_close(low, full, rtol=0, atol=0.05 * full.abs().max().item())


def test_unsupported_autocast_is_a_user_error_naming_precision(monkeypatch):
    monkeypatch.setattr(torch, 'is_autocast_enabled', lambda *a: False)
    with pytest.raises(UserError, match=r'^--precision half: autocast to torch.float16 is not supported on cpu'):
        wrap(monkeypatch, LocalNet, '--scale', '2', '--precision', 'half')


def test_state_dict_is_the_bare_networks_and_get_model_unwraps(monkeypatch):
    m, _ = wrap(monkeypatch, LocalNet, '--scale', '2')
    keys = list(m.state_dict())
    assert keys == list(m.get_model().state_dict()) and keys[0] == 'head.0.weight'
    assert 'tail.0.0.weight' in keys
    bare = m.model
    m.model = nn.DataParallel(bare)  # holds the network as .module, as DistributedDataParallel does
    assert m.get_model() is bare
    assert list(m.state_dict()) == keys
    state = {k: torch.zeros_like(v) for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    assert all(v.abs().sum() == 0 for v in m.state_dict().values())


# --------------------------------------------------------------------------------------- checkpoints

def save_net(tmp_path: Path, name: str, cls, *extra: str, transform=None) -> tuple[Path, dict]:
    torch.manual_seed(123)
    net = cls(make_args(*extra))
    state = net.state_dict()
    if transform is not None:
        state = transform(state)
    path = tmp_path / name
    torch.save(state, path)
    return path, {k: v.clone() for k, v in net.state_dict().items()}


def test_pre_train_with_the_same_layout_loads_everything(tmp_path, monkeypatch):
    path, saved = save_net(tmp_path, 'same.pt', LocalNet, '--scale', '3')
    m, log = wrap(monkeypatch, LocalNet, '--scale', '3', '--pre_train', str(path))
    for k, v in m.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert f'Loaded --pre_train {path} ({len(saved)} tensors).' in log.lines


def test_x2_checkpoint_into_x4_keeps_the_new_upsampler_and_loads_the_rest_exactly(tmp_path, monkeypatch):
    path, saved = save_net(tmp_path, 'LCoAN_x2.pt', LocalNet, '--scale', '2')
    torch.manual_seed(0)
    fresh = LocalNet(make_args('--scale', '4')).state_dict()
    m, log = wrap(monkeypatch, LocalNet, '--scale', '4', '--pre_train', str(path))
    loaded = m.state_dict()
    assert set(loaded) - set(saved) == {'tail.0.2.weight', 'tail.0.2.bias'}
    for k, v in loaded.items():
        expected = fresh[k] if k.startswith('tail.0.') else saved[k]
        assert torch.equal(v, expected), k
    assert ('kept the new x4 upsampler (tail.0.0.weight, tail.0.0.bias, tail.0.2.weight, tail.0.2.bias): '
            'checkpoint was trained for x2; skipped checkpoint keys: tail.0.0.weight (16, 4, 3, 3), '
            'tail.0.0.bias (16,).') in log.text


def test_x3_checkpoint_into_x2_names_the_resized_upsampler(tmp_path, monkeypatch):
    path, _ = save_net(tmp_path, 'x3.pt', LocalNet, '--scale', '3')
    m, log = wrap(monkeypatch, LocalNet, '--scale', '2', '--pre_train', str(path))
    assert 'kept the new x2 upsampler' in log.text and 'trained for x3' in log.text
    assert 'tail.0.0.weight (36, 4, 3, 3)' in log.text


def test_other_mismatches_are_user_errors_naming_file_keys_and_both_shapes(tmp_path, monkeypatch):
    path, _ = save_net(tmp_path, 'wide.pt', LocalNet, '--scale', '2', '--n_feats', '8')
    with pytest.raises(UserError) as e:
        wrap(monkeypatch, LocalNet, '--scale', '2', '--pre_train', str(path))
    msg = str(e.value)
    assert msg.startswith(f'--pre_train {path} does not fit this model; shape mismatch: ')
    assert 'head.0.weight checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)' in msg
    assert 'body.0.weight checkpoint (8, 8, 3, 3) vs model (4, 4, 3, 3)' in msg
    assert '\n' not in msg


def test_missing_and_unexpected_keys_outside_the_upsampler_are_named(tmp_path, monkeypatch):
    def rename(state):
        state = dict(state)
        state['body.9.weight'] = state.pop('body.0.weight')
        return state
    path, _ = save_net(tmp_path, 'renamed.pt', LocalNet, '--scale', '2', transform=rename)
    expected = r'missing from the checkpoint: body\.0\.weight; not in the model: body\.9\.weight'
    with pytest.raises(UserError, match=expected):
        wrap(monkeypatch, LocalNet, '--scale', '2', '--pre_train', str(path))


def test_resuming_requires_an_exact_match_even_in_the_upsampler(tmp_path):
    path, _ = save_net(tmp_path, 'x2.pt', LocalNet, '--scale', '2')
    net = LocalNet(make_args('--scale', '4'))
    with pytest.raises(UserError, match=r'only the upsampler differs: the checkpoint is for another scale'):
        checkpoint.read(path, what='--load', recognise=False).load_into(net, log=print, allow_new_upsampler=False)


def test_module_prefix_of_ddp_checkpoints_is_stripped(tmp_path, monkeypatch):
    path, saved = save_net(tmp_path, 'ddp.pt', LocalNet, '--scale', '2',
                           transform=lambda s: {'module.' + k: v for k, v in s.items()})
    m, log = wrap(monkeypatch, LocalNet, '--scale', '2', '--pre_train', str(path))
    for k, v in m.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert sum("removed the leading 'module.'" in line for line in log.lines) == 1


class Payload:
    pass


@pytest.mark.parametrize(('name', 'write', 'reason'), [
    ('missing.pt', None, 'no such file'),
    ('notes.txt', lambda p: p.write_text('not a checkpoint\n'),
     "a text file, not a PyTorch checkpoint (it starts with 'not a checkpoint')"),
    ('empty.pt', lambda p: p.write_bytes(b''), 'an empty file, not a PyTorch checkpoint'),
    ('truncated.pt', 'truncate', 'cut short or damaged: its zip archive is incomplete'),
    ('pickled.pt', lambda p: torch.save({'w': torch.ones(1), 'x': Payload()}, p),
     'refused: it holds a pickled reference to test_wrapper.Payload, not only tensors (nothing of it was run)'),
    ('list.pt', lambda p: torch.save([torch.ones(1)], p), 'expected a state_dict (a dict of tensors), found a list'),
    ('nested.pt', lambda p: torch.save({'weights': {'w': torch.ones(1)}, 'step': torch.ones(1)}, p),
     "nests one under 'weights'"),
    ('folder.pt', lambda p: p.mkdir(), 'not a file'),
])
def test_unreadable_checkpoints_are_user_errors_naming_the_file(tmp_path, monkeypatch, name, write, reason):
    path = tmp_path / name
    if write == 'truncate':
        good, _ = save_net(tmp_path, 'good.pt', LocalNet, '--scale', '2')
        path.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif write is not None:
        write(path)
    with pytest.raises(UserError) as e:
        wrap(monkeypatch, LocalNet, '--scale', '2', '--pre_train', str(path))
    assert str(e.value).startswith(f'--pre_train {path}: ')
    assert reason in str(e.value)
    assert '\n' not in str(e.value)


def test_upsampler_scale_is_read_from_the_conv_shapes():
    for scale in (2, 3, 4):
        net = LocalNet(make_args('--scale', str(scale)))
        assert spec.upsampler_scale(net.state_dict()) == scale
    assert spec.upsampler_scale({'tail.0.0.weight': torch.zeros(5, 4, 3, 3)}) is None
    assert spec.upsampler_scale({}) is None


# ------------------------------------------------------------------------------------ the real LCoAN

def tiny_lcoan_args(*extra: str):
    return option.parse_args(['--template', 'demo', '--cpu', '--n_feats', '8', '--reduction', '2', '--n_resgroups',
                              '1', '--n_resblocks', '1', '--n_clusters', '4', '--window_size', '32', *extra])


def test_lcoan_x2_checkpoint_fine_tunes_x4(tmp_path):
    torch.manual_seed(5)
    x2 = model.Model(tiny_lcoan_args('--scale', '2'), Log())
    x2(photo(16, 16))  # initialises the centroids: buffers must load too
    saved = {k: v.clone() for k, v in x2.state_dict().items()}
    path = tmp_path / 'LCoAN_x2.pt'
    torch.save(x2.state_dict(), path)
    torch.manual_seed(6)
    fresh = model.Model(tiny_lcoan_args('--scale', '4'), Log()).state_dict()
    log = Log()
    torch.manual_seed(6)
    x4 = model.Model(tiny_lcoan_args('--scale', '4', '--pre_train', str(path)), log)
    loaded = x4.state_dict()
    assert {k for k in loaded if k.startswith('tail.0.')} == {'tail.0.0.weight', 'tail.0.0.bias', 'tail.0.2.weight',
                                                               'tail.0.2.bias'}
    for k, v in loaded.items():
        assert torch.equal(v, fresh[k] if k.startswith('tail.0.') else saved[k]), k
    assert 'kept the new x4 upsampler' in log.text and 'checkpoint was trained for x2' in log.text
    assert bool(loaded['body.0.attention.0.kmeans.initted'])
    assert x4.eval()(photo(8, 8)).shape == (1, 3, 32, 32)


def test_lcoan_checkpoint_for_other_n_clusters_is_refused(tmp_path):
    path = tmp_path / 'k8.pt'
    torch.save(model.Model(tiny_lcoan_args('--n_clusters', '8'), Log()).state_dict(), path)
    with pytest.raises(UserError, match=r'kmeans\.means checkpoint \(1, 8, 4\) vs model \(1, 4, 4\)'):
        model.Model(tiny_lcoan_args('--pre_train', str(path)), Log())


@pytest.mark.slow
def test_compiled_lcoan_gives_the_eager_numbers_and_plain_checkpoint_keys():
    """``--compile`` goes through TorchDynamo (the ``eager`` backend here: tracing, no code generation, so
    seconds on a CPU); the training step, the evaluation and the saved keys are those of the plain network."""
    results = {}
    for backend in (None, 'eager'):
        torch.manual_seed(3)
        log = Log()
        net = model.Model(tiny_lcoan_args(*(['--compile', backend] if backend else [])), log)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        lr, hr = photo(16, 16), photo(32, 32)
        for _ in range(2):  # the first step initialises the centroids, the second uses them
            optimizer.zero_grad()
            loss = nn.functional.l1_loss(net(lr), hr)
            loss.backward()
            optimizer.step()
        results[backend] = loss.detach(), net.eval()(photo(12, 20)), net.state_dict(), log.text
    (loss, out, state, _), (c_loss, c_out, c_state, c_log) = results[None], results['eager']
    assert 'torch.compile (backend eager)' in c_log
    assert list(c_state) == list(state)
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_out, out, rtol=1e-4, atol=1e-5)
    for key in state:
        torch.testing.assert_close(c_state[key], state[key], rtol=1e-4, atol=1e-5, msg=key)


def test_unknown_compile_backend_is_named():
    with pytest.raises(UserError, match=r"--compile.*'nope'.*torch\.compile backends: .*inductor"):
        tiny_lcoan_args('--compile', 'nope')
