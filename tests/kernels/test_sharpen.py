"""Basic, smart and CAS sharpening against NumPy references."""

from __future__ import annotations

import kornia
import numpy as np
import pytest
import torch

from kernels.sharpen import sharpen_basic, sharpen_cas, sharpen_smart
from testkit.reference import (
    correlate2d,
    reference_basic,
    reference_cas,
    reference_smart,
)
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor


class TestSharpenBasic(KernelTester):
    kernel = sharpen_basic
    args = (3, 1.0)
    low_precision_args = (1, 0.2)
    batch_args = [(2, torch.tensor([0.1, 1.0, 5.0]))]
    large_batch_args = [(1, torch.tensor([0.5, 2.0]))]
    identity_args = [(0, 5.0)]
    extreme_args = [(15, 5.0), (1, 5.0), (15, 0.1)]

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

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`radius`"):
            sharpen_basic(torch.rand(1, 3, 4, 4), -1, 1.0)


class TestSharpenSmart(KernelTester):
    kernel = sharpen_smart
    args = (7, 0.75, 5.0, 0.5)
    low_precision_args = (5, 0.75, 2.0, 0.5)
    batch_args = [(7, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 5.0, 25.0]), torch.tensor([0.5, 0.0, 1.0]))]
    large_batch_args = [(5, torch.tensor([0.75, 0.2]), torch.tensor([5.0, 1.0]), 0.5)]
    identity_args = [(1, 0.75, 0.0, 0.5), (7, 0.75, 0.0, 1.0)]
    extreme_args = [(25, 0.0, 25.0, 1.0), (25, 1.0, 25.0, 0.0), (1, 0.5, 25.0, 1.0), (13, 0.9, 0.0, 0.5)]

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

    def test_flat_image_unchanged(self, device):
        image = torch.full((1, 3, 9, 11), 0.4, dtype=torch.float64, device=device)
        assert_close(sharpen_smart(image, 9, 0.5, 10.0, 0.5), np.full((1, 3, 9, 11), 0.4), 1e-12)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`noise_radius`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7.0, 0.75, 5.0, 0.5)
        with pytest.raises(ValueError, match="`ratio`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7, 0.75, 5.0, torch.ones(2))


class TestSharpenCas(KernelTester):
    kernel = sharpen_cas
    args = (0.8,)
    batch_args = [(torch.tensor([0.0, 0.8, 1.0]),)]
    test_identity = None  # even amount 0 sharpens
    extreme_args = [(0.0,), (1.0,)]

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

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`amount`"):
            sharpen_cas(torch.rand(2, 3, 4, 4), torch.ones(3))
