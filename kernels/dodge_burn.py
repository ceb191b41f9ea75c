"""Dodge and burn of fal's post-processing: brighten or darken, masked by the image itself."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from kernels._utils import REC709, check_choice, check_image, luma, per_sample, upcast

__all__ = ["DODGE_BURN_MODES", "dodge_burn"]


def _divide(base: Tensor, mask: Tensor, intensity: Tensor) -> Tensor:
    """How far ``base / (1 - intensity * mask)`` lies above ``base``: 0 at intensity 0, +inf where ``i * m = 1``."""
    strength = intensity * mask
    return strength * base / (1 - strength)


def _luma_mask(x: Tensor) -> Tensor:
    # Rounding can push the luma of white a hair above 1, which would flip the sign of 1 - i * m.
    return luma(x, REC709).clamp(0.0, 1.0)


def _dodge(x: Tensor, intensity: Tensor) -> Tensor:
    return x + _divide(x, _luma_mask(x), intensity)


def _burn(x: Tensor, intensity: Tensor) -> Tensor:
    return x - _divide(1 - x, 1 - _luma_mask(x), intensity)


def _color_dodge(x: Tensor, intensity: Tensor) -> Tensor:
    return x + _divide(x, x, intensity)


def _color_burn(x: Tensor, intensity: Tensor) -> Tensor:
    return x - _divide(1 - x, 1 - x, intensity)


def _linear_dodge(x: Tensor, intensity: Tensor) -> Tensor:
    return x + intensity * x


def _linear_burn(x: Tensor, intensity: Tensor) -> Tensor:
    return x - intensity * x


# Each mode is a sequence of steps, each clamped to [0, 1] before the next.
_MODES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], ...]] = {
    "dodge": (_dodge,),
    "burn": (_burn,),
    "dodge_and_burn": (_dodge, _burn),
    "burn_and_dodge": (_burn, _dodge),
    "color_dodge": (_color_dodge,),
    "color_burn": (_color_burn,),
    "linear_dodge": (_linear_dodge,),
    "linear_burn": (_linear_burn,),
}
DODGE_BURN_MODES = tuple(_MODES)


def dodge_burn(image: Tensor, intensity: float | Tensor, mode: str) -> Tensor:
    r"""Brighten (dodge) or darken (burn) an image, using the image itself as the mask.

    The input is an RGB image, float, values in [0, 1]; float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        intensity: in [0, 1], a float or :math:`(B,)`, clamped to that range; 0 returns the input.
        mode: one of ``DODGE_BURN_MODES``.

    Returns:
        The result, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    With :math:`i` the intensity, :math:`Y = 0.2126 R + 0.7152 G + 0.0722 B` the pixel's luma (one mask for all
    three channels) and :math:`D(b, m) = b / (1 - i m)` the reference's dodge of base :math:`b` by mask :math:`m`,
    each channel :math:`x` becomes:

    - ``dodge``: :math:`D(x, Y)`; ``burn``: :math:`1 - D(1 - x, 1 - Y)`, the dodge of the inverted image;
    - ``color_dodge``: :math:`D(x, x)`, the classic colour-dodge blend with the layer :math:`i x`;
      ``color_burn``: :math:`1 - D(1 - x, 1 - x)`, the classic colour-burn blend with the layer
      :math:`1 - i (1 - x)`;
    - ``linear_dodge``: :math:`x + i x`; ``linear_burn``: :math:`x - i x` (the reference's formulas);
    - ``dodge_and_burn``: burn of the dodged image; ``burn_and_dodge``: dodge of the burnt image.

    Every step is clamped to [0, 1]. The dodge family never darkens and the burn family never brightens.

    Kiln differs, since fal has no mask input and the reference needs one: the masks are the image itself,
    per channel for the ``color_*`` and ``linear_*`` modes and by luma for ``dodge``/``burn``, which keeps the
    two pairs distinct. Burns are the tone dual of the matching dodge, because the reference's
    :math:`1 - (1 - x) / (m i)` explodes at small intensity and is not the identity at 0. Dodges drop the
    reference's +1e-7 guard and are computed as :math:`b + i m b / (1 - i m)`, so intensity 0 is exactly the
    identity; where :math:`i m = 1` the value goes to infinity and the clamp takes it to 1 (0 for burns).

    Example:
        >>> import torch
        >>> dodge_burn(torch.rand(2, 3, 4, 5), 0.5, "dodge").shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_choice(mode, DODGE_BURN_MODES, "mode")
    x = upcast(image)
    intensity = per_sample(intensity, x, "intensity").clamp(0.0, 1.0)
    for step in _MODES[mode]:
        x = step(x, intensity).clamp(0.0, 1.0)
    return x.to(image.dtype)
