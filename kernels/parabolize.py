"""Parabolize of fal's post-processing: a parabolic tone curve applied to every channel."""

from __future__ import annotations

from torch import Tensor

from kernels._utils import check_image, per_sample, upcast

__all__ = ["parabolize"]


def parabolize(
    image: Tensor, coeff: float | Tensor, vertex_x: float | Tensor, vertex_y: float | Tensor
) -> Tensor:
    r"""Map every channel value through the parabola :math:`\mathrm{coeff} (x - x_v)^2 + y_v`.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.
    Despite fal calling it a distortion this is a tone curve, not a warp: the vertex is in intensity units.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        coeff: curvature in [-10, 10], a float or :math:`(B,)`; 0 gives the constant ``vertex_y``.
        vertex_x: input value of the vertex in [0, 1], a float or :math:`(B,)`.
        vertex_y: output value of the vertex in [0, 1], a float or :math:`(B,)`.

    Returns:
        The remapped image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`\mathrm{clamp}(\mathrm{coeff} (x - x_v)^2 + y_v, 0, 1)` per channel. No parameter set is the
    identity.

    Example:
        >>> import torch
        >>> parabolize(torch.rand(2, 3, 4, 5), 1.0, 0.5, 0.5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    x = upcast(image)
    coeff = per_sample(coeff, x, "coeff")
    vertex_x = per_sample(vertex_x, x, "vertex_x")
    vertex_y = per_sample(vertex_y, x, "vertex_y")
    offset = x - vertex_x
    return (coeff * (offset * offset) + vertex_y).clamp(0.0, 1.0).to(image.dtype)
