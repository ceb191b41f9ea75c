"""Vignette of fal's post-processing: darken linearly towards the corners."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import check_image, per_sample, upcast

__all__ = ["apply_vignette"]


def apply_vignette(image: Tensor, strength: float | Tensor) -> Tensor:
    r"""Darken an image linearly with the distance from its centre.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        strength: in [0, 10] (fal's range), a float or :math:`(B,)`; 0 returns the input, 1 and above blacken the
            corner pixels.

    Returns:
        The vignetted image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    With :math:`u = \mathrm{linspace}(-1, 1, W)`, :math:`v = \mathrm{linspace}(-1, 1, H)` and
    :math:`\rho = \sqrt{u^2 + v^2} / \sqrt 2` (0 at the centre, 1 at the corner pixels), the output is
    :math:`\mathrm{clamp}(x \cdot (1 - \rho \cdot \mathrm{clamp}(\mathrm{strength}, 0, 1)), 0, 1)`, the
    reference's formula: the centre is kept and the corners are scaled by :math:`1 - \mathrm{strength}`. As in the
    reference, the strength is capped at 1 (and floored at 0), so every strength from 1 to fal's 10 gives the same
    image, black only at the corner pixels.

    Kiln differs: the reference builds its :math:`W \times H` grid with ``indexing="ij"`` and fails on any
    non-square image; Kiln uses the :math:`H \times W` grid (identical on square images).

    Example:
        >>> import torch
        >>> apply_vignette(torch.rand(2, 3, 4, 5), 0.5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    x = upcast(image)
    strength = per_sample(strength, x, "strength").clamp(0.0, 1.0)
    height, width = x.shape[-2:]
    u = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    v = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    # halving inside the root keeps the corners at exactly 1: CUDA divides by a scalar as a product with its
    # reciprocal, and sqrt(2) * (1 / sqrt(2)) rounds to just below 1 in float32, leaving them not quite black
    rho = torch.sqrt((v[:, None] * v[:, None] + u[None, :] * u[None, :]) * 0.5)
    return (x * (1 - strength * rho).clamp(0.0, 1.0)).clamp(0.0, 1.0).to(image.dtype)
