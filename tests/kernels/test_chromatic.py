"""Chromatic aberration (per-channel shifts) against a NumPy reference."""

from __future__ import annotations

import pytest
import torch

from kernels.chromatic import DIRECTIONS, shift_channels
from tests.kernels.conftest import (
    SHAPES,
    assert_batch_invariant,
    assert_cardinality,
    assert_close,
    assert_low_precision_works,
    assert_rejects_bad_images,
    assert_valid,
    make_image,
    rounded,
    tensor,
)
from tests.kernels.reference import reference_shift


def call(image, moves):
    return shift_channels(image, *(value for move in moves for value in move))


class TestShiftChannels:
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

    def test_zero_shift_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(shift_channels(image, 0, "horizontal", 0, "vertical", 0, "horizontal"), image)

    @pytest.mark.parametrize("shift", [-20, 20, 100])
    def test_extremes(self, device, shift):
        image = tensor(make_image(height=5, width=3), device, torch.float32)
        assert_valid(shift_channels(image, shift, "horizontal", -shift, "vertical", shift, "vertical"), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(shift_channels, image, 4, "horizontal", -3, "vertical", 2, "vertical")

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        assert_cardinality(shift_channels, shape, 5, "horizontal", -5, "vertical", 20, "horizontal")

    def test_low_precision(self):
        assert_low_precision_works(shift_channels, 2, "horizontal", 1, "vertical", -3, "horizontal")

    def test_invalid_arguments(self):
        assert_rejects_bad_images(shift_channels, 1, "horizontal", 0, "horizontal", 0, "horizontal")
        image = torch.rand(1, 3, 4, 4)
        with pytest.raises(ValueError, match="`green_direction`"):
            shift_channels(image, 1, "horizontal", 0, "diagonal", 0, "horizontal")
        with pytest.raises(ValueError, match="`blue_shift`"):
            shift_channels(image, 1, "horizontal", 0, "vertical", 1.5, "horizontal")
