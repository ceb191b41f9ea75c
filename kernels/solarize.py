"""Solarize of fal's post-processing: invert the values above a threshold."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import check_image, per_sample, upcast

__all__ = ["solarize"]


def solarize(image: Tensor, threshold: float | Tensor) -> Tensor:
    r"""Invert every channel value strictly above ``threshold``.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        threshold: in [0, 1], a float or :math:`(B,)`; 1 returns the input.

    Returns:
        The solarized image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`x > t \Rightarrow 1 - x`, otherwise :math:`x`.

    The comparison is strict as in the reference; ``kornia.enhance.solarize`` inverts at :math:`x \ge t`, which
    turns black white at threshold 0 and flips values equal to the threshold, so it is not used.

    Example:
        >>> import torch
        >>> solarize(torch.rand(2, 3, 4, 5), 0.5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    x = upcast(image)
    threshold = per_sample(threshold, x, "threshold")
    return torch.where(x > threshold, 1 - x, x).clamp(0.0, 1.0).to(image.dtype)
