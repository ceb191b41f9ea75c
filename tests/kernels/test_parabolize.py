"""Parabolize against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.parabolize import parabolize
from testkit.reference import reference_parabolize
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance

# (coeff, vertex_x, vertex_y), one value per sample.
CASES = [
    ([1.0, 1.0], [0.5, 0.5], [0.5, 0.5]),
    ([-3.0, 10.0], [0.2, 0.9], [0.8, 0.0]),
    ([-10.0, 2.5], [1.0, 0.0], [1.0, 0.3]),
]


class TestParabolize(KernelTester):
    kernel = parabolize
    args = (1.0, 0.5, 0.5)
    low_precision_args = (2.0, 0.4, 0.3)
    batch_args = [(torch.tensor([1.0, -2.0, 7.0]), torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.5, 0.9, 0.0]))]
    test_identity = None  # no parameters make a parabola the identity
    extreme_args = [(-10.0, 0.0, 0.0), (10.0, 1.0, 1.0), (10.0, 0.0, 0.0)]

    @pytest.mark.parametrize("params", CASES)
    def test_reference(self, device, dtype, params):
        image = make_image()
        out = parabolize(tensor(image, device, dtype), *(torch.tensor(p, dtype=torch.float64) for p in params))
        assert_close(out, reference_parabolize(image, *params), tolerance(dtype))

    def test_zero_coeff_is_constant(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        out = parabolize(image, 0.0, 0.3, torch.tensor([0.25, 0.75]))
        assert (out[0] == torch.tensor(0.25, dtype=dtype)).all() and (out[1] == torch.tensor(0.75, dtype=dtype)).all()

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`vertex_x`"):
            parabolize(torch.rand(2, 3, 4, 4), 1.0, torch.ones(3), 0.5)
