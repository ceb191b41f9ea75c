"""JPEG chroma subsampling as a linear model, checked against libjpeg itself (through Pillow), and the per-region
chroma solved through it, checked against a dense least-squares solution and on real 4:2:0 JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.jpeg_chroma import (
    block_averages,
    jpeg_chroma_roundtrip,
    region_bleed,
    region_chroma,
    shift_chroma,
    srgb_to_ycbcr,
    ycbcr_to_srgb,
)

# Pillow's `subsampling` option -> (vertical, horizontal) factors
PILLOW_SUBSAMPLING = {0: (1, 1), 1: (1, 2), 2: (2, 2)}


def jpeg_roundtrip(rgb: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def chroma_of(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return srgb_to_ycbcr(torch.tensor(rgb).permute(2, 0, 1)[None].to(device, torch.float64))[:, 1:]


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 3, width // 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.mark.parametrize("subsampling", [2, 1, 0])
def test_the_model_is_what_libjpeg_decodes(subsampling, device):
    """Odd sizes, so the edge blocks are filled; at quality 100 only rounding is left between the two."""
    image = smooth_image(53, 67, seed=subsampling)
    decoded = chroma_of(jpeg_roundtrip(image, 100, subsampling), device)
    original = chroma_of(image, device)
    modelled = jpeg_chroma_roundtrip(original, PILLOW_SUBSAMPLING[subsampling])
    assert modelled.shape == original.shape and modelled.device.type == device.type
    error = float((modelled - decoded).abs().mean())
    assert error < 0.5, error
    if subsampling:
        assert error < 0.15 * float((original - decoded).abs().mean())


def dense_operator(rows: torch.Tensor, columns: torch.Tensor, regions: tuple[int, int], factors) -> torch.Tensor:
    """The matrix from region chroma to decoded pixels, one painted region at a time through the public model."""
    columns_out = []
    for index in range(regions[0] * regions[1]):
        painted = torch.zeros(regions[0] * regions[1], dtype=torch.float64)
        painted[index] = 1
        image = painted.reshape(regions)[rows][:, columns]
        columns_out.append(jpeg_chroma_roundtrip(image[None, None], factors).flatten())
    return torch.stack(columns_out, 1)


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (2, 1), (1, 1)])
def test_region_chroma_is_the_least_squares_solution(factors):
    generator = torch.Generator().manual_seed(sum(factors))
    rows = torch.sort(torch.randint(0, 4, (13,), generator=generator)).values
    columns = torch.sort(torch.randint(0, 3, (11,), generator=generator)).values
    rows[0], rows[-1], columns[0], columns[-1] = 0, 3, 0, 2  # every region has pixels
    chroma = 128 + 40 * torch.randn(2, 2, 13, 11, dtype=torch.float64, generator=generator)
    matrix = dense_operator(rows, columns, (4, 3), factors)
    expected = torch.linalg.lstsq(matrix, chroma.reshape(4, -1).T).solution.T.reshape(2, 2, 4, 3)
    solved = region_chroma(chroma, rows, columns, (4, 3), factors)
    torch.testing.assert_close(solved, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (2, 1), (1, 1)])
def test_region_bleed_is_the_decoded_paint_less_the_paint(factors, device):
    generator = torch.Generator().manual_seed(7)
    rows = torch.sort(torch.randint(0, 5, (15,), generator=generator)).values.to(device)
    columns = torch.sort(torch.randint(0, 4, (9,), generator=generator)).values.to(device)
    regions_chroma = (128 + 50 * torch.randn(2, 2, 5, 4, generator=generator)).to(device)
    painted = regions_chroma[..., rows, :][..., columns]
    expected = jpeg_chroma_roundtrip(painted, factors) - painted
    torch.testing.assert_close(region_bleed(regions_chroma, rows, columns, factors), expected, atol=1e-4, rtol=0)


def test_region_chroma_undoes_the_bleed_of_real_4_2_0_jpegs(device):
    """Cells of 4-5 px, grid off the chroma blocks: the solved chroma lies far closer to the cells' true chroma than
    their medians (what `kernels.pixel_downscale` would measure), whose border pixels take the neighbours' colour."""
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    for scale, start in ((4, (1, 3)), (5, (2, 0))):
        art = palette[rng.integers(0, len(palette), (20, 24))]
        big = art.repeat(scale, 0).repeat(scale, 1)[start[0] :, start[1] :]
        decoded = chroma_of(jpeg_roundtrip(np.ascontiguousarray(big), 90, 2), device)
        truth = chroma_of(art, device)
        rows, columns = ((torch.arange(length, device=device) + first) // scale for length, first in zip(big.shape, start))
        solved = region_chroma(decoded, rows, columns, art.shape[:2], (2, 2))
        medians = decoded.new_zeros(truth.shape)
        for y in range(art.shape[0]):
            for x in range(art.shape[1]):
                top, left = max(0, y * scale - start[0]), max(0, x * scale - start[1])
                block = decoded[..., top : (y + 1) * scale - start[0], left : (x + 1) * scale - start[1]]
                medians[..., y, x] = block.flatten(-2).median(-1).values
        solved_error = float((solved - truth).abs().mean())
        median_error = float((medians - truth).abs().mean())
        assert solved_error < 0.4 * median_error, (scale, solved_error, median_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regions_finer_than_the_chroma_samples_or_without_pixels_solve(dtype, device):
    """2 px cells off the 2 x 2 blocks leave patterns the model cannot see, and a region may hold no pixel:
    the normal equations are singular then, and the solve must still answer, finite."""
    def regions(length: int, start: float) -> torch.Tensor:  # cells of 1.96 px from `start`, the cut ones at the ends
        return (torch.floor((torch.arange(length, device=device) + 0.5 - start) / 1.96).long() + 1).clamp(0, 97)

    rows, columns = regions(187, 0.7), regions(187, 1.3)
    chroma = 128 + 30 * torch.randn(1, 2, 187, 187, dtype=dtype, device=device)
    solved = region_chroma(chroma, rows, columns, (99, 99), (2, 2))
    assert solved.dtype == torch.float64 and bool(torch.isfinite(solved).all())
    assert float(solved[..., 98, :].abs().max()) == 0 and float(solved[..., :, 98].abs().max()) == 0  # no pixels


def test_shift_chroma_moves_cb_and_cr_alone(device):
    rgb = torch.randint(0, 256, (2, 3, 5, 7), device=device).double()
    shift = 20 * torch.randn(2, 2, 5, 7, dtype=torch.float64, device=device)
    expected = srgb_to_ycbcr(rgb) + torch.cat([torch.zeros_like(shift[:, :1]), shift], 1)
    torch.testing.assert_close(srgb_to_ycbcr(shift_chroma(rgb, shift)), expected)


def test_ycbcr_round_trip(device):
    rgb = torch.randint(0, 256, (2, 3, 5, 7), device=device).double()
    torch.testing.assert_close(ycbcr_to_srgb(srgb_to_ycbcr(rgb)), rgb)
    assert srgb_to_ycbcr(torch.tensor([[[[255.0]], [[255.0]], [[255.0]]]]))[0, :, 0, 0].tolist() == pytest.approx([255, 128, 128])


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (2, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_averages_are_avg_pool2d_to_the_bit(factors, dtype):
    # the JPEG models round what they compute to the file's steps: a last bit moved can move a coefficient a step
    planes = torch.rand(6, 2, 17, 15, generator=torch.Generator().manual_seed(3), dtype=dtype) * 300 - 20
    averages = block_averages(planes, factors)
    assert averages.shape == (6, 2, 17 // factors[0], 15 // factors[1])
    assert torch.equal(averages, torch.nn.functional.avg_pool2d(planes, factors))


@pytest.mark.parametrize("factors", [(3, 2), (2,), (0, 1)])
def test_unsupported_subsampling_is_refused(factors):
    chroma = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="subsampling"):
        jpeg_chroma_roundtrip(chroma, factors)
    with pytest.raises(ValueError, match="subsampling"):
        region_chroma(chroma, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), (1, 1), factors)
    with pytest.raises(ValueError, match="subsampling"):
        block_averages(chroma, factors)


def test_region_maps_must_cover_the_image():
    with pytest.raises(ValueError, match="index the 4x4 pixels"):
        region_chroma(torch.zeros(1, 2, 4, 4), torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), (1, 1), (2, 2))
