"""Chromatic aberration (per-channel shifts) against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.chromatic import DIRECTIONS, shift_channels
from testkit.reference import reference_shift
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, rounded, tensor


def call(image, moves):
    return shift_channels(image, *(value for move in moves for value in move))


class TestShiftChannels(KernelTester):
    kernel = shift_channels
    args = (5, "horizontal", -5, "vertical", 20, "horizontal")
    low_precision_args = (2, "horizontal", 1, "vertical", -3, "horizontal")
    batch_args = [(4, "horizontal", -3, "vertical", 2, "vertical")]
    identity_args = [(0, "horizontal", 0, "vertical", 0, "horizontal")]
    # Every shift moves past the 13x17 image's edges.
    extreme_args = [(shift, "horizontal", -shift, "vertical", shift, "vertical") for shift in (-20, 20, 100)]

    @pytest.mark.parametrize("red", DIRECTIONS)
    @pytest.mark.parametrize("green", DIRECTIONS)
    @pytest.mark.parametrize("blue", DIRECTIONS)
    def test_reference(self, device, dtype, red, green, blue):
        image = rounded(make_image(), dtype)
        for shifts in ((3, -2, 0), (-20, 20, 7), (1, 1, -1)):
            moves = tuple(zip(shifts, (red, green, blue)))
            assert_close(call(tensor(image, device, dtype), moves), reference_shift(image, moves), 0.0)

    def test_directions(self, device):
        """A dot moved +2 horizontally goes right; +1 vertically goes up."""
        image = torch.zeros(1, 3, 6, 7, device=device)
        image[0, :, 2, 3] = 1.0
        out = shift_channels(image, 2, "horizontal", 1, "vertical", 0, "horizontal")
        assert out[0, 0, 2, 5] == 1 and out[0, 0].sum() == 1
        assert out[0, 1, 1, 3] == 1 and out[0, 1].sum() == 1
        assert out[0, 2, 2, 3] == 1 and out[0, 2].sum() == 1

    def test_edges_repeat_the_border(self, device):
        image = torch.zeros(1, 3, 4, 6, device=device)
        image[0, :, :, 0] = 1.0
        out = shift_channels(image, 3, "horizontal", 0, "horizontal", -2, "horizontal")
        assert (out[0, 0, :, :4] == 1).all() and (out[0, 0, :, 4:] == 0).all()
        assert (out[0, 2] == 0).all()

    def test_shift_beyond_a_tiny_image(self, device):
        """Shifts of 20 and 100 on a 5x3 image, larger than both sides, stay valid and repeat the border."""
        image = tensor(make_image(height=5, width=3), device, torch.float32)
        for shift in (-20, 20, 100):
            out = shift_channels(image, shift, "horizontal", -shift, "vertical", shift, "vertical")
            self.check_output(out, image)

    def test_invalid_arguments(self):
        image = torch.rand(1, 3, 4, 4)
        with pytest.raises(ValueError, match="`green_direction`"):
            shift_channels(image, 1, "horizontal", 0, "diagonal", 0, "horizontal")
        with pytest.raises(ValueError, match="`blue_shift`"):
            shift_channels(image, 1, "horizontal", 0, "vertical", 1.5, "horizontal")
