"""Basic, smart and CAS sharpening against NumPy references."""

from __future__ import annotations

import kornia
import numpy as np
import pytest
import torch

from kernels.sharpen import sharpen_basic, sharpen_cas, sharpen_smart
from tests.kernels.conftest import (
    SHAPES,
    assert_batch_invariant,
    assert_close,
    assert_low_precision_works,
    assert_rejects_bad_images,
    assert_valid,
    make_image,
    tensor,
)


def _correlate2d(padded: np.ndarray, kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    rows, cols = kernel.shape
    return sum(
        kernel[i, j] * padded[..., i : i + height, j : j + width] for i in range(rows) for j in range(cols)
    )


def reference_basic(image: np.ndarray, radius: int, alphas) -> np.ndarray:
    """The reference's kernel (-alpha everywhere) with its centre raised so that it sums to 1."""
    _, _, height, width = image.shape
    size = 2 * radius + 1
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    out = np.empty_like(image)
    for b, alpha in enumerate(alphas):
        kernel = np.full((size, size), -alpha)
        kernel[radius, radius] = 1 + alpha * (size * size - 1)
        out[b] = _correlate2d(padded[b], kernel, height, width)
    return np.clip(out, 0, 1)


def reference_bilateral(image: np.ndarray, diameter: int, sigma_color: float) -> np.ndarray:
    """cv2.bilateralFilter for one float RGB image (3, H, W): disc window, L1 colour distance, reflect-101."""
    _, height, width = image.shape
    radius = max(diameter // 2, 1)
    sigma_space = 0.3 * ((diameter - 1) * 0.5 - 1) + 0.8
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    numerator, denominator = np.zeros_like(image), np.zeros((1, height, width))
    for i in range(-radius, radius + 1):
        for j in range(-radius, radius + 1):
            if np.sqrt(i * i + j * j) > radius:
                continue
            neighbour = padded[:, radius + i : radius + i + height, radius + j : radius + j + width]
            distance = np.abs(neighbour - image).sum(0, keepdims=True)
            weight = np.exp(-(i * i + j * j) / (2 * sigma_space**2)) * np.exp(-(distance**2) / (2 * sigma_color**2))
            numerator += weight * neighbour
            denominator += weight
    return numerator / denominator


def reference_sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL/kornia sharpness of one image (3, H, W)."""
    _, height, width = image.shape
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    degenerate = image.copy()
    if height > 2 and width > 2:
        degenerate[:, 1:-1, 1:-1] = np.clip(_correlate2d(image, kernel, height - 2, width - 2), 0, 1)
    return np.clip(degenerate + factor * (image - degenerate), 0, 1)


def reference_smart(image: np.ndarray, noise_radius: int, preserve_edges, strengths, ratios) -> np.ndarray:
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        pe = preserve_edges[b]
        sigma_color = max(1 - pe, 0.05) if pe > 0 else 1.0
        blurred = reference_bilateral(image[b], noise_radius, sigma_color) if noise_radius > 1 else image[b]
        sharpened = reference_sharpness(image[b], strengths[b]) if strengths[b] > 0 else image[b]
        out[b] = np.clip(ratios[b] * sharpened + (1 - ratios[b]) * blurred, 0, 1)
    return out


def reference_cas(image: np.ndarray, amounts) -> np.ndarray:
    _, _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))

    def at(dy, dx):
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    a, b, c, d, e, f, g, h, i = (at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    cross, corners = np.stack([b, d, e, f, h]), np.stack([a, c, g, i])
    low = np.maximum(cross.min(0), 0) + np.maximum(corners.min(0), 0)
    high = np.minimum(cross.max(0), 1) + np.minimum(corners.max(0), 1)
    amp = np.sqrt(np.minimum(low, 2 - high) / (high + 1e-5))
    amount = np.asarray(amounts, dtype=np.float64)[:, None, None, None]
    weight = -amp * (1 / 8 + amount * (1 / 5 - 1 / 8))
    return np.clip((weight * (b + d + f + h) + e) / (1 + 4 * weight), 0, 1)


class TestSharpenBasic:
    @pytest.mark.parametrize("radius", [1, 2, 5, 15])
    def test_reference(self, device, dtype, radius):
        image = make_image()
        alphas = [1.0, 0.1]
        out = sharpen_basic(tensor(image, device, dtype), radius, torch.tensor(alphas, dtype=torch.float64))
        assert_close(out, reference_basic(image, radius, alphas), 1e-9 if dtype == torch.float64 else 2e-5)

    def test_alpha_one_matches_reference_kernel(self, device):
        """At alpha 1 Kiln's formula is the reference's kernel (-1 everywhere, k^2 at the centre)."""
        image = make_image()
        padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        kernel = np.full((3, 3), -1.0)
        kernel[1, 1] = 9
        expected = np.clip(_correlate2d(padded, kernel, 13, 17), 0, 1)
        assert_close(sharpen_basic(tensor(image, device), 1, 1.0), expected, 1e-9)

    def test_radius_zero_is_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(sharpen_basic(image, 0, 5.0), image)

    @pytest.mark.parametrize(("radius", "alpha"), [(15, 5.0), (1, 5.0), (15, 0.1)])
    def test_extremes(self, device, radius, alpha):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(sharpen_basic(image, radius, alpha), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(sharpen_basic, image, 2, torch.tensor([0.1, 1.0, 5.0]))
        large = tensor(make_image(batch=2, height=96, width=131), dtype=torch.float32)
        assert_batch_invariant(sharpen_basic, large, 1, torch.tensor([0.5, 2.0]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        image = torch.rand(shape[0], 3, *shape[1:])
        assert_valid(sharpen_basic(image, 3, 1.0), image)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_basic, 1, 0.2)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_basic, 1, 1.0)
        with pytest.raises(ValueError, match="`radius`"):
            sharpen_basic(torch.rand(1, 3, 4, 4), -1, 1.0)


class TestSharpenSmart:
    @pytest.mark.parametrize("noise_radius", [1, 2, 7, 8, 25])
    @pytest.mark.parametrize("preserve_edges", [[0.75, 0.0], [1.0, 0.3]])
    def test_reference(self, device, dtype, noise_radius, preserve_edges):
        image = make_image()
        strengths, ratios = [5.0, 0.0], [0.5, 0.8]
        params = [torch.tensor(p, dtype=torch.float64) for p in (preserve_edges, strengths, ratios)]
        out = sharpen_smart(tensor(image, device, dtype), noise_radius, *params)
        expected = reference_smart(image, noise_radius, preserve_edges, strengths, ratios)
        assert_close(out, expected, 1e-9 if dtype == torch.float64 else 2e-5)

    def test_sharpen_matches_kornia(self, device, dtype):
        """With ratio 1 the result is kornia.enhance.sharpness, which the reference calls."""
        image = tensor(make_image(), device, dtype)
        factors = torch.tensor([5.0, 0.4], dtype=dtype, device=device)
        expected = kornia.enhance.sharpness(image, factors)
        assert (sharpen_smart(image, 1, 0.5, factors, 1.0) - expected).abs().max() <= 1e-6

    def test_noop_settings_are_identity(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        assert torch.equal(sharpen_smart(image, 1, 0.75, 0.0, 0.5), image)
        assert torch.equal(sharpen_smart(image, 7, 0.75, 0.0, 1.0), image)

    def test_flat_image_unchanged(self, device):
        image = torch.full((1, 3, 9, 11), 0.4, dtype=torch.float64, device=device)
        assert_close(sharpen_smart(image, 9, 0.5, 10.0, 0.5), np.full((1, 3, 9, 11), 0.4), 1e-12)

    @pytest.mark.parametrize(("noise_radius", "preserve_edges", "strength", "ratio"), [
        (25, 0.0, 25.0, 1.0), (25, 1.0, 25.0, 0.0), (1, 0.5, 25.0, 1.0), (13, 0.9, 0.0, 0.5),
    ])  # fmt: skip
    def test_extremes(self, device, noise_radius, preserve_edges, strength, ratio):
        image = tensor(make_image(), device, torch.float32)
        assert_valid(sharpen_smart(image, noise_radius, preserve_edges, strength, ratio), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        params = [torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 5.0, 25.0]), torch.tensor([0.5, 0.0, 1.0])]
        assert_batch_invariant(sharpen_smart, image, 7, *params)
        large = tensor(make_image(batch=2, height=96, width=131), dtype=torch.float32)
        assert_batch_invariant(sharpen_smart, large, 5, torch.tensor([0.75, 0.2]), torch.tensor([5.0, 1.0]), 0.5)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        image = torch.rand(shape[0], 3, *shape[1:])
        assert_valid(sharpen_smart(image, 7, 0.75, 5.0, 0.5), image)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_smart, 5, 0.75, 2.0, 0.5)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_smart, 7, 0.75, 5.0, 0.5)
        with pytest.raises(ValueError, match="`noise_radius`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7.0, 0.75, 5.0, 0.5)
        with pytest.raises(ValueError, match="`ratio`"):
            sharpen_smart(torch.rand(1, 3, 4, 4), 7, 0.75, 5.0, torch.ones(2))


class TestSharpenCas:
    @pytest.mark.parametrize("amounts", [[0.8, 0.8], [0.0, 1.0], [0.3, 0.55]])
    def test_reference(self, device, dtype, amounts):
        image = make_image()
        out = sharpen_cas(tensor(image, device, dtype), torch.tensor(amounts, dtype=torch.float64))
        assert_close(out, reference_cas(image, amounts), 1e-9 if dtype == torch.float64 else 1e-5)

    def test_border_unchanged(self, device, dtype):
        image = tensor(make_image(), device, dtype)
        out = sharpen_cas(image, 1.0)
        for edge in (out[..., 0, :] - image[..., 0, :], out[..., -1, :] - image[..., -1, :]):
            assert (edge == 0).all()
        assert torch.equal(out[..., 0], image[..., 0]) and torch.equal(out[..., -1], image[..., -1])

    @pytest.mark.parametrize("amount", [0.0, 1.0])
    def test_extremes(self, device, amount):
        for fill in (None, 0.0, 1.0):
            image = tensor(make_image(), device, torch.float32)
            if fill is not None:
                image = torch.full_like(image, fill)
            assert_valid(sharpen_cas(image, amount), image)

    def test_batch_invariance(self):
        image = tensor(make_image(batch=3), dtype=torch.float32)
        assert_batch_invariant(sharpen_cas, image, torch.tensor([0.0, 0.8, 1.0]))

    @pytest.mark.parametrize("shape", SHAPES)
    def test_cardinality(self, shape):
        image = torch.rand(shape[0], 3, *shape[1:])
        assert_valid(sharpen_cas(image, 0.8), image)

    def test_low_precision(self):
        assert_low_precision_works(sharpen_cas, 0.8)

    def test_invalid_arguments(self):
        assert_rejects_bad_images(sharpen_cas, 0.8)
        with pytest.raises(ValueError, match="`amount`"):
            sharpen_cas(torch.rand(2, 3, 4, 4), torch.ones(3))
