"""Sharpening of fal's post-processing: basic, smart (denoise + sharpen) and contrast-adaptive (CAS)."""

from __future__ import annotations

import math
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._utils import check_image, check_int, per_sample, reflect_pad, separable_filter, upcast

__all__ = ["sharpen_basic", "sharpen_cas", "sharpen_smart"]


def sharpen_basic(image: Tensor, radius: int, alpha: float | Tensor) -> Tensor:
    r"""Sharpen by amplifying each pixel's difference from its box-filtered neighbourhood.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        radius: half width of the box in pixels (fal allows 1 to 15); 0 returns the input.
        alpha: gain in [0.1, 5], a float or :math:`(B,)`.

    Returns:
        The sharpened image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`\mathrm{clamp}(x + \alpha k^2 (x - \mathrm{box}_k(x)), 0, 1)` with :math:`k = 2r + 1` and
    mirrored (reflect-101) borders.

    Kiln differs: the reference's kernel sums to alpha, so it also scales brightness by alpha
    (:math:`\alpha x + \alpha k^2 (x - \mathrm{box})`); Kiln keeps the sharpening gain without the brightness change
    (identical at alpha 1). The reference also zero-pads, which draws a bright frame ``radius`` pixels wide.

    Example:
        >>> import torch
        >>> sharpen_basic(torch.rand(2, 3, 4, 5), 1, 1.0).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(radius, "radius", 0)
    x = upcast(image)
    alpha = per_sample(alpha, x, "alpha")
    size = 2 * radius + 1
    mean = separable_filter(x, x.new_full((1, size), 1.0 / size))
    return (x + alpha * (size * size) * (x - mean)).clamp(0.0, 1.0).to(image.dtype)


def sharpen_smart(
    image: Tensor,
    noise_radius: int,
    preserve_edges: float | Tensor,
    strength: float | Tensor,
    ratio: float | Tensor,
) -> Tensor:
    r"""Blend an edge-preserving denoise (bilateral filter) with a PIL-style sharpen.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        noise_radius: bilateral window diameter :math:`n` (fal allows 1 to 25); 1 or less skips the denoise.
        preserve_edges: in [0, 1], a float or :math:`(B,)`; higher keeps more edges out of the denoise.
        strength: sharpen factor in [0, 25], a float or :math:`(B,)`; 0 skips the sharpen.
        ratio: weight of the sharpened image in [0, 1], a float or :math:`(B,)`.

    Returns:
        The result, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`\mathrm{clamp}(\rho \cdot \mathrm{sharpened} + (1 - \rho) \cdot \mathrm{blurred}, 0, 1)`.

    - blurred: OpenCV's ``bilateralFilter`` for float RGB: disc window of radius :math:`\max(n // 2, 1)`
      (taps with :math:`i^2 + j^2 \le` radius²), spatial sigma :math:`0.3 ((n - 1) / 2 - 1) + 0.8`, colour weight
      :math:`\exp(-D^2 / (2 \sigma_c^2))` with :math:`D = |\Delta R| + |\Delta G| + |\Delta B|`, mirrored
      (reflect-101) borders; :math:`\sigma_c = \max(1 - \mathrm{preserve\_edges}, 0.05)`, or 1 at
      ``preserve_edges`` 0 (OpenCV 4.x replaces a zero sigma with 1; 5.x would skip the filter).
    - sharpened: ``kornia.enhance.sharpness``: the 3×3 smoothing ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``
      clamped to [0, 1], the 1-pixel border taken from the input, then
      :math:`\mathrm{clamp}(s + f (x - s), 0, 1)`; the input itself where the strength is 0.

    Kornia's formula is re-expressed as shift-and-add (equal to kornia to float rounding) so that a sample's
    result does not depend on its batch; the exact colour weight replaces OpenCV's interpolated lookup table.

    Example:
        >>> import torch
        >>> sharpen_smart(torch.rand(2, 3, 4, 5), 7, 0.75, 5.0, 0.5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(noise_radius, "noise_radius", 0)
    x = upcast(image)
    preserve_edges = per_sample(preserve_edges, x, "preserve_edges")
    strength = per_sample(strength, x, "strength")
    ratio = per_sample(ratio, x, "ratio")
    blurred = _bilateral(x, noise_radius, preserve_edges) if noise_radius > 1 else x
    sharpened = torch.where(strength > 0, _pil_sharpness(x, strength), x)
    return (ratio * sharpened + (1 - ratio) * blurred).clamp(0.0, 1.0).to(image.dtype)


def _bilateral(x: Tensor, diameter: int, preserve_edges: Tensor) -> Tensor:
    """OpenCV 4.x ``bilateralFilter`` of float RGB as a loop over the disc's taps (no unfold: 625 taps × image)."""
    sigma_color = torch.where(preserve_edges > 0, (1 - preserve_edges).clamp_min(0.05), 1.0)
    color_coeff = -0.5 / (sigma_color * sigma_color)
    sigma_space = 0.3 * ((diameter - 1) * 0.5 - 1) + 0.8
    radius = max(diameter // 2, 1)
    height, width = x.shape[-2:]
    padded = reflect_pad(x, radius, radius)
    numerator, denominator = x, torch.ones_like(x[:, :1])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            squared = dy * dy + dx * dx
            if squared == 0 or squared > radius * radius:
                continue
            shifted = padded[..., radius + dy : radius + dy + height, radius + dx : radius + dx + width]
            diff = (shifted - x).abs()
            distance = diff[:, 0:1] + diff[:, 1:2] + diff[:, 2:3]
            weight = torch.exp(distance * distance * color_coeff) * math.exp(-0.5 * squared / sigma_space**2)
            numerator = numerator + weight * shifted
            denominator = denominator + weight
    return numerator / denominator


def _pil_sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """``kornia.enhance.sharpness``: blend from the 3×3 PIL smoothing (border kept) towards and past ``x``."""
    # [[1, 1, 1], [1, 5, 1], [1, 1, 1]] is the 3x3 box sum plus 4 times the centre.
    box_sum = separable_filter(x, x.new_ones((1, 3)))
    smooth = ((box_sum + 4 * x) / 13).clamp(0.0, 1.0)
    interior = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    interior[1:-1, 1:-1] = True
    smooth = torch.where(interior, smooth, x)
    return (smooth + (x - smooth) * factor).clamp(0.0, 1.0)


def sharpen_cas(image: Tensor, amount: float | Tensor) -> Tensor:
    r"""Contrast-adaptive sharpening (the ComfyUI_essentials port of AMD FidelityFX CAS).

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        amount: in [0, 1], a float or :math:`(B,)`; even 0 sharpens a little.

    Returns:
        The sharpened image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Per channel, over the zero-padded 3×3 neighbourhood ``a b c / d e f / g h i`` of centre ``e``:
    :math:`mn = \max(\min(b, d, e, f, h), 0) + \max(\min(a, c, g, i), 0)`,
    :math:`mx = \min(\max(b, d, e, f, h), 1) + \min(\max(a, c, g, i), 1)`,
    :math:`amp = \sqrt{\min(mn, 2 - mx) / (mx + 10^{-5})}`,
    :math:`w = -amp \, (1/8 + \mathrm{amount} (1/5 - 1/8))` and
    :math:`out = \mathrm{clamp}((w (b + d + f + h) + e) / (1 + 4 w), 0, 1)`.
    The zero padding makes :math:`mn = 0` on the 1-pixel border, so border pixels are returned unchanged.

    Example:
        >>> import torch
        >>> sharpen_cas(torch.rand(2, 3, 4, 5), 0.8).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    x = upcast(image)
    amount = per_sample(amount, x, "amount")
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))

    def at(dy: int, dx: int) -> Tensor:
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    cross = (at(-1, 0), at(0, -1), x, at(0, 1), at(1, 0))
    corners = (at(-1, -1), at(-1, 1), at(1, -1), at(1, 1))
    low = reduce(torch.minimum, cross).clamp_min(0) + reduce(torch.minimum, corners).clamp_min(0)
    high = reduce(torch.maximum, cross).clamp_max(1) + reduce(torch.maximum, corners).clamp_max(1)
    amp = torch.sqrt(torch.minimum(low, 2 - high) / (high + 1e-5))
    weight = -amp * (1 / 8 + amount * (1 / 5 - 1 / 8))
    neighbours = cross[0] + cross[1] + cross[3] + cross[4]
    return ((weight * neighbours + x) / (1 + 4 * weight)).clamp(0.0, 1.0).to(image.dtype)
