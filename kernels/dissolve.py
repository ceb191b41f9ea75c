"""Dissolve of fal's post-processing: blend the image with a second image."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kernels._utils import check_image, check_int, per_sample, upcast

__all__ = ["dissolve", "resize_to"]


def dissolve(image: Tensor, other: Tensor, factor: float | Tensor) -> Tensor:
    r"""Blend ``image`` with ``other``, keeping a share ``factor`` of ``image``.

    Both inputs are RGB images, float, values in [0, 1], of the same shape (use :func:`resize_to` first);
    float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        other: second image of shape :math:`(B, 3, H, W)`.
        factor: weight of ``image`` in [0, 1], a float or :math:`(B,)`; 1 returns ``image``, 0 returns ``other``.

    Returns:
        The blend, :math:`(B, 3, H, W)`, dtype of ``image``, in [0, 1].

    Formula: :math:`f \cdot \mathrm{image} + (1 - f) \cdot \mathrm{other}`, the "smooth linear interpolation" fal
    describes. The reference keeps each value of ``image`` with probability :math:`f` (a mask
    :math:`\mathrm{rand} < f`) and takes ``other`` elsewhere; this is the expected value of its output.

    Kiln differs: the reference draws a random per-element mask and takes each value from one image or the
    other; this is the expectation of that output, deterministic and without speckle.

    Example:
        >>> import torch
        >>> dissolve(torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), 0.5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_image(other, "other")
    if other.shape != image.shape:
        raise ValueError(f"`other` must have the shape of `image`, {tuple(image.shape)}, got {tuple(other.shape)}")
    x = upcast(image)
    factor = per_sample(factor, x, "factor")
    y = other.to(device=x.device, dtype=x.dtype)
    return (factor * x + (1 - factor) * y).clamp(0.0, 1.0).to(image.dtype)


def resize_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    r"""Stretch an image to ``size`` with antialiased bilinear resampling.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, h, w)`.
        size: target ``(H, W)``.

    Returns:
        The resized image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    This is ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``: the aspect ratio is not
    kept, the whole image is stretched to the target.

    Example:
        >>> import torch
        >>> resize_to(torch.rand(2, 3, 8, 6), (4, 5)).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"`size` must be a pair (H, W), got {size!r}")
    check_int(size[0], "size[0]", 1)
    check_int(size[1], "size[1]", 1)
    x = upcast(image)
    out = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0).to(image.dtype)
