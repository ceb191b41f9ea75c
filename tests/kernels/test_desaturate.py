"""Desaturate against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.desaturate import DESATURATE_METHODS, desaturate
from testkit.reference import reference_desaturate
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance


class TestDesaturate(KernelTester):
    kernel = desaturate
    args = (0.5, "average")
    low_precision_args = (0.8, "luminance (Rec.601)")
    batch_args = [(torch.tensor([0.0, 0.4, 1.0]), method) for method in DESATURATE_METHODS]
    identity_args = [(0.0, method) for method in DESATURATE_METHODS]
    extreme_args = [(factor, method) for method in DESATURATE_METHODS for factor in (0.0, 1.0)]

    def test_methods_are_fal_spellings(self):
        assert DESATURATE_METHODS == ("luminance (Rec.709)", "luminance (Rec.601)", "average", "lightness")

    @pytest.mark.parametrize("method", DESATURATE_METHODS)
    @pytest.mark.parametrize("factors", [[1.0, 1.0], [0.3, 0.75]])
    def test_reference(self, device, dtype, method, factors):
        image = make_image()
        out = desaturate(tensor(image, device, dtype), torch.tensor(factors, dtype=torch.float64), method)
        assert_close(out, reference_desaturate(image, factors, method), tolerance(dtype))

    def test_full_factor_is_grey(self, device):
        out = desaturate(tensor(make_image(), device), 1.0, "lightness")
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`method`"):
            desaturate(torch.rand(1, 3, 4, 4), 1.0, "luminance")
