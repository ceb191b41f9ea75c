"""What a JPEG encoder stores, as `kernels.jpeg_codec` models it, checked against libjpeg itself (through Pillow): the
coefficients of the image it decodes lie on the steps the model rounds the original to."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.jpeg_chroma import srgb_to_ycbcr
from kernels.jpeg_codec import (
    block_steps,
    dct_matrix,
    image_coefficients,
    mcu_coefficients,
    mcu_size,
)
from server.media import decode_image
from tests.fixtures import pixel_art


def mcus(rgb: np.ndarray, factors: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8, H and W whole MCUs -> (T, 3, mh, mw) YCbCr MCUs, row-major."""
    unit = mcu_size(factors)
    ycc = srgb_to_ycbcr(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double())[0]
    rows, columns = ycc.shape[1] // unit[0], ycc.shape[2] // unit[1]
    return ycc.reshape(3, rows, unit[0], columns, unit[1]).permute(1, 3, 0, 2, 4).reshape(-1, 3, *unit)


def whole_mcus(name: str, scale: int) -> np.ndarray:
    art = pixel_art.load(name).repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(art[: art.shape[0] // 16 * 16, : art.shape[1] // 16 * 16])


def test_the_dct_is_jpegs_orthonormal_transform():
    """T.81 A.3.3: F(u, v) = C(u) C(v) / 4 sum f(x, y) cos((2x + 1) u pi / 16) cos((2y + 1) v pi / 16), with C(0) =
    1 / sqrt(2) and 1 otherwise, written out sum by sum."""
    block = torch.from_numpy(np.random.default_rng(3).uniform(-128, 127, (8, 8)))
    x = np.arange(8)
    expected = np.empty((8, 8))
    for u in range(8):
        for v in range(8):
            basis = np.outer(np.cos((2 * x + 1) * u * np.pi / 16), np.cos((2 * x + 1) * v * np.pi / 16))
            expected[u, v] = (1 / np.sqrt(2) if u == 0 else 1) * (1 / np.sqrt(2) if v == 0 else 1) / 4 * (
                block.numpy() * basis
            ).sum()
    basis = dct_matrix(dtype=torch.float64)
    np.testing.assert_allclose((basis @ block @ basis.T).numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("name", ["angband-bolt-texture", "angband-flat"])
@pytest.mark.parametrize("quality, subsampling", [(50, 2), (75, 2), (75, 0)])
def test_the_rounded_coefficients_are_what_libjpeg_stored(name, quality, subsampling):
    """libjpeg's decoded image is the inverse DCT of what it stored, give or take its integer transforms and
    rounding: the model's rounding of the original lands on the same steps for most non-zero coefficients, and
    on the decoded coefficients within a level on average. The tables transposed, or the luma and chroma tables
    swapped, agree on clearly fewer (0.71-0.85)."""
    factors = (2, 2) if subsampling == 2 else (1, 1)
    image = whole_mcus(name, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    raw = decode_image(buffer.getvalue(), max_pixels=1 << 24)
    assert raw.chroma_subsampling == factors
    original = mcu_coefficients(mcus(image, factors), factors)
    decoded = mcu_coefficients(mcus(raw.pixels.permute(1, 2, 0).numpy(), factors), factors)

    def agreement(tables: torch.Tensor) -> float:
        steps = block_steps(tables, factors).double()
        stored = torch.round(original / steps) * steps
        return float((torch.round(decoded / steps) * steps == stored)[stored != 0].double().mean())

    agree = agreement(raw.jpeg_quantization)
    assert agree >= 0.89
    steps = block_steps(raw.jpeg_quantization, factors).double()
    assert (torch.round(original / steps) * steps - decoded).abs().mean() <= 1.0
    for wrong in (raw.jpeg_quantization.transpose(1, 2), raw.jpeg_quantization[[1, 0, 0]]):
        assert agreement(wrong) <= agree - 0.04


def test_the_blocks_come_luma_first_then_cb_then_cr():
    """A 4:2:0 MCU of flat colour: four luma blocks, each the level-shifted luma times 8 in its DC coefficient
    (the orthonormal DC of a flat 8 x 8 block), then Cb and Cr, averaged over 2 x 2 pixels."""
    ycc = torch.tensor([100.0, 90.0, 180.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    ycc[0, 1, :, 8:] = 110.0  # Cb differs on the right half: its one block averages over all of it
    coefficients = mcu_coefficients(ycc, (2, 2))
    assert coefficients.shape == (1, 6, 8, 8)
    assert coefficients[0, :4, 0, 0].tolist() == pytest.approx([(100 - 128) * 8] * 4)
    assert coefficients[0, 5, 0, 0].item() == pytest.approx((180 - 128) * 8)
    assert coefficients[0, 4, 0, 0].item() == pytest.approx((100 - 128) * 8)  # the mean of 90 and 110
    assert coefficients[0, 4, 0, 1].item() != 0  # and the step between them is a horizontal frequency
    tables = torch.arange(3 * 64).view(3, 8, 8)
    steps = block_steps(tables, (2, 2))
    assert torch.equal(steps[:4], tables[0].float().expand(4, 8, 8)) and torch.equal(steps[4:], tables[1:].float())
    assert block_steps(tables, (1, 1)).shape == (3, 8, 8) and mcu_size((1, 2)) == (8, 16)


@pytest.mark.parametrize("factors", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_a_whole_images_coefficients_are_those_of_its_mcus(factors):
    """`image_coefficients` cuts the blocks from whole planes: the same values, to the bit, as the MCUs cut from
    them, row-major, through `mcu_coefficients` (checked against libjpeg above)."""
    unit = mcu_size(factors)
    planes = torch.from_numpy(np.random.default_rng(5).uniform(0, 255, (3, 3 * unit[0], 5 * unit[1]))).float()
    tiles = planes.reshape(3, 3, unit[0], 5, unit[1]).permute(1, 3, 0, 2, 4).reshape(15, 3, *unit)
    for offset in (128.0, 0.0):
        assert torch.equal(image_coefficients(planes, factors, offset), mcu_coefficients(tiles, factors, offset))


def test_bad_shapes_and_factors_are_refused():
    with pytest.raises(ValueError, match="factors"):
        mcu_size((3, 1))
    with pytest.raises(ValueError, match="mcus"):
        mcu_coefficients(torch.zeros(1, 3, 8, 8), (2, 2))
    with pytest.raises(ValueError, match="planes"):
        image_coefficients(torch.zeros(3, 16, 24), (2, 2))
    with pytest.raises(ValueError, match="quantization"):
        block_steps(torch.zeros(2, 8, 8), (1, 1))
