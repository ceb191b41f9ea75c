"""Conversion of float images to the 8-bit pixels that image files store."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize"]


def quantize(images: Tensor) -> Tensor:
    """Float images to 8-bit values, rounding half up, on the tensor's own device.

    Args:
        images: `(*, C, H, W)` floats; values outside [0, 1] are clamped.

    Returns:
        `(*, C, H, W)` uint8 in [0, 255].

    Example:
        >>> quantize(torch.tensor([[[[-0.1, 0.5 / 255, 0.999 / 255, 1.2]]]])).flatten().tolist()
        [0, 1, 1, 255]
    """
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
