"""Colour correction against a NumPy/colorsys reference written from the formulas."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from kernels.color import correct_color
from testkit.reference import hls_to_rgb, reference_color, rgb_to_hls
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor

CASES = {
    "mixed": ([30, -40], [20, -10], [25, -60], [40, -50], [0.7, 1.6]),
    "temperature": ([100, -100], [0, 0], [0, 0], [0, 0], [1, 1]),
    "brightness": ([0, 0], [100, -100], [0, 0], [0, 0], [1, 1]),
    "contrast": ([0, 0], [0, 0], [100, -100], [0, 0], [1, 1]),
    "saturation": ([0, 0], [0, 0], [0, 0], [100, -100], [1, 1]),
    "gamma": ([0, 0], [0, 0], [0, 0], [0, 0], [0.2, 2.2]),
    "half_saturation": ([10, 0], [-20, 5], [10, 5], [50, -30], [1.1, 0.9]),
}


def test_reference_hls_is_colorsys():
    """The reference's vectorised HLS round trip is colorsys's, pixel by pixel."""
    image = make_image(batch=1)[0]
    hue, lightness, saturation = rgb_to_hls(image)
    boosted = hls_to_rgb(hue, lightness, np.clip(saturation * 1.7, 0, 1))
    for i, j in itertools.product(range(image.shape[1]), range(image.shape[2])):
        expected = colorsys.rgb_to_hls(*image[:, i, j])
        assert np.allclose((hue[i, j], lightness[i, j], saturation[i, j]), expected, atol=1e-12)
        assert np.allclose(boosted[:, i, j], colorsys.hls_to_rgb(*expected[:2], min(expected[2] * 1.7, 1)), atol=1e-12)


class TestCorrectColor(KernelTester):
    kernel = correct_color
    args = (10.0, 10.0, 10.0, 10.0, 1.2)
    low_precision_args = (20.0, 10.0, 30.0, 40.0, 0.8)
    batch_args = [
        tuple(torch.tensor(v) for v in ([30.0, -40.0, 5.0], [20.0, -10.0, 0.0], [25.0, -60.0, 80.0],
                                        [40.0, -50.0, 0.0], [0.7, 1.6, 1.0]))
    ]  # fmt: skip
    large_shape = (2, 150, 131)
    large_batch_args = [
        tuple(torch.tensor(v) for v in ([30.0, -40.0], [20.0, -10.0], [25.0, -60.0], [40.0, -50.0], [0.7, 1.6]))
    ]
    # The neutral settings round through HLS, so they are checked to 1e-6 in `test_neutral_is_identity`.
    test_identity = None
    extreme_args = [
        (temperature, brightness, contrast, saturation, gamma)
        for temperature, brightness, contrast, saturation in itertools.product([-100.0, 100.0], repeat=4)
        for gamma in (0.2, 2.2)
    ]

    @pytest.mark.parametrize("case", CASES)
    def test_reference(self, device, dtype, case):
        image = make_image()
        params = CASES[case]
        out = correct_color(tensor(image, device, dtype), *(torch.tensor(p, dtype=torch.float64) for p in params))
        assert_close(out, reference_color(image, *params), 1e-9 if dtype == torch.float64 else 1e-5)

    def test_float_parameters(self, device):
        image = make_image()
        out = correct_color(tensor(image, device), 15.0, -5.0, 30.0, 20.0, 1.3)
        assert_close(out, reference_color(image, [15] * 2, [-5] * 2, [30] * 2, [20] * 2, [1.3] * 2), 1e-9)

    def test_neutral_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert_close(correct_color(image, 0.0, 0.0, 0.0, 0.0, 1.0), make_image(), 1e-6)

    def test_invalid_arguments(self):
        image = torch.rand(2, 3, 4, 4)
        with pytest.raises(ValueError, match="`gamma`"):
            correct_color(image, 0.0, 0.0, 0.0, 0.0, torch.ones(3))
        with pytest.raises(ValueError, match="`saturation`"):
            correct_color(image, 0.0, 0.0, 0.0, "high", 1.0)
