"""Glow of fal's post-processing: add a wide blur of the image to itself."""

from __future__ import annotations

from torch import Tensor

from kernels._utils import check_image, check_int, gaussian_taps, per_sample, separable_filter, upcast

__all__ = ["glow"]


def glow(image: Tensor, intensity: float | Tensor, radius: int) -> Tensor:
    r"""Brighten an image by adding a blurred copy of it.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        intensity: weight of the blurred copy in [0, 5], a float or :math:`(B,)`; 0 returns the input.
        radius: half width of the blur in pixels (fal allows 1 to 50); the kernel has :math:`2r + 1` taps.

    Returns:
        The glowing image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Formula: :math:`\mathrm{clamp}(x + \mathrm{intensity} \cdot G * x, 0, 1)` with :math:`G` the gaussian of pixel
    sigma :math:`r^2 / 3` truncated at :math:`\pm r` and normalised (the reference's kernel, sigma :math:`r / 3`
    on normalised offsets), nearly a box for large radii.

    Kiln differs: borders are mirrored (reflect-101) where the reference zero-pads, which dims the glow along
    the edges.

    Example:
        >>> import torch
        >>> glow(torch.rand(2, 3, 4, 5), 1.0, 5).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(radius, "radius", 0)
    x = upcast(image)
    intensity = per_sample(intensity, x, "intensity")
    taps = gaussian_taps(x.new_full((1,), radius * radius / 3), radius)
    return (x + intensity * separable_filter(x, taps)).clamp(0.0, 1.0).to(image.dtype)
