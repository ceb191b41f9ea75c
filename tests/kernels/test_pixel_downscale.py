"""Per-cell downscaling against a NumPy reference that loops over cells and follows the documented rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.pixel_downscale import (
    DOWNSCALE_METHODS,
    downscale_cells,
    downscale_content_adaptive,
    downscale_dominant,
    downscale_mean,
    downscale_median,
    downscale_mode,
)

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250], [90, 60, 30]], np.uint8)


def noisy_cells(batch: int, cells_h: int, cells_w: int, scale: int, seed: int) -> np.ndarray:
    """``(B, 4, H, W)`` uint8: few colours with many ties, binary alpha with partly transparent cells."""
    rng = np.random.default_rng(seed)
    height, width = cells_h * scale, cells_w * scale
    rgb = COLOURS[rng.integers(0, 4, (batch, height, width))].transpose(0, 3, 1, 2)
    opaque = rng.random((batch, 1, height, width)) < rng.choice([0.2, 0.6, 1.0], (batch, 1, 1, 1))
    return (np.concatenate([rgb, np.full_like(rgb[:, :1], 255)], 1) * opaque).astype(np.uint8)


def reference(image: np.ndarray, scale: int, method: str, threshold: float = 0.05) -> np.ndarray:
    batch, _, height, width = image.shape
    out = np.zeros((batch, 4, height // scale, width // scale), np.uint8)
    inner = slice(1, scale - 1) if scale >= 3 else slice(0, scale)
    for b in range(batch):
        for i in range(height // scale):
            for j in range(width // scale):
                cell = image[b, :, i * scale : (i + 1) * scale, j * scale : (j + 1) * scale]
                if 2 * (cell[3] >= 128).sum() < scale * scale:
                    continue
                voters = cell[:, inner, inner]
                if not (voters[3] >= 128).any():
                    voters = cell
                pixels = voters[:3, voters[3] >= 128].T.astype(np.int64)
                keys = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]
                values, counts = np.unique(keys, return_counts=True)  # sorted, so argmax takes the lowest key
                best = values[counts.argmax()]
                mode = np.array([best >> 16 & 255, best >> 8 & 255, best & 255])
                mean = pixels.sum(0) // len(pixels)
                if method == "mode" or (method == "dominant" and counts.max() >= threshold * len(pixels)):
                    colour = mode
                elif method == "median":
                    ordered = np.sort(pixels, 0)
                    colour = (ordered[(len(pixels) - 1) // 2] + ordered[len(pixels) // 2]) // 2
                else:
                    colour = mean
                out[b, :, i, j] = [*colour, 255]
    return out


def run(function, image: np.ndarray, device, *args) -> np.ndarray:
    return function(torch.from_numpy(image).to(device), *args).cpu().numpy()


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5])
class TestBlockMethods:
    def test_mode(self, device, scale):
        image = noisy_cells(3, 4, 5, scale, seed=scale)
        np.testing.assert_array_equal(run(downscale_mode, image, device, scale), reference(image, scale, "mode"))

    @pytest.mark.parametrize("threshold", [0.0, 0.05, 0.4, 1.0])
    def test_dominant(self, device, scale, threshold):
        image = noisy_cells(3, 4, 5, scale, seed=scale + 10)
        expected = reference(image, scale, "dominant", threshold)
        np.testing.assert_array_equal(run(downscale_dominant, image, device, scale, threshold), expected)

    def test_median(self, device, scale):
        image = noisy_cells(3, 4, 5, scale, seed=scale + 20)
        np.testing.assert_array_equal(run(downscale_median, image, device, scale), reference(image, scale, "median"))

    def test_median_when_every_pixel_is_opaque(self, device, scale):
        image = noisy_cells(3, 4, 5, scale, seed=scale + 40)
        image[:, 3] = 255
        np.testing.assert_array_equal(run(downscale_median, image, device, scale), reference(image, scale, "median"))

    def test_mean(self, device, scale):
        image = noisy_cells(3, 4, 5, scale, seed=scale + 30)
        np.testing.assert_array_equal(run(downscale_mean, image, device, scale), reference(image, scale, "mean"))


class TestSharedRules:
    def test_half_opaque_cell_is_opaque_and_transparent_cells_are_zero(self):
        image = torch.zeros(1, 4, 2, 4, dtype=torch.uint8)
        image[0, :, 0, :] = 200  # top row opaque: cell 0 half opaque, cell 1 half opaque
        image[0, 3, 0, :] = 255
        image[0, 3, 0, 3] = 0  # cell 1 now a quarter opaque
        image[0, :3, 1, 2:] = 77  # colour under transparent pixels must not leak
        for method in DOWNSCALE_METHODS:
            out = downscale_cells(image, 2, method)
            assert out[0, :, 0, 0].tolist() == [200, 200, 200, 255], method
            assert out[0, :, 0, 1].tolist() == [0, 0, 0, 0], method

    def test_interior_outvotes_the_ring(self):
        image = torch.full((1, 4, 4, 4), 255, dtype=torch.uint8)
        image[0, :3, 1:3, 1:3] = 10  # 4 interior pixels against 12 ring pixels
        assert downscale_mode(image, 4)[0, :3, 0, 0].tolist() == [10, 10, 10]

    def test_transparent_interior_votes_with_the_ring(self):
        image = torch.full((1, 4, 4, 4), 255, dtype=torch.uint8)
        image[0, :, 1:3, 1:3] = 0
        image[0, :3, 0, :] = image[0, :3, 3, :] = 33  # 8 of the 12 ring pixels
        assert downscale_dominant(image, 4, 0.05)[0, :, 0, 0].tolist() == [33, 33, 33, 255]

    def test_ties_go_to_the_lowest_colour(self):
        image = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
        image[0, :3, 0] = torch.tensor([[9], [0], [0]], dtype=torch.uint8)
        image[0, :3, 1] = torch.tensor([[0], [0], [200]], dtype=torch.uint8)
        assert downscale_mode(image, 2)[0, :3, 0, 0].tolist() == [0, 0, 200]

    @pytest.mark.parametrize("method", DOWNSCALE_METHODS)
    def test_clean_upscale_gives_the_art_back(self, method):
        art = noisy_cells(2, 5, 6, 1, seed=4)
        art[:, 3] = np.where(art[:, 3:] > 0, 255, 0)[:, 0]
        art[:, :3] *= art[:, 3:] > 0
        image = torch.from_numpy(art.repeat(6, 2).repeat(6, 3))
        np.testing.assert_array_equal(downscale_cells(image, 6, method).numpy(), art)

    def test_rejects_bad_inputs(self):
        with pytest.raises(ValueError, match="`image`"):
            downscale_mode(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 2)
        with pytest.raises(ValueError, match="`image`"):
            downscale_mode(torch.zeros(1, 4, 4, 4), 2)
        with pytest.raises(ValueError, match="multiples of `scale`"):
            downscale_mean(torch.zeros(1, 4, 5, 4, dtype=torch.uint8), 2)
        with pytest.raises(ValueError, match="`threshold`"):
            downscale_dominant(torch.zeros(1, 4, 4, 4, dtype=torch.uint8), 2, 1.5)
        with pytest.raises(ValueError, match="`method`"):
            downscale_cells(torch.zeros(1, 4, 4, 4, dtype=torch.uint8), 2, "nearest")


class TestContentAdaptive:
    def test_scale_one_is_identity(self):
        image = torch.from_numpy(noisy_cells(1, 5, 7, 1, seed=1))
        assert torch.equal(downscale_content_adaptive(image, 1), image)

    def test_shape_and_deterministic(self, device):
        image = torch.from_numpy(noisy_cells(2, 3, 4, 5, seed=2)).to(device)
        first = downscale_content_adaptive(image, 5)
        assert first.shape == (2, 4, 3, 4) and first.dtype == torch.uint8
        assert torch.equal(first, downscale_content_adaptive(image, 5))

    def test_sharp_cells_keep_their_colours_under_blur(self):
        from PIL import Image, ImageFilter

        rng = np.random.default_rng(3)
        art = COLOURS[rng.integers(0, 6, (6, 6))]
        blurred = np.asarray(Image.fromarray(art.repeat(8, 0).repeat(8, 1)).filter(ImageFilter.GaussianBlur(1.0)))
        image = torch.from_numpy(np.concatenate([blurred, np.full((48, 48, 1), 255, np.uint8)], -1)).permute(2, 0, 1)
        out = downscale_content_adaptive(image[None], 8)[0, :3].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(out - art).max() <= 12
