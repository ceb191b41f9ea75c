"""Vignette against a NumPy reference written from the reference's definition.

Regression: strengths above 1 used to blacken everything beyond a radius of 1/strength (at 3, all but the
inner third); the reference clamps the strength to [0, 1], so every strength from 1 to fal's 10 is the same
vignette, black only at the corner pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.vignette import apply_vignette
from testkit.reference import reference_vignette
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance


class TestApplyVignette(KernelTester):
    kernel = apply_vignette
    args = (0.5,)
    low_precision_args = (0.8,)
    batch_args = [(torch.tensor([0.2, 1.0, 7.5]),)]
    identity_args = [(0.0,)]
    extreme_args = [(0.0,), (1.0,), (10.0,)]

    @pytest.mark.parametrize("strengths", [[0.5, 1.0], [0.3, 2.0], [10.0, 0.0], [3.0, 0.8]])
    def test_reference(self, device, dtype, strengths):
        image = make_image()
        out = apply_vignette(tensor(image, device, dtype), torch.tensor(strengths, dtype=torch.float64))
        assert_close(out, reference_vignette(image, np.array(strengths)), tolerance(dtype))

    def test_profile(self, device):
        """Centre untouched, corners scaled by 1 - strength, linear in the normalised radius in between."""
        image = torch.ones(1, 3, 5, 7, dtype=torch.float64, device=device)
        out = apply_vignette(image, 0.4)[0, 0].cpu()
        assert out[2, 3].item() == pytest.approx(1.0) and out[0, 0].item() == pytest.approx(0.6)
        # (row 2, column 0): u = -1, v = 0, so the radius is 1 / sqrt(2).
        assert out[2, 0].item() == pytest.approx(1 - 0.4 / np.sqrt(2))

    @pytest.mark.parametrize("strength", [1.5, 3.0, 10.0])
    def test_strength_above_one_is_capped(self, device, dtype, strength):
        """Above 1 the result is that of strength 1: black only at the four corner pixels, not beyond 1/strength."""
        image = torch.ones(1, 3, 9, 13, dtype=dtype, device=device)
        out = apply_vignette(image, strength)
        assert torch.equal(out, apply_vignette(image, 1.0))
        black = (out[0, 0] == 0).nonzero().tolist()
        assert sorted(black) == [[0, 0], [0, 12], [8, 0], [8, 12]]
        # Halfway to the corner the falloff is 1 - 0.5 (the uncapped kernel gave max(1 - 0.5 s, 0): 0 from s = 2).
        assert out[0, 0, 2, 3].item() == pytest.approx(0.5, abs=1e-6)

    def test_negative_strength_is_identity(self, device):
        """The reference clamps the strength below at 0 as well."""
        image = tensor(make_image(), device)
        assert torch.equal(apply_vignette(image, -2.0), image)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`strength`"):
            apply_vignette(torch.rand(2, 3, 4, 4), torch.ones(2, 1))
