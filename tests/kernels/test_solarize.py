"""Solarize against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.solarize import solarize
from testkit.reference import reference_solarize
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, rounded, tensor


class TestSolarize(KernelTester):
    kernel = solarize
    args = (0.5,)
    low_precision_args = (0.6,)
    batch_args = [(torch.tensor([0.1, 0.5, 0.95]),)]
    identity_args = [(1.0,)]
    extreme_args = [(0.0,), (1.0,)]

    @pytest.mark.parametrize("thresholds", [[0.5, 0.5], [0.0, 1.0], [0.25, 0.9]])
    def test_reference(self, device, dtype, thresholds):
        image = rounded(make_image(), dtype)
        out = solarize(tensor(image, device, dtype), torch.tensor(thresholds, dtype=dtype))
        expected = reference_solarize(image, rounded(np.array(thresholds), dtype))
        assert_close(out, expected, 0.0 if dtype == torch.float64 else 1e-7)

    def test_strict_threshold(self, device):
        """Values equal to the threshold are kept: black stays black at 0 and white stays white at 1."""
        image = torch.tensor([0.0, 0.5, 1.0], device=device).view(1, 1, 1, 3).expand(1, 3, 2, 3).contiguous()
        assert torch.equal(solarize(image, 0.5)[0, 0, 0], torch.tensor([0.0, 0.5, 0.0], device=device))
        assert torch.equal(solarize(image, 0.0)[0, 0, 0], torch.tensor([0.0, 0.5, 0.0], device=device))
        assert torch.equal(solarize(image, 1.0), image)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`threshold`"):
            solarize(torch.rand(2, 3, 4, 4), [0.5, 0.5])
