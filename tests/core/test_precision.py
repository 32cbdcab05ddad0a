"""core.precision: the autocast context of each --precision and the one device check."""

import pytest
import torch

from core import precision
from core.errors import UserError


@pytest.mark.parametrize('name, dtype', [('half', torch.float16), ('bf16', torch.bfloat16)])
def test_reduced_precisions_autocast_matrix_products_to_their_dtype(name, dtype):
    a = torch.rand(4, 4)
    with precision.autocast(name, 'cpu'):
        assert (a @ a).dtype == dtype
    with precision.autocast('single', 'cpu'):
        assert (a @ a).dtype == torch.float32


def test_an_unknown_precision_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^precision 'fp8': allowed: single, half, bf16$"):
        precision.autocast('fp8', 'cpu')


def test_only_float16_scales_the_loss():
    assert [precision.scales_the_loss(p) for p in precision.PRECISIONS] == [False, True, False]


def test_the_device_check_refuses_an_autocast_that_switches_itself_off(monkeypatch):
    precision.check('single', torch.device('cpu'))  # nothing to check, no probe
    monkeypatch.setattr(torch, 'is_autocast_enabled', lambda *a: False)
    with pytest.raises(UserError, match=r'^--precision bf16: autocast to torch.bfloat16 is not supported on cpu; '
                                        r'use single$'):
        precision.check('bf16', torch.device('cpu'))
