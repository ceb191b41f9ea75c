"""Dissolve against the reference's random-mask dissolve and its expectation, and the second image's resize.

Regression: the kernel once computed ``(1 - f) image + f other``, the reverse of the reference, where the main
image is kept with probability ``f``; its oracle encoded the same reversal, so nothing caught it. The oracles
are now written from the reference's definition and the kernel is also checked against a Monte-Carlo average
of the reference's own random dissolve.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.dissolve import dissolve, resize_to
from testkit.reference import (
    reference_dissolve,
    reference_dissolve_average,
    reference_dissolve_draw,
    reference_resize,
)
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor, tolerance

OTHER = tensor(make_image(batch=3, seed=1), dtype=torch.float32)
DRAWS = 4096
# Five standard errors of the Monte-Carlo mean: |x - y| sqrt(f (1 - f) / n) <= 0.5 / sqrt(n) per element.
MONTE_CARLO_ATOL = 5 * 0.5 / np.sqrt(DRAWS)


class TestDissolve(KernelTester):
    kernel = dissolve
    args = (0.5,)
    low_precision_args = (0.3,)
    batch_args = [(torch.tensor([0.1, 0.5, 0.9]), OTHER)]
    identity_args = [(1.0,)]
    extreme_args = [(0.0,), (1.0,)]

    def apply(self, image, factor, other=None):
        """The second image defaults to the inverted first, so it always has the right shape."""
        return dissolve(image, 1 - image if other is None else other, factor)

    @pytest.mark.parametrize("factors", [[0.5, 0.5], [0.0, 1.0], [0.2, 0.85]])
    def test_reference(self, device, dtype, factors):
        image, other = make_image(seed=0), make_image(seed=1)
        factor = torch.tensor(factors, dtype=torch.float64)
        out = dissolve(tensor(image, device, dtype), tensor(other, device, dtype), factor)
        assert_close(out, reference_dissolve(image, other, factors), tolerance(dtype))

    @pytest.mark.parametrize("factors", [[0.2, 0.85], [0.05, 0.6]])
    def test_expectation_of_the_reference_random_mask(self, factors):
        """The kernel is the mean of the reference's per-element random dissolve, to Monte-Carlo precision."""
        image, other = make_image(seed=0), make_image(seed=1)
        average = reference_dissolve_average(image, other, factors, DRAWS)
        assert np.abs(reference_dissolve(image, other, factors) - average).max() <= MONTE_CARLO_ATOL
        out = dissolve(tensor(image), tensor(other), torch.tensor(factors, dtype=torch.float64))
        assert_close(out, average, MONTE_CARLO_ATOL)

    def test_reference_draw_keeps_the_main_image_with_probability_factor(self):
        """The random oracle itself: at f = 0.2 about a fifth of the values come from the main image."""
        image, other = np.zeros((1, 3, 64, 64)), np.ones((1, 3, 64, 64))
        draw = reference_dissolve_draw(image, other, [0.2], np.random.default_rng(0))
        assert set(np.unique(draw)) == {0.0, 1.0} and abs((draw == 0).mean() - 0.2) < 0.02

    def test_factor_is_the_weight_of_the_main_image(self, device, dtype):
        """Black dissolved into white at f = 0.2 is 0.8 (the reversed blend gave 0.2)."""
        black = torch.zeros(1, 3, 4, 5, device=device, dtype=dtype)
        out = dissolve(black, torch.ones_like(black), 0.2)
        assert torch.allclose(out, torch.full_like(out, 0.8), atol=1e-7)
        image, other = make_image(seed=0), make_image(seed=1)
        out = dissolve(tensor(image, device, dtype), tensor(other, device, dtype), 0.2)
        assert_close(out, 0.2 * image + 0.8 * other, tolerance(dtype))
        swapped = 0.8 * image + 0.2 * other
        assert np.abs(out.cpu().double().numpy() - swapped).max() > 0.3

    def test_ends(self, device, dtype):
        image, other = tensor(make_image(seed=0), device, dtype), tensor(make_image(seed=1), device, dtype)
        assert torch.equal(dissolve(image, other, 1.0), image)
        assert torch.equal(dissolve(image, other, 0.0), other)

    def test_invalid_arguments(self):
        image = torch.rand(2, 3, 4, 4)
        with pytest.raises(ValueError, match="`other`"):
            dissolve(image, torch.rand(2, 3, 4, 5), 0.5)
        with pytest.raises(ValueError, match="`other`"):
            dissolve(image, torch.rand(2, 1, 4, 4), 0.5)


class TestResizeTo(KernelTester):
    kernel = resize_to
    args = ((6, 11),)
    low_precision_args = ((7, 9),)
    batch_shape = (3, 40, 30)
    batch_args = [((17, 23),), ((81, 64),)]
    test_identity = None  # resampling to the same size is the identity only to rounding: see below
    extreme_args = [((1, 1),), ((200, 3),), ((2, 300),)]

    def check_output(self, out, image, size):
        assert out.shape == (image.shape[0], 3, *size) and out.dtype == image.dtype and out.device == image.device
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1

    @pytest.mark.parametrize("size", [(13, 17), (7, 9), (26, 40), (5, 30), (1, 1)])
    def test_reference(self, device, dtype, size):
        image = make_image()
        assert_close(resize_to(tensor(image, device, dtype), size), reference_resize(image, size), 1e-5)

    def test_same_size_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert_close(resize_to(image, (13, 17)), make_image(), 1e-6)

    def test_low_precision_largest_error(self):
        image = tensor(make_image(), dtype=torch.float32)
        for low in (torch.float16, torch.bfloat16):
            out = resize_to(image.to(low), (7, 9))
            assert (out.float() - resize_to(image, (7, 9))).abs().max() < 0.02

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`size"):
            resize_to(torch.rand(1, 3, 4, 4), (0, 4))
        with pytest.raises(ValueError, match="`size`"):
            resize_to(torch.rand(1, 3, 4, 4), 4)
