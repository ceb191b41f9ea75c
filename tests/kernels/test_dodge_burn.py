"""Dodge and burn against a NumPy reference of Kiln's documented formulas, plus its guarantees."""

from __future__ import annotations

import itertools

import pytest
import torch

from kernels.dodge_burn import DODGE_BURN_MODES, dodge_burn
from testkit.reference import reference_dodge_burn
from tests.fixtures.kernel_tester import KernelTester
from tests.fixtures.kernels import assert_close, make_image, tensor

DODGES = ("dodge", "color_dodge", "linear_dodge")
BURNS = ("burn", "color_burn", "linear_burn")


class TestDodgeBurn(KernelTester):
    kernel = dodge_burn
    args = (0.5, "dodge_and_burn")
    low_precision_args = (0.5, "color_burn")
    batch_args = [(torch.tensor([0.2, 0.5, 1.0]), mode) for mode in DODGE_BURN_MODES]
    identity_args = [(0.0, mode) for mode in DODGE_BURN_MODES]
    extreme_args = [(intensity, mode) for mode in DODGE_BURN_MODES for intensity in (0.0, 1e-6, 1.0)]

    def test_modes_are_fal_spellings(self):
        singles = ("color_dodge", "color_burn", "linear_dodge", "linear_burn")
        assert DODGE_BURN_MODES == ("dodge", "burn", "dodge_and_burn", "burn_and_dodge", *singles)

    @pytest.mark.parametrize("mode", DODGE_BURN_MODES)
    @pytest.mark.parametrize("intensities", [[0.5, 0.5], [1.0, 0.1], [0.8, 0.3]])
    def test_reference(self, device, dtype, mode, intensities):
        image = make_image()
        out = dodge_burn(tensor(image, device, dtype), torch.tensor(intensities, dtype=torch.float64), mode)
        assert_close(out, reference_dodge_burn(image, intensities, mode), 1e-9 if dtype == torch.float64 else 1e-5)

    @pytest.mark.parametrize("intensity", [0.1, 0.5, 1.0])
    def test_dodges_never_darken_and_burns_never_brighten(self, device, dtype, intensity):
        image = tensor(make_image(), device, dtype)
        for mode in DODGES:
            assert (dodge_burn(image, intensity, mode) >= image).all(), mode
        for mode in BURNS:
            assert (dodge_burn(image, intensity, mode) <= image).all(), mode

    def test_composites_chain_the_single_modes(self, device):
        image = tensor(make_image(), device)
        dodged, burnt = dodge_burn(image, 0.6, "dodge"), dodge_burn(image, 0.6, "burn")
        assert torch.equal(dodge_burn(image, 0.6, "dodge_and_burn"), dodge_burn(dodged, 0.6, "burn"))
        assert torch.equal(dodge_burn(image, 0.6, "burn_and_dodge"), dodge_burn(burnt, 0.6, "dodge"))

    def test_modes_are_distinct(self, device):
        image = tensor(make_image(), device)
        outputs = {mode: dodge_burn(image, 0.5, mode) for mode in DODGE_BURN_MODES}
        for a, b in itertools.combinations(DODGE_BURN_MODES, 2):
            assert (outputs[a] - outputs[b]).abs().max() > 1e-2, (a, b)

    def test_out_of_range_intensity_is_clamped(self, device):
        image = tensor(make_image(), device)
        assert torch.equal(dodge_burn(image, 3.0, "dodge"), dodge_burn(image, 1.0, "dodge"))
        assert torch.equal(dodge_burn(image, -1.0, "burn"), image)

    def test_invalid_arguments(self):
        with pytest.raises(ValueError, match="`mode`"):
            dodge_burn(torch.rand(1, 3, 4, 4), 0.5, "dodge and burn")
