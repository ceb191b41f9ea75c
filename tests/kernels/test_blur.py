"""Gaussian and Kuwahara blur against NumPy references written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.blur import gaussian_blur, kuwahara_blur
from testkit.reference import (
    reference_gaussian,
    reference_kuwahara,
    reference_kuwahara_blur,
)
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance


class TestGaussianBlur(KernelTester):
    kernel = gaussian_blur
    args = (7, 1.0)
    low_precision_args = (2, 1.0)
    batch_args = [(4, torch.tensor([0.3, 1.0, 4.0]))]
    large_batch_args = [(3, torch.tensor([0.7, 2.0]))]
    identity_args = [(0, 1.0)]
    extreme_args = [(31, 10.0), (31, 0.1), (1, 0.1), (15, 0.0)]

    @pytest.mark.parametrize("radius", [1, 3, 6, 20])
    def test_reference(self, device, dtype, radius):
        image = make_image()
        sigmas = np.array([0.5, 2.0])
        out = gaussian_blur(tensor(image, device, dtype), radius, torch.tensor(sigmas))
        assert_close(out, reference_gaussian(image, radius, sigmas), tolerance(dtype))

    def test_float_sigma(self, device):
        image = make_image()
        out = gaussian_blur(tensor(image, device), 3, 1.0)
        assert_close(out, reference_gaussian(image, 3, np.array([1.0, 1.0])), 1e-12)

    def test_flat_image_stays_flat(self, device):
        image = torch.full((1, 3, 9, 11), 0.7, dtype=torch.float64, device=device)
        assert_close(gaussian_blur(image, 5, 2.0), np.full((1, 3, 9, 11), 0.7), 1e-12)

    def test_invalid_arguments(self):
        image = torch.rand(2, 3, 5, 5)
        with pytest.raises(ValueError, match="`radius`"):
            gaussian_blur(image, -1, 1.0)
        with pytest.raises(ValueError, match="`radius`"):
            gaussian_blur(image, 1.5, 1.0)
        with pytest.raises(ValueError, match="`sigma`"):
            gaussian_blur(image, 1, torch.ones(3))


class TestKuwaharaBlur(KernelTester):
    kernel = kuwahara_blur
    args = (4,)
    low_precision_args = (2,)
    batch_args = [(3,)]
    large_batch_args = [(2,)]
    identity_args = [(0,)]
    extreme_args = [(1,), (31,)]

    @pytest.mark.parametrize("radius", [1, 2, 4, 15])
    def test_reference(self, device, dtype, radius):
        image = make_image()
        out = kuwahara_blur(tensor(image, device, dtype), radius).cpu().double().numpy()
        means, variances = reference_kuwahara(image, radius)
        # Exact ties keep the lowest index in both; only near-ties closer than rounding may pick another quadrant.
        slack = 1e-12 if dtype == torch.float64 else 1e-5
        eligible = variances <= variances.min(0, keepdims=True) + slack
        close = np.abs(means - out[None]).max(2, keepdims=True) <= tolerance(dtype)
        assert (close & eligible).any(0).all()
        expected = reference_kuwahara_blur(image, radius)
        assert np.mean(np.abs(out - expected) <= tolerance(dtype)) > 0.97

    def test_flat_image_stays_flat(self, device):
        image = torch.full((1, 3, 9, 11), 0.3, dtype=torch.float64, device=device)
        assert_close(kuwahara_blur(image, 3), np.full((1, 3, 9, 11), 0.3), 1e-12)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`radius`"):
            kuwahara_blur(torch.rand(1, 3, 5, 5), -2)
