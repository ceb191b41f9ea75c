"""Chromatic aberration of fal's post-processing: shift each colour channel by whole pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import check_choice, check_image, check_int

__all__ = ["DIRECTIONS", "shift_channels"]

DIRECTIONS = ("horizontal", "vertical")


def shift_channels(
    image: Tensor,
    red_shift: int,
    red_direction: str,
    green_shift: int,
    green_direction: str,
    blue_shift: int,
    blue_direction: str,
) -> Tensor:
    """Shift the red, green and blue channels independently by whole pixels.

    The input is an RGB image, float, values in [0, 1].

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        red_shift: pixels to move the red channel (fal allows -20 to 20); 0 leaves it in place.
        red_direction: one of ``DIRECTIONS``: ``"horizontal"`` (positive moves content right) or
            ``"vertical"`` (positive moves content up).
        green_shift: as ``red_shift``, for green.
        green_direction: as ``red_direction``, for green.
        blue_shift: as ``red_shift``, for blue.
        blue_direction: as ``red_direction``, for blue.

    Returns:
        The shifted image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Horizontal: :math:`out[y, x] = in[y, x - s]`; vertical: :math:`out[y, x] = in[y + s, x]`, with source indices
    clamped to the image.

    Kiln differs: pixels uncovered at an edge repeat the border pixel, where the reference rolls the channel
    around (``torch.roll``) and drags the opposite edge into view.

    Example:
        >>> import torch
        >>> shift_channels(torch.rand(2, 3, 4, 5), 2, "horizontal", 0, "horizontal", -1, "vertical").shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_int(red_shift, "red_shift")
    check_int(green_shift, "green_shift")
    check_int(blue_shift, "blue_shift")
    check_choice(red_direction, DIRECTIONS, "red_direction")
    check_choice(green_direction, DIRECTIONS, "green_direction")
    check_choice(blue_direction, DIRECTIONS, "blue_direction")
    moves = ((red_shift, red_direction), (green_shift, green_direction), (blue_shift, blue_direction))
    channels = [_shift(image[:, c : c + 1], shift, direction) for c, (shift, direction) in enumerate(moves)]
    return torch.cat(channels, 1).clamp(0.0, 1.0)


def _shift(plane: Tensor, shift: int, direction: str) -> Tensor:
    """Move a ``(B, 1, H, W)`` plane by ``shift`` pixels, repeating the border pixel."""
    dim, step = (-1, -shift) if direction == "horizontal" else (-2, shift)
    size = plane.shape[dim]
    source = (torch.arange(size, device=plane.device) + step).clamp(0, size - 1)
    return plane.index_select(dim, source)
