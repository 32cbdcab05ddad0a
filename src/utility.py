"""EDSR's ``utility`` names, kept importable from their one-concern modules.

``from utility import calc_psnr, calc_ssim`` and ``utility.checkpoint(args)`` work as in EDSR-style
code; new code imports from the modules themselves:

- :mod:`timing`: ``timer``
- :mod:`io_utils`: atomic writes and the one ``weights_only`` loader
- :mod:`rng`: seeds and RNG states
- :mod:`metrics`: PSNR, SSIM, quantisation
- :mod:`optim`: optimizer and learning-rate schedule
- :mod:`run_folder`: the run folder (``checkpoint``), its logs, tables, plots and result images
"""

from core.io_utils import atomic_save, atomic_write, atomic_write_text, load_state
from core.rng import derive_seed, get_rng_state, seed_everything, set_rng_state
from core.timing import timer
from metrics import Y_COEFFS, calc_psnr, calc_ssim, psnr, quantize, ssim
from training.optim import make_optimizer, make_scheduler
from training.run_folder import TRAINING_STATE, checkpoint

__all__ = [
    'TRAINING_STATE', 'Y_COEFFS', 'atomic_save', 'atomic_write', 'atomic_write_text', 'calc_psnr', 'calc_ssim',
    'checkpoint', 'derive_seed', 'get_rng_state', 'load_state', 'make_optimizer', 'make_scheduler', 'psnr',
    'quantize', 'seed_everything', 'set_rng_state', 'ssim', 'timer',
]
