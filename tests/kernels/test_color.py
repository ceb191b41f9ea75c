"""Colour correction against a NumPy/colorsys reference written from the formulas."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from kernels.color import correct_color
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
from tests.kernels.reference import hls_to_rgb, reference_color, rgb_to_hls

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


class TestCorrectColor:
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

    @pytest.mark.parametrize("values", list(itertools.product([-100.0, 100.0], repeat=3)))
    @pytest.mark.parametrize("gamma", [0.2, 2.2])
    def test_extremes(self, device, values, gamma):
        image = tensor(make_image(), device, torch.float32)
        temperature, brightness, contrast = values
        for saturation in (-100.0, 100.0):
            assert_valid(correct_color(image, temperature, brightness, contrast, saturation, gamma), image)

    def test_extremes_on_black_and_white(self, device):
        for value in (0.0, 1.0):
            image = torch.full((2, 3, 4, 5), value, device=device)
            assert_valid(correct_color(image, 100.0, 100.0, 100.0, 100.0, 0.2), image)
            assert_valid(correct_color(image, -100.0, -100.0, -100.0, -100.0, 2.2), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        params = [torch.tensor(v) for v in ([30.0, -40.0, 5.0], [20.0, -10.0, 0.0], [25.0, -60.0, 80.0])]
        params += [torch.tensor([40.0, -50.0, 0.0]), torch.tensor([0.7, 1.6, 1.0])]
        assert_batch_invariant(correct_color, image, *params)
        large = tensor(make_image(batch=2, height=150, width=131), dtype=torch.float32)
        params = [torch.tensor(v) for v in ([30.0, -40.0], [20.0, -10.0], [25.0, -60.0], [40.0, -50.0], [0.7, 1.6])]
        assert_batch_invariant(correct_color, large, *params)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(correct_color, shape, 10.0, 10.0, 10.0, 10.0, 1.2)

    def test_low_precision(self):
        assert_low_precision_works(correct_color, 20.0, 10.0, 30.0, 40.0, 0.8)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(correct_color, 0.0, 0.0, 0.0, 0.0, 1.0)
        image = torch.rand(2, 3, 4, 4)
        with pytest.raises(ValueError, match="`gamma`"):
            correct_color(image, 0.0, 0.0, 0.0, 0.0, torch.ones(3))
        with pytest.raises(ValueError, match="`saturation`"):
            correct_color(image, 0.0, 0.0, 0.0, "high", 1.0)
