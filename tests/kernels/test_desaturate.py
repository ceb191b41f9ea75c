"""Desaturate against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.desaturate import DESATURATE_METHODS, desaturate
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
from tests.kernels.reference import reference_desaturate


class TestDesaturate:
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

    def test_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        for method in DESATURATE_METHODS:
            assert torch.equal(desaturate(image, 0.0, method), image)

    @pytest.mark.parametrize("method", DESATURATE_METHODS)
    def test_extremes(self, device, method):
        image = tensor(make_image(), device, torch.float32)
        for factor in (0.0, 1.0):
            assert_valid(desaturate(image, factor, method), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        for method in DESATURATE_METHODS:
            assert_batch_invariant(desaturate, image, torch.tensor([0.0, 0.4, 1.0]), method)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(desaturate, shape, 0.5, "average")

    def test_low_precision(self):
        assert_low_precision_works(desaturate, 0.8, "luminance (Rec.601)")

    def test_invalid_arguments(self):
        assert_rejects_bad_images(desaturate, 1.0, "average")
        with pytest.raises(ValueError, match="`method`"):
            desaturate(torch.rand(1, 3, 4, 4), 1.0, "luminance")
