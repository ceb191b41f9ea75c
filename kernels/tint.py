"""Colour tint of fal's post-processing: blend the image with a coloured greyscale version of itself."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import check_choice, check_image, luma, per_sample, upcast

__all__ = ["TINT_MODES", "tint"]

# Per-channel factors applied to the grey image, (R, G, B). peach repeats sepia and lavender repeats purple,
# as in the reference.
_TINTS: dict[str, tuple[float, float, float]] = {
    "sepia": (1.0, 0.8, 0.6),
    "red": (1.0, 0.6, 0.6),
    "green": (0.6, 1.0, 0.6),
    "blue": (0.6, 0.8, 1.0),
    "cyan": (0.6, 1.0, 1.0),
    "magenta": (1.0, 0.6, 1.0),
    "yellow": (1.0, 1.0, 0.6),
    "purple": (0.8, 0.6, 1.0),
    "orange": (1.0, 0.7, 0.3),
    "warm": (1.0, 0.9, 0.7),
    "cool": (0.7, 0.9, 1.0),
    "lime": (0.7, 1.0, 0.3),
    "navy": (0.3, 0.4, 0.7),
    "vintage": (0.9, 0.85, 0.7),
    "rose": (1.0, 0.8, 0.9),
    "teal": (0.3, 0.8, 0.8),
    "maroon": (0.7, 0.3, 0.5),
    "peach": (1.0, 0.8, 0.6),
    "lavender": (0.8, 0.6, 1.0),
    "olive": (0.6, 0.7, 0.4),
}
TINT_MODES = tuple(_TINTS)

# The reference's grey weights; they sum to 0.9999, slightly off BT.601.
_GREY = (0.2989, 0.5870, 0.1140)


def tint(image: Tensor, strength: float | Tensor, mode: str) -> Tensor:
    r"""Blend an image with its greyscale version coloured by a preset.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        strength: blend weight of the tinted image in [0, 1], a float or :math:`(B,)`; 0 returns the input.
        mode: one of ``TINT_MODES``.

    Returns:
        The tinted image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    With :math:`g = 0.2989 R + 0.5870 G + 0.1140 B` and the mode's factors :math:`F`, the output is
    :math:`\mathrm{strength} \cdot g F + (1 - \mathrm{strength}) \cdot x`.

    Example:
        >>> import torch
        >>> tint(torch.rand(2, 3, 4, 5), 0.8, "sepia").shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_choice(mode, TINT_MODES, "mode")
    x = upcast(image)
    strength = per_sample(strength, x, "strength")
    grey = luma(x, _GREY)
    tinted = torch.cat([grey * factor for factor in _TINTS[mode]], 1)
    return (strength * tinted + (1 - strength) * x).clamp(0.0, 1.0).to(image.dtype)
