"""Basic, smart and CAS sharpening against NumPy references."""

from __future__ import annotations

import kornia
import numpy as np
import pytest
import torch

from kernels.sharpen import sharpen_basic, sharpen_cas, sharpen_smart
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
)
from tests.kernels.reference import correlate2d, reference_basic, reference_cas, reference_smart


class TestSharpenBasic:
    @pytest.mark.parametrize("radius", [1, 2, 5, 15])
    def test_reference(self, device, dtype, radius):
        image = make_image()
        alphas = [1.0, 0.1]
        out = sharpen_basic(tensor(image, device, dtype), radius, torch.tensor(alphas, dtype=torch.float64))
        assert_close(out, reference_basic(image, radius, alphas), 1e-9 if dtype == torch.float64 else 2e-5)

    def test_alpha_one_matches_reference_kernel(self, device):
        """At alpha 1 Kiln's formula is the reference's kernel (-1 everywhere, k^2 at the centre)."""
        image = make_image()
        padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        kernel = np.full((3, 3), -1.0)
        kernel[1, 1] = 9
        expected = np.clip(correlate2d(padded, kernel, 13, 17), 0, 1)
        assert_close(sharpen_basic(tensor(image, device), 1, 1.0), expected, 1e-9)

    def test_radius_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(sharpen_basic(image, 0, 5.0), image)

    @pytest.mark.parametrize(("radius", "alpha"), [(15, 5.0), (1, 5.0), (15, 0.1)])
    def test_extremes(self, device, radius, alpha):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(sharpen_basic(image, radius, alpha), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(sharpen_basic, image, 2, torch.tensor([0.1, 1.0, 5.0]))
        large = tensor(make_image(batch=2, height=96, width=131), dtype=torch.float32)
        assert_batch_invariant(sharpen_basic, large, 1, torch.tensor([0.5, 2.0]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(sharpen_basic, shape, 3, 1.0)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_basic, 1, 0.2)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_basic, 1, 1.0)
        with pytest.raises(ValueError, match="`radius`"):
            sharpen_basic(torch.rand(1, 3, 4, 4), -1, 1.0)


class TestSharpenSmart:
    @pytest.mark.parametrize("noise_radius", [1, 2, 7, 8, 25])
    @pytest.mark.parametrize("preserve_edges", [[0.75, 0.0], [1.0, 0.3]])
    def test_reference(self, device, dtype, noise_radius, preserve_edges):
        image = make_image()
        strengths, ratios = [5.0, 0.0], [0.5, 0.8]
        params = [torch.tensor(p, dtype=torch.float64) for p in (preserve_edges, strengths, ratios)]
        out = sharpen_smart(tensor(image, device, dtype), noise_radius, *params)
        expected = reference_smart(image, noise_radius, preserve_edges, strengths, ratios)
        assert_close(out, expected, 1e-9 if dtype == torch.float64 else 2e-5)

    def test_sharpen_matches_kornia(self, device, dtype):
        """With ratio 1 the result is kornia.enhance.sharpness, which the reference calls."""
        image = tensor(make_image(), device, dtype)
        factors = torch.tensor([5.0, 0.4], dtype=dtype, device=device)
        expected = kornia.enhance.sharpness(image, factors)
        assert (sharpen_smart(image, 1, 0.5, factors, 1.0) - expected).abs().max() <= 1e-6

    def test_noop_settings_are_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(sharpen_smart(image, 1, 0.75, 0.0, 0.5), image)
        assert torch.equal(sharpen_smart(image, 7, 0.75, 0.0, 1.0), image)

    def test_flat_image_unchanged(self, device):
        image = torch.full((1, 3, 9, 11), 0.4, dtype=torch.float64, device=device)
        assert_close(sharpen_smart(image, 9, 0.5, 10.0, 0.5), np.full((1, 3, 9, 11), 0.4), 1e-12)

    @pytest.mark.parametrize(("noise_radius", "preserve_edges", "strength", "ratio"), [
        (25, 0.0, 25.0, 1.0), (25, 1.0, 25.0, 0.0), (1, 0.5, 25.0, 1.0), (13, 0.9, 0.0, 0.5),
    ])  # fmt: skip
    def test_extremes(self, device, noise_radius, preserve_edges, strength, ratio):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(sharpen_smart(image, noise_radius, preserve_edges, strength, ratio), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        params = [torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 5.0, 25.0]), torch.tensor([0.5, 0.0, 1.0])]
        assert_batch_invariant(sharpen_smart, image, 7, *params)
        large = tensor(make_image(batch=2, height=96, width=131), dtype=torch.float32)
        assert_batch_invariant(sharpen_smart, large, 5, torch.tensor([0.75, 0.2]), torch.tensor([5.0, 1.0]), 0.5)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(sharpen_smart, shape, 7, 0.75, 5.0, 0.5)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_smart, 5, 0.75, 2.0, 0.5)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_smart, 7, 0.75, 5.0, 0.5)
        with pytest.raises(ValueError, match="`noise_radius`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7.0, 0.75, 5.0, 0.5)
        with pytest.raises(ValueError, match="`ratio`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7, 0.75, 5.0, torch.ones(2))


class TestSharpenCas:
    @pytest.mark.parametrize("amounts", [[0.8, 0.8], [0.0, 1.0], [0.3, 0.55]])
    def test_reference(self, device, dtype, amounts):
        image = make_image()
        out = sharpen_cas(tensor(image, device, dtype), torch.tensor(amounts, dtype=torch.float64))
        assert_close(out, reference_cas(image, amounts), 1e-9 if dtype == torch.float64 else 1e-5)

    def test_border_unchanged(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        out = sharpen_cas(image, 1.0)
        for edge in (out[..., 0, :] - image[..., 0, :], out[..., -1, :] - image[..., -1, :]):
            assert (edge == 0).all()
        assert torch.equal(out[..., 0], image[..., 0]) and torch.equal(out[..., -1], image[..., -1])

    @pytest.mark.parametrize("amount", [0.0, 1.0])
    def test_extremes(self, device, amount):
        for fill in (None, 0.0, 1.0):
            image = tensor(make_image(), device, torch.float32)
            if fill is not None:
                image = torch.full_like(image, fill)
            assert_valid(sharpen_cas(image, amount), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(sharpen_cas, image, torch.tensor([0.0, 0.8, 1.0]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(sharpen_cas, shape, 0.8)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_cas, 0.8)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_cas, 0.8)
        with pytest.raises(ValueError, match="`amount`"):
            sharpen_cas(torch.rand(2, 3, 4, 4), torch.ones(3))
