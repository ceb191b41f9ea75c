"""Colour correction of fal's post-processing: brightness, contrast, temperature, gamma and saturation."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import REC601, check_image, luma, per_sample, sample_mean, upcast

__all__ = ["correct_color"]


def correct_color(
    image: Tensor,
    temperature: float | Tensor,
    brightness: float | Tensor,
    contrast: float | Tensor,
    saturation: float | Tensor,
    gamma: float | Tensor,
) -> Tensor:
    r"""Adjust brightness, contrast, temperature, gamma and saturation, in that order.

    The input is an RGB image, float, values in [0, 1], gamma-encoded sRGB (no linearisation);
    float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        temperature: warm/cool shift in [-100, 100], a float or :math:`(B,)`; 0 is neutral.
        brightness: in [-100, 100], a float or :math:`(B,)`; 0 is neutral.
        contrast: in [-100, 100], a float or :math:`(B,)`; 0 is neutral.
        saturation: in [-100, 100], a float or :math:`(B,)`; 0 is neutral, -100 is grey.
        gamma: exponent in [0.2, 2.2], a float or :math:`(B,)`; 1 is neutral, above 1 darkens.

    Returns:
        The corrected image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    With :math:`b, c, s, t` the parameters divided by 100, each step clamped to [0, 1]:

    - brightness :math:`x (1 + b)`;
    - contrast :math:`m + (1 + c)(x - m)`, :math:`m` the image's mean BT.601 luma
      :math:`0.299 R + 0.587 G + 0.114 B` (one scalar per image);
    - temperature: for :math:`t > 0`, :math:`R (1 + t)` and :math:`G (1 + 0.4 t)`; for :math:`t < 0`, :math:`B (1 - t)`;
    - gamma :math:`x^\gamma`;
    - saturation in HLS, closed form :math:`x' = L + (x - L) \min(1 + s, 1 / S)` with :math:`L = (\max + \min) / 2`
      and :math:`S` the HLS saturation (greys, :math:`S = 0`, are unchanged).

    Kiln differs: the steps run in float end to end, where the reference truncates to 8 bits between its
    Pillow/OpenCV steps (about 29 % of values come out one level low even at neutral settings).

    Example:
        >>> import torch
        >>> correct_color(torch.rand(2, 3, 4, 5), 10.0, 0.0, 20.0, -30.0, 1.2).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    x = upcast(image)
    temperature = per_sample(temperature, x, "temperature") / 100
    brightness = per_sample(brightness, x, "brightness") / 100
    contrast = per_sample(contrast, x, "contrast") / 100
    saturation = per_sample(saturation, x, "saturation") / 100
    gamma = per_sample(gamma, x, "gamma")

    x = (x * (1 + brightness)).clamp(0.0, 1.0)
    # x + c (x - m) is m + (1 + c)(x - m) rearranged so that c = 0 gives x exactly.
    x = (x + contrast * (x - sample_mean(luma(x, REC601)))).clamp(0.0, 1.0)
    warm, cool = temperature.clamp_min(0), (-temperature).clamp_min(0)
    x = (x * torch.cat([1 + warm, 1 + 0.4 * warm, 1 + cool], 1)).clamp(0.0, 1.0)
    # exp(gamma log x), not torch.pow: pow's vectorised and scalar CPU paths round differently, so a pixel's
    # bits would depend on where it falls in the batch.
    x = torch.where(x > 0, torch.exp(gamma * torch.log(x)), 0.0).clamp(0.0, 1.0)
    return _saturate(x, saturation).clamp(0.0, 1.0).to(image.dtype)


def _saturate(x: Tensor, saturation: Tensor) -> Tensor:
    """Scale HLS saturation by ``1 + saturation`` (clamped at full) in closed form."""
    high, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    lightness = (high + low) * 0.5
    chroma = high - low
    room = torch.where(lightness <= 0.5, high + low, 2 - high - low)
    inverse_s = torch.where(chroma > 0, room / chroma, torch.inf)
    # Written as x + (x - L)(k - 1) so that k = 1 (saturation 0, or S = 1) gives x exactly.
    return x + (x - lightness) * (torch.minimum(1 + saturation, inverse_s) - 1)
