"""Glow against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.glow import glow
from tests.kernels.conftest import (
    SHAPES,
    assert_batch_invariant,
    assert_cardinality,
    assert_close,
    assert_low_precision_works,
    assert_rejects_bad_images,
    assert_valid,
    make_image,
    tensor,
    tolerance,
)
from tests.kernels.reference import reference_glow


class TestGlow:
    @pytest.mark.parametrize("radius", [1, 2, 5, 12])
    def test_reference(self, device, dtype, radius):
        image = make_image() * 0.5  # keeps most of the sum below the clamp
        intensities = [1.0, 0.3]
        out = glow(tensor(image, device, dtype), torch.tensor(intensities, dtype=torch.float64), radius)
        assert_close(out, reference_glow(image, intensities, radius), tolerance(dtype))

    def test_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(glow(image, 0.0, 5), image)

    @pytest.mark.parametrize(("intensity", "radius"), [(5.0, 50), (5.0, 1), (0.0, 50), (1.0, 50)])
    def test_extremes(self, device, intensity, radius):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(glow(image, intensity, radius), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(glow, image, torch.tensor([0.2, 1.0, 4.0]), 5)
        large = tensor(make_image(batch=2, height=96, width=131), dtype=torch.float32)
        assert_batch_invariant(glow, large, torch.tensor([0.5, 2.0]), 3)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(glow, shape, 1.0, 5)

    def test_low_precision(self):
        assert_low_precision_works(glow, 0.3, 4)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(glow, 1.0, 5)
        with pytest.raises(ValueError, match="`radius`"):
            glow(torch.rand(1, 3, 4, 4), 1.0, 2.0)
        with pytest.raises(ValueError, match="`intensity`"):
            glow(torch.rand(1, 3, 4, 4), torch.ones(2), 2)
