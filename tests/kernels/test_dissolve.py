"""Dissolve and the second image's resize against NumPy references."""

from __future__ import annotations

import pytest
import torch

from kernels.dissolve import dissolve, resize_to
from tests.kernels.conftest import (
    SHAPES,
    assert_batch_invariant,
    assert_close,
    assert_low_precision_works,
    assert_rejects_bad_images,
    assert_valid,
    make_image,
    tensor,
    tolerance,
)
from tests.kernels.reference import reference_dissolve, reference_resize


class TestDissolve:
    @pytest.mark.parametrize("factors", [[0.5, 0.5], [0.0, 1.0], [0.2, 0.85]])
    def test_reference(self, device, dtype, factors):
        image, other = make_image(seed=0), make_image(seed=1)
        factor = torch.tensor(factors, dtype=torch.float64)
        out = dissolve(tensor(image, device, dtype), tensor(other, device, dtype), factor)
        assert_close(out, reference_dissolve(image, other, factors), tolerance(dtype))

    def test_ends(self, device, dtype):
        image, other = tensor(make_image(seed=0), device, dtype), tensor(make_image(seed=1), device, dtype)
        assert torch.equal(dissolve(image, other, 0.0), image)
        assert torch.equal(dissolve(image, other, 1.0), other)

    @pytest.mark.parametrize("factor", [0.0, 1.0])
    def test_extremes(self, device, factor):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(dissolve(image, torch.ones_like(image), factor), image)

    def test_batch_invariance(self):
        image, other = tensor(make_image(batch=3, seed=0)), tensor(make_image(batch=3, seed=1))
        assert_batch_invariant(dissolve, image.float(), other.float(), torch.tensor([0.1, 0.5, 0.9]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        image = torch.rand(shape[0], 3, *shape[1:])
        assert_valid(dissolve(image, torch.rand_like(image), 0.5), image)

    def test_low_precision(self):
        other = tensor(make_image(seed=3), dtype=torch.float32)
        assert_low_precision_works(lambda image, factor: dissolve(image, other.to(image.dtype), factor), 0.3)

    def test_invalid_arguments(self):
        image = torch.rand(2, 3, 4, 4)
        assert_rejects_bad_images(dissolve, image, 0.5)
        with pytest.raises(ValueError, match="`other`"):
            dissolve(image, torch.rand(2, 3, 4, 5), 0.5)
        with pytest.raises(ValueError, match="`other`"):
            dissolve(image, torch.rand(2, 1, 4, 4), 0.5)


class TestResizeTo:
    @pytest.mark.parametrize("size", [(13, 17), (7, 9), (26, 40), (5, 30), (1, 1)])
    def test_reference(self, device, dtype, size):
        image = make_image()
        assert_close(resize_to(tensor(image, device, dtype), size), reference_resize(image, size), 1e-5)

    def test_same_size_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert_close(resize_to(image, (13, 17)), make_image(), 1e-6)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3, height=40, width=30), dtype=torch.float32)
        assert_batch_invariant(resize_to, image, (17, 23))
        assert_batch_invariant(resize_to, image, (81, 64))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        image = torch.rand(shape[0], 3, *shape[1:])
        out = resize_to(image, (6, 11))
        assert out.shape == (shape[0], 3, 6, 11) and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1

    def test_low_precision(self):
        image = tensor(make_image(), dtype=torch.float32)
        for low in (torch.float16, torch.bfloat16):
            out = resize_to(image.to(low), (7, 9))
            assert out.dtype == low and (out.float() - resize_to(image, (7, 9))).abs().max() < 0.02

    def test_invalid_arguments(self):
        assert_rejects_bad_images(resize_to, (4, 4))
        with pytest.raises(ValueError, match="`size"):
            resize_to(torch.rand(1, 3, 4, 4), (0, 4))
        with pytest.raises(ValueError, match="`size`"):
            resize_to(torch.rand(1, 3, 4, 4), 4)
