"""Colour tint against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.tint import TINT_MODES, tint
from testkit.reference import FACTORS, reference_tint
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance


class TestTint(KernelTester):
    kernel = tint
    args = (0.7, "vintage")
    low_precision_args = (0.8, "cool")
    batch_args = [(torch.tensor([0.1, 0.6, 1.0]), "teal")]
    identity_args = [(0.0, mode) for mode in TINT_MODES]
    extreme_args = [(strength, mode) for mode in TINT_MODES for strength in (0.1, 1.0)]

    def test_modes_are_fal_spellings(self):
        assert TINT_MODES == tuple(FACTORS)

    @pytest.mark.parametrize("mode", TINT_MODES)
    def test_reference(self, device, dtype, mode):
        image = make_image()
        strengths = [1.0, 0.35]
        out = tint(tensor(image, device, dtype), torch.tensor(strengths, dtype=torch.float64), mode)
        assert_close(out, reference_tint(image, strengths, mode), tolerance(dtype))

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`mode`"):
            tint(torch.rand(1, 3, 4, 4), 1.0, "Sepia")
