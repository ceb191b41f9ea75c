"""Desaturate of fal's post-processing: blend the image towards a grey version of itself."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor

from kernels._utils import REC601, REC709, check_choice, check_image, luma, per_sample, upcast

__all__ = ["DESATURATE_METHODS", "desaturate"]


def _lightness(x: Tensor) -> Tensor:
    return (x.amax(1, keepdim=True) + x.amin(1, keepdim=True)) * 0.5


def _average(x: Tensor) -> Tensor:
    return (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) / 3


# Grey of a (B, 3, H, W) image as (B, 1, H, W), computed on the gamma-encoded values.
_GREY: dict[str, Callable[[Tensor], Tensor]] = {
    "luminance (Rec.709)": partial(luma, weights=REC709),
    "luminance (Rec.601)": partial(luma, weights=REC601),
    "average": _average,
    "lightness": _lightness,
}
DESATURATE_METHODS = tuple(_GREY)


def desaturate(image: Tensor, factor: float | Tensor, method: str) -> Tensor:
    r"""Blend an image towards its grey version.

    The input is an RGB image, float, values in [0, 1], gamma-encoded sRGB (the grey is taken on the encoded
    values, not linear light); float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        factor: in [0, 1], a float or :math:`(B,)`; 0 returns the input, 1 the grey image.
        method: one of ``DESATURATE_METHODS``: ``"luminance (Rec.709)"`` :math:`0.2126 R + 0.7152 G + 0.0722 B`,
            ``"luminance (Rec.601)"`` :math:`0.299 R + 0.587 G + 0.114 B`, ``"average"`` :math:`(R + G + B) / 3`
            or ``"lightness"`` :math:`(\max + \min) / 2`.

    Returns:
        The desaturated image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`(1 - f) \cdot x + f \cdot \mathrm{grey}`.

    Example:
        >>> import torch
        >>> desaturate(torch.rand(2, 3, 4, 5), 1.0, "luminance (Rec.709)").shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_choice(method, DESATURATE_METHODS, "method")
    x = upcast(image)
    factor = per_sample(factor, x, "factor")
    return ((1 - factor) * x + factor * _GREY[method](x)).clamp(0.0, 1.0).to(image.dtype)
