"""Blur effects of fal's post-processing: gaussian and Kuwahara."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import (
    REC601,
    check_image,
    check_int,
    correlate,
    gaussian_taps,
    luma,
    per_sample,
    reflect_pad,
    separable_filter,
    upcast,
)

__all__ = ["gaussian_blur", "kuwahara_blur"]


def gaussian_blur(image: Tensor, radius: int, sigma: float | Tensor) -> Tensor:
    r"""Blur an image with a separable gaussian truncated at ``radius`` pixels.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        radius: half width of the kernel in pixels; the kernel has :math:`2r + 1` taps. 0 returns the input.
        sigma: spread relative to the radius, a float or :math:`(B,)`; the pixel sigma is ``sigma * radius``.

    Returns:
        The blurred image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    The taps are :math:`w_i \propto \exp(-i^2 / (2 (\sigma r)^2))` for :math:`i \in [-r, r]`, normalised to sum 1
    (the reference defines them on the normalised offsets ``linspace(-1, 1, 2r + 1)`` with ``sigma``).

    Kiln differs: borders are mirrored (reflect-101) where the reference zero-pads, which darkens a band of
    ``radius`` pixels along every edge. Radii larger than the image mirror periodically.

    Example:
        >>> import torch
        >>> gaussian_blur(torch.rand(2, 3, 4, 5), 3, 1.0).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(radius, "radius", 0)
    x = upcast(image)
    sigma = per_sample(sigma, x, "sigma")
    if radius == 0:
        return image.clone()
    taps = gaussian_taps(sigma * radius, radius)
    return separable_filter(x, taps).clamp(0.0, 1.0).to(image.dtype)


def kuwahara_blur(image: Tensor, radius: int) -> Tensor:
    r"""Painterly Kuwahara filter: each pixel becomes the mean of its least varied neighbouring quadrant.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        radius: each quadrant is :math:`(r + 1) \times (r + 1)` pixels including the centre row and column.
            0 returns the input.

    Returns:
        The filtered image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    With column :math:`x` and row :math:`y`, the quadrants in index order are columns/rows
    :math:`[x, x+r] \times [y, y+r]`, :math:`[x, x+r] \times [y-r, y]`, :math:`[x-r, x] \times [y, y+r]` and
    :math:`[x-r, x] \times [y-r, y]`. Each is scored by the variance :math:`E[g^2] - E[g]^2` of the grey image
    :math:`g = 0.299 R + 0.587 G + 0.114 B`; the lowest variance wins (ties go to the lowest index) and the pixel
    takes that quadrant's mean RGB. Borders are mirrored (reflect-101), periodically for radii beyond the image.

    Kiln differs: it works in float where the reference truncates input and output to 8 bits, and applies the
    grey weights to the right channels where the reference applies BGR weights to RGB.

    Example:
        >>> import torch
        >>> kuwahara_blur(torch.rand(2, 3, 4, 5), 2).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(radius, "radius", 0)
    if radius == 0:
        return image.clone()
    x = upcast(image)
    height, width = x.shape[-2:]
    grey = luma(x, REC601)
    planes = reflect_pad(torch.cat([x, grey, grey * grey], 1), radius, radius)
    box = x.new_full((1, radius + 1), 1.0 / (radius + 1))
    # means[..., i, j] averages padded rows i..i+r and columns j..j+r; each quadrant is an offset view of it.
    means = correlate(correlate(planes, box, -2), box, -1)
    offsets = ((radius, radius), (0, radius), (radius, 0), (0, 0))
    windows = [means[..., row : row + height, col : col + width] for row, col in offsets]
    best, best_var = windows[0], _grey_variance(windows[0])
    for window in windows[1:]:
        var = _grey_variance(window)
        # Strictly lower only, so ties keep the earlier quadrant.
        better = var < best_var
        best = torch.where(better, window, best)
        best_var = torch.where(better, var, best_var)
    return best[:, :3].clamp(0.0, 1.0).to(image.dtype)


def _grey_variance(window: Tensor) -> Tensor:
    """Variance of the grey plane from the stacked means of (R, G, B, g, g^2)."""
    return window[:, 4:5] - window[:, 3:4] * window[:, 3:4]
