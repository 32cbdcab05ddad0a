"""--save_safetensors: every model file of a run is also written as .safetensors, with the same tensors."""

import torch
from safetensors.torch import load_file

from core.io_utils import load_state
from helpers.trainer_kit import make_args, make_trainer, run_epochs


def test_model_files_are_also_written_as_safetensors(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--save_safetensors', '--save_models', '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    model_dir = ckp.dir / 'model'
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ['model_1.pt', 'model_1.safetensors', 'model_best.pt', 'model_best.safetensors',
                     'model_latest.pt', 'model_latest.safetensors']
    for stem in ('model_1', 'model_best', 'model_latest'):
        pt = torch.load(model_dir / f'{stem}.pt', weights_only=True)
        st = load_file(model_dir / f'{stem}.safetensors')
        assert pt.keys() == st.keys() and all(torch.equal(pt[k], st[k]) for k in pt)
    # The run's own reader takes them too.
    back = load_state(model_dir / 'model_latest.safetensors')
    assert all(torch.equal(back[k], v) for k, v in torch.load(model_dir / 'model_latest.pt', weights_only=True).items())


def test_by_default_only_pt_files(tmp_path):
    trainer, ckp, _ = make_trainer(make_args(tmp_path, '--epochs', '2'))
    run_epochs(trainer, 1)
    ckp.done()
    assert not list((ckp.dir / 'model').glob('*.safetensors'))
