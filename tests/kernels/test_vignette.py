"""Vignette against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.vignette import apply_vignette
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
from tests.kernels.reference import reference_vignette


class TestApplyVignette:
    @pytest.mark.parametrize("strengths", [[0.5, 1.0], [0.3, 2.0], [10.0, 0.0]])
    def test_reference(self, device, dtype, strengths):
        image = make_image()
        out = apply_vignette(tensor(image, device, dtype), torch.tensor(strengths, dtype=torch.float64))
        assert_close(out, reference_vignette(image, np.array(strengths)), tolerance(dtype))

    def test_profile(self, device):
        """Centre untouched, corners scaled by 1 - strength; above 1 the black region grows inward."""
        image = torch.ones(1, 3, 5, 7, dtype=torch.float64, device=device)
        out = apply_vignette(image, 0.4)[0, 0].cpu()
        assert out[2, 3].item() == pytest.approx(1.0) and out[0, 0].item() == pytest.approx(0.6)
        strong, milder = apply_vignette(image, 4.0)[0, 0], apply_vignette(image, 1.5)[0, 0]
        assert strong[2, 3].item() == pytest.approx(1.0) and (strong == 0).sum() > (milder == 0).sum() > 0

    def test_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(apply_vignette(image, 0.0), image)

    @pytest.mark.parametrize("strength", [0.0, 1.0, 10.0])
    def test_extremes(self, device, strength):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(apply_vignette(image, strength), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(apply_vignette, image, torch.tensor([0.2, 1.0, 7.5]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(apply_vignette, shape, 0.5)

    def test_low_precision(self):
        assert_low_precision_works(apply_vignette, 0.8)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(apply_vignette, 0.5)
        with pytest.raises(ValueError, match="`strength`"):
            apply_vignette(torch.rand(2, 3, 4, 4), torch.ones(2, 1))
