"""Film grain of fal's post-processing: seeded noise added to the image, with Kiln's style presets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels._utils import (
    REC709,
    check_choice,
    check_image,
    gaussian_taps,
    luma,
    per_sample,
    sample_mean,
    separable_filter,
    upcast,
)

__all__ = ["GRAIN_STYLES", "add_film_grain"]


@dataclass(frozen=True)
class _GrainStyle:
    """A grain preset; its tone changes (gains, desaturate, contrast) scale with intensity up to `_FULL_LOOK`."""

    blur: float = 0.0  # pixel sigma of the gaussian that clumps the grain; 0 keeps it per-pixel
    color: float = 0.0  # share of the grain's variance drawn independently per channel
    amplitude: tuple[float, float, float] = (1.0, 0.0, 0.0)  # grain weight a0 + a1 Y + a2 Y^2 of the luma Y
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast applied after the grain
    desaturate: float = 0.0  # blend towards the luma before the grain
    contrast: float = 1.0  # contrast around 0.5 before the grain


_MIDTONES = (0.5, 2.0, -2.0)  # 0.5 + 2 Y (1 - Y): 1 at mid grey, 0.5 at black and white

_STYLES = {
    "modern": _GrainStyle(),
    "analog": _GrainStyle(blur=1.0, color=0.3, amplitude=_MIDTONES),
    "kodak": _GrainStyle(blur=0.7, color=0.15, amplitude=_MIDTONES, gains=(1.03, 1.0, 0.97)),
    "fuji": _GrainStyle(blur=0.6, color=0.15, amplitude=_MIDTONES, gains=(0.98, 1.02, 1.02)),
    "cinematic": _GrainStyle(blur=0.8, amplitude=(1.25, -0.75, 0.0)),
    "newspaper": _GrainStyle(blur=1.5, desaturate=1.0, contrast=1.3),
}
GRAIN_STYLES = tuple(_STYLES)

# fal's default intensity: a style's tone changes are complete from here and fade out linearly below it.
_FULL_LOOK = 0.4
_OCTAVES = 4
# Each pixel's 32-bit draw holds its 16 gradient choices, 2 bits each: octave o, corner c at bit 2 (4 o + c).
_CORNERS = 4


def add_film_grain(
    image: Tensor,
    intensity: float | Tensor,
    scale: float | Tensor,
    style: str,
    seeds: Sequence[int],
) -> Tensor:
    r"""Add seeded film grain to an image.

    The input is an RGB image, float, values in [0, 1], gamma-encoded sRGB (the grain is added to the encoded
    values); float16/bfloat16 are computed in float32.

    Args:
        image: image of shape :math:`(B, 3, H, W)`.
        intensity: grain amplitude in [0, 1], a float or :math:`(B,)`; 0 returns the input.
        scale: lattice cells across the width and the height in [1, 100], a float or :math:`(B,)`; it modulates
            the grain's amplitude periodically rather than its size.
        style: one of ``GRAIN_STYLES``.
        seeds: one int per sample; the same seed gives the same grain on every device and in every batch.

    Returns:
        The grainy image, :math:`(B, 3, H, W)`, same dtype, in [0, 1].

    Base noise (the reference's construction): for octaves :math:`o = 0..3` with :math:`s = \mathrm{scale}\,2^o`,
    column :math:`i` and row :math:`j` sit at lattice coordinates :math:`(s\,i / W, s\,j / H)` with fractional
    parts :math:`f_x, f_y` and fades :math:`u = f_x^2 (3 - 2 f_x)`, :math:`v = f_y^2 (3 - 2 f_y)`; at every pixel
    each corner :math:`(a, b) \in \{0, 1\}^2` draws a gradient :math:`g` among :math:`(\pm 1, \pm 1)` and
    contributes :math:`n_{ab} = g \cdot (f_x - a, f_y - b)`; the octave's value is the bilinear blend of the four
    by :math:`u, v`. The octaves are summed with weights :math:`0.5^o`, divided by 0.9375 and min-max normalised
    per image to [-1, 1]. The draws come from ``torch.Generator("cpu").manual_seed(seed)``, one 32-bit integer per
    pixel holding its 16 two-bit choices, moved to the image's device afterwards: a CUDA generator would give
    different grain on each device. The reference draws from numpy's unseeded global generator.

    Styles are Kiln's own presets (fal's are unpublished). With :math:`Y` the Rec.709 luma, :math:`\ell =
    \min(\mathrm{intensity} / 0.4, 1)` and the row of the style table:

    1. tone: blend towards :math:`Y` by :math:`\ell \cdot` desaturate, then contrast
       :math:`x + \ell (\mathrm{contrast} - 1)(x - 0.5)`, clamped;
    2. grain: the base noise, blurred by a gaussian of the style's pixel sigma and rescaled about its mean to
       its former mean and standard deviation; colour styles mix :math:`\sqrt{1 - c}` of it (same on R, G, B)
       with :math:`\sqrt c` of independent base noise per channel;
    3. add :math:`\mathrm{intensity} \cdot (a_0 + a_1 Y + a_2 Y^2) \cdot \mathrm{grain}`, :math:`Y` taken after step 1;
    4. cast: multiply the channels by :math:`1 + \ell (\mathrm{gain} - 1)`, clamp to [0, 1].

    ``modern`` is the reference's grain exactly: monochrome, per pixel, uniform amplitude.

    Example:
        >>> import torch
        >>> add_film_grain(torch.rand(2, 3, 4, 5), 0.4, 10.0, "modern", [1, 2]).shape
        torch.Size([2, 3, 4, 5])
    """
    check_image(image)
    check_choice(style, GRAIN_STYLES, "style")
    if len(seeds) != image.shape[0] or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"`seeds` must hold one int per sample ({image.shape[0]}), got {seeds!r}")
    x = upcast(image)
    intensity = per_sample(intensity, x, "intensity")
    scale = per_sample(scale, x, "scale")
    preset = _STYLES[style]
    look = (intensity / _FULL_LOOK).clamp(0.0, 1.0)

    fields = 4 if preset.color > 0 else 1
    words = _draw_gradient_words(seeds, fields, x.shape[-2], x.shape[-1], x.device)
    noise = _base_noise(words, scale)
    if preset.blur > 0:
        noise = _clump(noise, preset.blur)
    grain = noise
    if fields > 1:
        grain = noise[:, :1] * math.sqrt(1 - preset.color) + noise[:, 1:] * math.sqrt(preset.color)

    toned = x + look * preset.desaturate * (luma(x, REC709) - x)
    toned = (toned + look * (preset.contrast - 1) * (toned - 0.5)).clamp(0.0, 1.0)
    a0, a1, a2 = preset.amplitude
    y = luma(toned, REC709)
    out = toned + intensity * (a0 + y * (a1 + y * a2)) * grain
    gains = torch.cat([1 + look * (gain - 1) for gain in preset.gains], 1)
    return (out * gains).clamp(0.0, 1.0).to(image.dtype)


def _draw_gradient_words(
    seeds: Sequence[int], fields: int, height: int, width: int, device: torch.device
) -> Tensor:
    """Draw ``(B, fields, H, W)`` int32 words on the CPU, one generator per seed, and move them to ``device``."""
    words = []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(seed)
        words.append(torch.randint(-(2**31), 2**31, (fields, height, width), generator=generator, dtype=torch.int32))
    return torch.stack(words).to(device)


def _base_noise(words: Tensor, scale: Tensor) -> Tensor:
    """The reference's four-octave noise from packed gradient choices, ``(B, F, H, W)`` normalised to [-1, 1]."""
    height, width = words.shape[-2:]
    cols = torch.arange(width, device=words.device, dtype=scale.dtype) / width
    rows = (torch.arange(height, device=words.device, dtype=scale.dtype) / height).view(-1, 1)
    total = torch.zeros(words.shape, device=words.device, dtype=scale.dtype)
    for octave in range(_OCTAVES):
        cells = scale * 2**octave
        fx, fy = _fraction(cols * cells), _fraction(rows * cells)
        u, v = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        corner = []
        for index in range(_CORNERS):
            shift = 2 * (_CORNERS * octave + index)
            gx = 1 - 2 * ((words >> shift) & 1).to(scale.dtype)
            gy = 1 - 2 * ((words >> (shift + 1)) & 1).to(scale.dtype)
            # Corner order n00, n01, n10, n11: the second index steps in y.
            corner.append(gx * (fx - (index >> 1)) + gy * (fy - (index & 1)))
        near = corner[0] + u * (corner[2] - corner[0])
        far = corner[1] + u * (corner[3] - corner[1])
        total = total + (near + v * (far - near)) * 0.5**octave
    total = total / (1 - 0.5**_OCTAVES)
    low, high = total.amin((-2, -1), keepdim=True), total.amax((-2, -1), keepdim=True)
    spread = high - low
    # A constant field (a 1x1 image) has no spread; it adds no grain instead of dividing by zero.
    return torch.where(spread > 0, 2 * ((total - low) / spread) - 1, 0.0)


def _fraction(values: Tensor) -> Tensor:
    return values - torch.floor(values)


def _clump(noise: Tensor, sigma: float) -> Tensor:
    """Blur each noise field by a gaussian of pixel ``sigma``, then restore its mean and standard deviation."""
    taps = gaussian_taps(noise.new_full((1,), sigma), math.ceil(3 * sigma))
    blurred = separable_filter(noise, taps)
    mean, std = _moments(noise)
    blurred_mean, blurred_std = _moments(blurred)
    # Blurring keeps the mean but shrinks the spread, so only the deviation from the mean is rescaled.
    gain = torch.where(blurred_std > 0, std / blurred_std, 0.0)
    return mean + (blurred - blurred_mean) * gain


def _moments(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each ``(H, W)`` field of ``(B, F, H, W)``, each ``(B, F, 1, 1)``."""
    batch, fields = values.shape[:2]
    flat = values.reshape(batch * fields, 1, *values.shape[-2:])
    mean = sample_mean(flat)
    centred = flat - mean
    std = sample_mean(centred * centred).sqrt()
    return mean.view(batch, fields, 1, 1), std.view(batch, fields, 1, 1)
