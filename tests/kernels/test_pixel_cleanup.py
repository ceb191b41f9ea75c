"""Alpha binarisation, alpha morphology, jaggy removal, flood fill, background removal and trimming."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from kernels.pixel_cleanup import (
    BACKGROUND_MODES,
    background_seeds,
    binarize_alpha,
    fill_background,
    flood_fill,
    open_close_alpha,
    remove_jaggies,
    trim_box,
)

WHITE, BLUE, YELLOW, RED = (255, 255, 255), (0, 0, 255), (255, 220, 0), (200, 30, 30)


def from_mask(opaque: np.ndarray, rgb: np.ndarray | None = None) -> torch.Tensor:
    """``(B, H, W)`` bool (and optional ``(B, H, W, 3)`` colours, grey by default) -> binary RGBA tensor."""
    rgb = np.full(opaque.shape + (3,), 90) if rgb is None else rgb
    image = np.concatenate([rgb, np.full(opaque.shape + (1,), 255)], -1) * opaque[..., None]
    return torch.from_numpy(image.astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def background_fixture() -> np.ndarray:
    """The research note's 7x9 case: a white ground with near-white specks, a red sprite, a blue strip in the
    bottom-left corner and a yellow pixel at the middle of the right edge."""
    rgb = np.array(WHITE)[None, None].repeat(7, 0).repeat(9, 1)
    rgb[2:5, 3:6] = RED
    rgb[6, 0:3] = BLUE
    rgb[3, 8] = YELLOW
    rgb[1, 1] = rgb[5, 6] = (254, 255, 253)
    return rgb


def reference_fill(rgb: np.ndarray, opaque: np.ndarray, mode: str, tolerance: int) -> np.ndarray:
    """unfake's `make_background_transparent`: seeds in order, stack DFS, 4-connected, Chebyshev to the seed."""
    opaque = opaque.copy()
    height, width = opaque.shape
    visited = np.zeros_like(opaque)
    for y, x in background_seeds(height, width, mode):
        if visited[y, x] or not opaque[y, x]:
            continue
        target = rgb[y, x].astype(int)
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            if not (0 <= cy < height and 0 <= cx < width) or visited[cy, cx]:
                continue
            if not opaque[cy, cx]:
                visited[cy, cx] = True
                continue
            if np.abs(rgb[cy, cx].astype(int) - target).max() > tolerance:
                continue
            visited[cy, cx] = True
            opaque[cy, cx] = False
            stack += [(cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)]
    return opaque


class TestBinarizeAlpha:
    @pytest.mark.parametrize("threshold", [0, 127, 128, 255])
    def test_threshold_and_hidden_colours_cleared(self, device, threshold):
        alpha = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
        image = torch.stack([torch.full_like(alpha, 40), torch.full_like(alpha, 50), torch.full_like(alpha, 60), alpha])
        out = binarize_alpha(image.view(1, 4, 1, 6).to(device), threshold)[0, :, 0].cpu()
        kept = alpha >= threshold
        assert out[3].tolist() == (kept * 255).tolist()
        assert out[:3].tolist() == [(kept * value).tolist() for value in (40, 50, 60)]


class TestOpenCloseAlpha:
    def test_removes_specks_fills_pinholes_and_does_not_shift(self, device):
        opaque = np.zeros((1, 12, 12), bool)
        opaque[0, 2:8, 3:9] = True
        opaque[0, 4, 5] = False  # pinhole
        opaque[0, 10, 1] = True  # speck
        rgb = np.zeros((1, 12, 12, 3), np.int64)
        rgb[0, :, :, 0] = np.arange(12)[None]  # colour varies along x, so a shift would show
        out = open_close_alpha(from_mask(opaque, rgb).to(device)).cpu()
        expected = np.zeros((12, 12), bool)
        expected[2:8, 3:9] = True
        np.testing.assert_array_equal(out[0, 3].numpy() == 255, expected)
        assert out[0, 0, 4, 5].item() in (4, 5, 6)  # the pinhole took a neighbour's colour
        np.testing.assert_array_equal(out[0, 0].numpy()[expected & opaque[0]], rgb[0, ..., 0][expected & opaque[0]])

    def test_opaque_image_unchanged(self):
        image = torch.randint(0, 256, (2, 4, 5, 6), dtype=torch.uint8)
        image[:, 3] = 255
        assert torch.equal(open_close_alpha(image), image)


class TestRemoveJaggies:
    def test_matches_the_rule_on_random_masks(self, device):
        rng = np.random.default_rng(0)
        opaque = rng.random((3, 15, 17)) < 0.25
        out = remove_jaggies(from_mask(opaque).to(device)).cpu()[:, 3].numpy() == 255
        padded = np.pad(opaque, ((0, 0), (1, 1), (1, 1))).astype(int)
        expected = opaque.copy()
        for b, y, x in zip(*np.nonzero(opaque)):
            if y in (0, 14) or x in (0, 16):
                continue
            around = padded[b, y : y + 3, x : x + 3]
            orthogonal = around[0, 1] + around[2, 1] + around[1, 0] + around[1, 2]
            diagonal = around[0, 0] + around[0, 2] + around[2, 0] + around[2, 2]
            if orthogonal == 0 and diagonal == 1:
                expected[b, y, x] = False
        np.testing.assert_array_equal(out, expected)

    def test_diagonal_line_loses_only_its_ends(self):
        opaque = np.zeros((1, 8, 8), bool)
        for i in range(1, 7):
            opaque[0, i, i] = True
        out = remove_jaggies(from_mask(opaque))[0, 3].numpy() == 255
        assert [i for i in range(8) if out[i, i]] == [2, 3, 4, 5]


class TestFloodFill:
    def test_matches_breadth_first_search(self, device):
        rng = np.random.default_rng(1)
        allowed = rng.random((3, 20, 23)) < 0.6
        seeds = rng.random((3, 20, 23)) < 0.01
        out = flood_fill(torch.from_numpy(allowed).to(device), torch.from_numpy(seeds).to(device)).cpu().numpy()
        expected = np.zeros_like(allowed)
        for b in range(3):
            queue = deque(zip(*np.nonzero(seeds[b] & allowed[b])))
            while queue:
                y, x = queue.popleft()
                if expected[b, y, x]:
                    continue
                expected[b, y, x] = True
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < 20 and 0 <= nx < 23 and allowed[b, ny, nx] and not expected[b, ny, nx]:
                        queue.append((ny, nx))
        np.testing.assert_array_equal(out, expected)

    def test_spiral_needs_many_turns(self):
        allowed = np.zeros((1, 9, 9), bool)
        allowed[0, 0, :] = allowed[0, :, 8] = allowed[0, 8, :] = allowed[0, 2:, 0] = True
        allowed[0, 2, :7] = allowed[0, 2:7, 6] = allowed[0, 6, 2:7] = allowed[0, 4:7, 2] = True
        seeds = np.zeros_like(allowed)
        seeds[0, 0, 0] = True
        assert np.array_equal(flood_fill(torch.from_numpy(allowed), torch.from_numpy(seeds)).numpy(), allowed)


class TestFillBackground:
    @pytest.mark.parametrize("mode", BACKGROUND_MODES)
    @pytest.mark.parametrize("tolerance", [0, 2])
    def test_masks_match_the_reference_fill(self, mode, tolerance):
        rgb = background_fixture()
        opaque = np.ones((7, 9), bool)
        out = fill_background(from_mask(opaque[None], rgb[None]), mode, tolerance)[0, 3].numpy() == 255
        np.testing.assert_array_equal(out, reference_fill(rgb, opaque, mode, tolerance))

    def test_what_each_mode_removes(self):
        image = from_mask(np.ones((1, 7, 9), bool), background_fixture()[None])
        kept = {mode: fill_background(image, mode, 2)[0, 3].numpy() == 255 for mode in BACKGROUND_MODES}
        sprite, strip, yellow, ground = (slice(2, 5), slice(3, 6)), (6, slice(0, 3)), (3, 8), (0, 4)
        assert all(kept[mode][sprite].all() and not kept[mode][ground] for mode in BACKGROUND_MODES)
        assert not kept["corners"][strip].any() and kept["corners"][yellow]
        assert not kept["edges"][strip].any() and not kept["edges"][yellow]
        assert kept["midpoints"][strip].all() and not kept["midpoints"][yellow]
        # exact matching leaves the near-white specks; tolerance 2 takes them with the ground
        assert (fill_background(image, "corners", 0)[0, 3].numpy() == 255)[1, 1]
        assert not kept["corners"][1, 1]

    def test_transparent_pixels_are_barriers(self):
        rgb = np.full((1, 5, 5, 3), 255)
        opaque = np.ones((1, 5, 5), bool)
        opaque[0, :, 2] = False  # a transparent wall splits the ground
        out = fill_background(from_mask(opaque, rgb), "midpoints", 0)[0, 3].numpy() == 255
        assert not out.any()  # left and right halves each hold a seed
        out = fill_background(from_mask(opaque, rgb), "corners", 0)[0, 3].numpy() == 255
        assert not out.any()


class TestTrimBox:
    def test_transparent_and_coloured_borders(self):
        opaque = np.zeros((2, 6, 7), bool)
        opaque[0, 2:4, 1:3] = True
        opaque[1] = True
        rgb = np.full((2, 6, 7, 3), 10)
        rgb[1, 1:5, 2:6] = 200
        rgb[1, 5, 0] = 12  # within tolerance 2 of the corner colour
        boxes = trim_box(from_mask(opaque, rgb), 2)
        assert boxes == [(2, 4, 1, 3), (1, 5, 2, 6)]

    def test_all_background_is_kept_whole(self):
        assert trim_box(from_mask(np.zeros((1, 3, 4), bool)), 0) == [(0, 3, 0, 4)]
