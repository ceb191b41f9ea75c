"""Shared fixtures and helpers for the kernel tests: a deterministic test image, devices, dtypes, checks.

The contract checks every post-processing kernel inherits are in `tests/kernels/base.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

# Shapes for cardinality tests: square, H != W, odd sizes, and images smaller than the filters' radii.
SHAPES = [(1, 8, 8), (2, 13, 17), (3, 5, 2), (1, 1, 1), (2, 2, 9)]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


def make_image(batch: int = 2, height: int = 13, width: int = 17, seed: int = 0) -> np.ndarray:
    """A deterministic float64 ``(B, 3, H, W)`` image in [0, 1] with noise, flat regions, a grey strip and edges."""
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 3, height, width))
    image[:, :, : height // 2, : width // 2] = rng.random((batch, 3, 1, 1))  # flat colour block
    image[:, :, height // 2 :, :3] = rng.random((batch, 1, 1, 1))  # grey strip, R = G = B
    image[:, :, -3:, -4:-2] = 0.0  # black and white bars: hard edges and the range ends
    image[:, :, -3:, -2:] = 1.0
    return image


def tensor(array: np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


def rounded(array: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``array`` rounded through ``dtype`` and back to float64: the exact input a kernel of that dtype sees."""
    return tensor(array, dtype=dtype).double().numpy()


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance against a float64 NumPy reference."""
    return 1e-10 if dtype == torch.float64 else 2e-6


def assert_close(actual: torch.Tensor, expected: np.ndarray, atol: float) -> None:
    got = actual.detach().cpu().double().numpy()
    assert got.shape == expected.shape
    error = np.abs(got - expected).max()
    assert error <= atol, f"max abs error {error:.3g} > {atol:.3g}"


def assert_valid(out: torch.Tensor, image: torch.Tensor) -> None:
    """Same shape, dtype and device as ``image``, finite, in [0, 1]."""
    assert out.shape == image.shape and out.dtype == image.dtype and out.device == image.device
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def assert_batch_invariant(function: Callable[..., torch.Tensor], image: torch.Tensor, *args, **kwargs) -> None:
    """``function(image)[i]`` equals ``function(image[i:i+1])`` bit for bit, slicing any ``(B,)`` tensor argument."""
    batch = image.shape[0]
    whole = function(image, *args, **kwargs)

    def take(value, i):
        if isinstance(value, (torch.Tensor, list)) and len(value) == batch:
            return value[i : i + 1]
        return value

    for i in range(batch):
        alone = function(image[i : i + 1], *[take(a, i) for a in args], **{k: take(v, i) for k, v in kwargs.items()})
        assert torch.equal(whole[i : i + 1], alone), f"sample {i} differs when run alone"


def assert_rejects_bad_images(function: Callable[..., torch.Tensor], *args, **kwargs) -> None:
    """Non-tensors, wrong shapes, integer and empty images raise ``ValueError`` naming `image`."""
    for bad in (
        make_image(),
        torch.rand(2, 4, 5, 5),
        torch.rand(3, 5, 5),
        torch.zeros(2, 3, 5, 5, dtype=torch.uint8),
        torch.rand(2, 3, 0, 5),
    ):
        with pytest.raises(ValueError, match="`image`"):
            function(bad, *args, **kwargs)
