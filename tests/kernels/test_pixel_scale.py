"""Pixel-grid detection: boundary and edge profiles, periodicity, offsets, runs and edge detectors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from kernels import pixel_scale
from kernels.pixel_scale import (
    Grid,
    _kth_smallest,
    boundary_profiles,
    detect_grid_edges,
    detect_grid_runs,
    edge_profiles,
    grid_offsets,
    periodicity,
)


def random_art(cells: int, seed: int, colours: int = 6) -> np.ndarray:
    """``(cells, cells, 4)`` uint8 opaque art: i.i.d. cells from a palette of well-separated colours."""
    rng = np.random.default_rng(seed)
    palette = rng.permutation(np.stack(np.meshgrid([0, 128, 255], [0, 255], [40, 200]), -1).reshape(-1, 3))[:colours]
    art = palette[rng.integers(0, colours, (cells, cells))]
    return np.concatenate([art, np.full((cells, cells, 1), 255)], -1).astype(np.uint8)


def upscale(art: np.ndarray, scale: int, start: int = 0, end: int = 0) -> np.ndarray:
    big = art.repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(big[start : big.shape[0] - end, start : big.shape[1] - end])


def as_batch(*images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images]).to(device)


def jpeg(image: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    """JPEG round trip of the colour channels; ``subsampling`` 2 is 4:2:0 (PIL's default), 0 is 4:4:4."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., :3]).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    rgb = np.asarray(Image.open(buffer).convert("RGB"))
    return np.concatenate([rgb, image[..., 3:]], -1)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear resize of the colour channels by ``factor`` (PIL), opaque."""
    height, width = image.shape[:2]
    size = (round(width * factor), round(height * factor))
    rgb = np.asarray(Image.fromarray(image[..., :3]).resize(size, Image.BILINEAR))
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)


class TestBoundaryProfiles:
    def test_marks_exact_changes(self, device):
        image = torch.zeros(2, 4, 3, 7, dtype=torch.uint8, device=device)
        image[0, 1, 1, 4] = 1  # one channel, one pixel: boundaries on both of its sides
        image[1, 3, :, 2:] = 9
        columns, rows = boundary_profiles(image)
        assert columns.shape == (2, 7) and rows.shape == (2, 3)
        assert columns[0].nonzero().flatten().tolist() == [4, 5]
        assert rows[0].nonzero().flatten().tolist() == [1, 2]
        assert columns[1].nonzero().flatten().tolist() == [2] and not rows[1].any()

    def test_rejects_non_images(self):
        with pytest.raises(ValueError, match="`image`"):
            boundary_profiles(torch.zeros(3, 4, 4))


class TestEdgeProfiles:
    def test_step_counts_at_its_boundary(self, device):
        image = torch.zeros(1, 3, 5, 12, device=device)
        image[..., 7:] = 1.0
        columns, rows = edge_profiles(image)
        assert columns[0].nonzero().flatten().tolist() == [7]
        assert columns[0, 7].item() == pytest.approx(5 * 3.0**2)
        assert not rows.any()

    def test_blurred_step_still_peaks_on_the_boundary(self):
        step = np.zeros((8, 40, 3), np.uint8)
        step[:, 20:] = 255
        blurred = np.asarray(Image.fromarray(step).filter(ImageFilter.GaussianBlur(1.5)))
        columns, _ = edge_profiles(torch.from_numpy(blurred).permute(2, 0, 1)[None])
        assert columns[0].nonzero().flatten().tolist() == [20]

    def test_noise_floor_is_the_99th_percentile_of_a_large_image(self):
        # the floor of the docstring, computed with a full kthvalue over all 1024 x 1024 differences
        rng = np.random.default_rng(3)
        image = torch.from_numpy(rng.integers(0, 256, (1, 1, 1024, 1024)).astype(np.float32))
        image[..., ::4] *= 0.05  # most steps weak, so the floor removes some maxima
        grad = torch.nn.functional.pad((image[..., 1:] - image[..., :-1]).abs().sum(1), (1, 0))
        strong = grad.flatten(1).kthvalue(math.ceil(0.99 * grad[0].numel()), dim=1).values
        grad = torch.where(grad >= 0.2 * strong, grad, 0)
        before = torch.nn.functional.pad(grad[..., :-1], (1, 0))
        after = torch.nn.functional.pad(grad[..., 1:], (0, 1))
        expected = (grad * grad * ((grad >= before) & (grad > after))).sum(-2)
        assert torch.equal(edge_profiles(image)[0], expected)


@pytest.mark.parametrize(
    "values",
    [
        torch.rand(2, 300_000, generator=torch.Generator().manual_seed(0)),
        torch.randint(0, 4, (1, 200_000), generator=torch.Generator().manual_seed(1)).float(),  # ties
        torch.zeros(1, 150_000),
        torch.arange(200_000.0).remainder(3).eq(0).float().mul(1e6).unsqueeze(0),
        torch.rand(1, 1_000),  # too few to sample
    ],
)
# a negative margin puts the bracket above the answer, which the count then finds, and the whole row is searched
@pytest.mark.parametrize("margin", [0.005, -0.5])
def test_kth_smallest_is_kthvalue(values, margin, monkeypatch):
    monkeypatch.setattr(pixel_scale, "_KTH_MARGIN", margin)
    count = values.shape[1]
    for k in (1, count // 2, math.ceil(0.99 * count), count):
        assert torch.equal(_kth_smallest(values, k), values.kthvalue(k, dim=1).values)


class TestPeriodicity:
    def test_comb_is_coherent_at_its_period_and_harmonics(self, device):
        comb = torch.zeros(1, 96, device=device)
        comb[0, 5::12] = 1.0
        scores = periodicity(comb, torch.tensor([12.0, 6.0, 4.0, 24.0, 7.0]))[0].tolist()
        assert scores[:3] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
        assert scores[3] < 1e-4  # alternate teeth cancel at twice the period
        assert scores[4] < 0.2

    def test_all_zero_profile_scores_zero(self):
        assert periodicity(torch.zeros(2, 10), torch.tensor([2.0, 3.0])).abs().max() == 0


class TestGridOffsets:
    @pytest.mark.parametrize("scale", [2, 5, 9])
    def test_every_offset_of_a_comb(self, scale):
        for offset in range(scale):
            columns = torch.zeros(1, 10 * scale)
            columns[0, offset::scale] = 1.0
            rows = torch.zeros(1, 7 * scale)
            rows[0, (offset + 1) % scale :: scale] = 2.0
            offset_y, offset_x = grid_offsets(columns, rows, scale)
            assert (offset_y.item(), offset_x.item()) == ((offset + 1) % scale, offset)


class TestDetectGridRuns:
    @pytest.mark.parametrize("scale", range(2, 17))
    def test_exact_at_every_scale_and_offset(self, scale):
        art = random_art(8, seed=scale)
        for start in range(scale):
            image = upscale(art, scale, start, (start * 3) % scale)
            assert detect_grid_runs(as_batch(image)) == [Grid(scale, (scale - start) % scale, (scale - start) % scale)]

    def test_batch_of_different_grids(self, device):
        first = upscale(random_art(10, 1), 4, 1)[:30, :30]
        second = upscale(random_art(5, 2), 6)
        grids = detect_grid_runs(as_batch(first, second, device=device))
        assert grids == [Grid(4, 3, 3), Grid(6, 0, 0)]

    def test_none_where_not_a_clean_upscale(self):
        art = random_art(12, 3)
        assert detect_grid_runs(as_batch(art)) == [None]
        assert detect_grid_runs(as_batch(jpeg(upscale(art, 6), 90))) == [None]
        assert detect_grid_runs(as_batch(np.zeros((20, 20, 4), np.uint8))) == [None]


    def test_cells_wider_than_the_image_are_no_grid(self):
        """A 2 px wide strip whose rows change every 4 px (a lossy codec's blocks on one colour) gave scale 4,
        and no 4 px cell fits across it: the crop to whole cells came out empty and the request failed."""
        strip = np.full((68, 2, 4), 255, np.uint8)
        strip[..., :3] = np.array([253, 13, 44], np.uint8) + np.arange(68)[:, None, None] // 4 % 2
        assert detect_grid_runs(as_batch(strip)) == [None]
        assert detect_grid_runs(as_batch(np.ascontiguousarray(strip.repeat(2, 1)))) == [Grid(4, 0, 0)]


class TestDetectGridEdges:
    @pytest.mark.parametrize("scale", [2, 3, 7, 16])
    def test_clean_upscale(self, scale):
        image = upscale(random_art(12, scale), scale, 1)
        assert detect_grid_edges(as_batch(image)) == [Grid(scale, scale - 1, scale - 1)]

    @pytest.mark.parametrize("scale", [4, 9, 13])
    def test_jpeg_upscale(self, scale):
        image = jpeg(upscale(random_art(12, scale), scale, 2), 70)
        assert detect_grid_edges(as_batch(image))[0].scale == scale

    def test_native_art_is_scale_one(self):
        assert detect_grid_edges(as_batch(random_art(64, 0))) == [Grid(1)]

    def test_a_float_image_is_left_as_it_was(self):
        """The detection planes are worked on in place: a float image, whose `.float()` is itself, is not."""
        image = as_batch(upscale(random_art(12, 4), 5, 1)).float()
        kept = image.clone()
        assert detect_grid_edges(image) == [Grid(5, 4, 4)]
        assert torch.equal(image, kept)

    @pytest.mark.parametrize("size", [(30, 30), (22, 10), (7, 45)])
    def test_a_flat_image_is_scale_one(self, size):
        """Every plane constant (one colour, opaque): the profiles had no plane left to sum, and it raised."""
        image = np.broadcast_to(np.array([77, 77, 77, 255], np.uint8), (*size, 4))
        assert detect_grid_edges(as_batch(np.ascontiguousarray(image))) == [Grid(1)]

    def test_image_too_small_for_three_cells(self):
        assert detect_grid_edges(as_batch(random_art(5, 0))) == [Grid(1)]

    @pytest.mark.parametrize(("scale", "factor"), [(2, 1.02), (2, 0.98), (3, 1.02), (3, 0.97), (4, 1.03)])
    def test_resampled_small_scales_measure_the_fractional_cell(self, scale, factor):
        """Issue 15: the moire of a near-1 resample (period about 1 / |f - 1|, 50 px here) was reported as the
        scale, and 2.94 px cells were measured as 3.12 (an alias), so cells drifted across the image."""
        image = resample(upscale(random_art(48, scale), scale, 1), factor)
        grid = detect_grid_edges(as_batch(image))[0]
        true_cell = scale * image.shape[1] / (48 * scale - 1)
        assert grid.scale == scale and grid.fractional
        assert grid.cell_size == pytest.approx((true_cell, true_cell), abs=0.01)

    @pytest.mark.parametrize(
        ("scale", "factor"), [(2, 1.02), (2, 0.98), (3, 1.02), (3, 0.97), (4, 1.03), (5, 0.98), (8, 1.02)]
    )
    def test_resampled_lattice_is_placed_to_a_fraction_of_a_pixel(self, scale, factor):
        """A resize maps the upscale's pixel edges to ``x * new / old`` (PIL's pixel-area convention): cells of
        ``scale * new / old`` px from the first complete one at ``(scale - 1) * new / old``. Fitted to the pixels
        where the boundaries' gradients peak, 2 px cells x 0.98 measured 0.0056 px short, the first of 48 cells
        0.12 px late and the last 0.14 px early; every cell must stay within 0.02 px of where the resize put it."""
        image = resample(upscale(random_art(48, scale), scale, 1), factor)
        grid = detect_grid_edges(as_batch(image))[0]
        height, width = image.shape[:2]
        for offset, period, new in ((grid.offset_y, grid.period_y, height), (grid.offset_x, grid.period_x, width)):
            ratio = new / (48 * scale - 1)
            cells = np.arange(48)
            assert np.abs(offset + cells * period - (scale - 1 + cells * scale) * ratio).max() < 0.02

    def test_jpeg_chroma_grid_does_not_beat_the_pixel_grid(self):
        """4:2:0 chroma only changes on a 2-pixel grid; art whose colours differ mostly in chroma (dark red on
        navy) must still give its own scale."""
        palette = np.array([[120, 16, 24, 255], [20, 24, 100, 255], [90, 30, 90, 255]], np.uint8)
        art = palette[np.random.default_rng(9).integers(0, 3, (24, 24))]
        for subsampling in (2, 0):
            image = jpeg(upscale(art, 9, 4), 75, subsampling)
            assert detect_grid_edges(as_batch(image))[0].scale == 9

    def test_isoluminant_art_falls_back_to_colour_edges(self):
        palette = np.array([[255, 0, 0, 255], [0, 100, 150, 255]], np.uint8)  # both luma 76
        art = palette[np.random.default_rng(3).integers(0, 2, (16, 16))]
        assert detect_grid_edges(as_batch(upscale(art, 5, 2)))[0] == Grid(5, 3, 3)


class TestGrid:
    def test_cell_size_is_the_scale_or_the_measured_period(self):
        assert Grid(4, 1, 2).cell_size == (4.0, 4.0) and not Grid(4, 1, 2).fractional
        grid = Grid(2, 0.3, 1.1, 2.04, 2.05)
        assert grid.cell_size == (2.04, 2.05) and grid.fractional
