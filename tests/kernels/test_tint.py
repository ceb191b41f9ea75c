"""Colour tint against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.tint import TINT_MODES, tint
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
from tests.kernels.reference import FACTORS, reference_tint


class TestTint:
    def test_modes_are_fal_spellings(self):
        assert TINT_MODES == tuple(FACTORS)

    @pytest.mark.parametrize("mode", TINT_MODES)
    def test_reference(self, device, dtype, mode):
        image = make_image()
        strengths = [1.0, 0.35]
        out = tint(tensor(image, device, dtype), torch.tensor(strengths, dtype=torch.float64), mode)
        assert_close(out, reference_tint(image, strengths, mode), tolerance(dtype))

    def test_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        for mode in TINT_MODES:
            assert torch.equal(tint(image, 0.0, mode), image)

    @pytest.mark.parametrize("strength", [0.1, 1.0])
    def test_extremes(self, device, strength):
        image = tensor(make_image(), device, torch.float32)
        for mode in TINT_MODES:
            assert_valid(tint(image, strength, mode), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(tint, image, torch.tensor([0.1, 0.6, 1.0]), "teal")

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(tint, shape, 0.7, "vintage")

    def test_low_precision(self):
        assert_low_precision_works(tint, 0.8, "cool")

    def test_invalid_arguments(self):
        assert_rejects_bad_images(tint, 1.0, "sepia")
        with pytest.raises(ValueError, match="`mode`"):
            tint(torch.rand(1, 3, 4, 4), 1.0, "Sepia")
