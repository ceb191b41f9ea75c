"""Glow against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.glow import glow
from testkit.reference import reference_glow
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance


class TestGlow(KernelTester):
    kernel = glow
    args = (1.0, 5)
    low_precision_args = (0.3, 4)
    batch_args = [(torch.tensor([0.2, 1.0, 4.0]), 5)]
    large_batch_args = [(torch.tensor([0.5, 2.0]), 3)]
    identity_args = [(0.0, 5)]
    extreme_args = [(5.0, 50), (5.0, 1), (0.0, 50), (1.0, 50)]

    @pytest.mark.parametrize("radius", [1, 2, 5, 12])
    def test_reference(self, device, dtype, radius):
        image = make_image() * 0.5  # keeps most of the sum below the clamp
        intensities = [1.0, 0.3]
        out = glow(tensor(image, device, dtype), torch.tensor(intensities, dtype=torch.float64), radius)
        assert_close(out, reference_glow(image, intensities, radius), tolerance(dtype))

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`radius`"):
            glow(torch.rand(1, 3, 4, 4), 1.0, 2.0)
        with pytest.raises(ValueError, match="`intensity`"):
            glow(torch.rand(1, 3, 4, 4), torch.ones(2), 2)
