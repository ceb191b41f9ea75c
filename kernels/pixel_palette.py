"""Pixel-art colour work: unique colours, Wu's quantiser, nearest-palette mapping and colour-count estimation.

Images are RGBA uint8, ``(B, 4, H, W)`` with values in [0, 255]; a pixel is opaque when its alpha is at least
128 and only opaque pixels have a colour that counts. Palettes are ``(K, 3)`` uint8 tensors. Histograms are
integer-exact (counts and sums below 2**53 in float64), so every result is deterministic on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._utils import check_int

__all__ = [
    "estimate_color_count",
    "map_to_palette",
    "unique_colors",
    "wu_palette",
]

# Wu's histogram has 32 levels per channel (colour >> 3), plus a zero row in front for the prefix sums.
_WU_BITS = 5
_WU_SIDE = (1 << _WU_BITS) + 1
# Distances are computed for this many distinct colours at a time, bounding memory at 16 MP inputs.
_MAP_CHUNK = 1 << 18


def _check_rgba(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 4 or image.dtype != torch.uint8:
        raise ValueError(f"`image` must be a uint8 (B, 4, H, W) tensor, got {image.dtype} {tuple(image.shape)}")


def _check_palette(palette: Tensor) -> None:
    if not isinstance(palette, Tensor) or palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] == 0:
        got = tuple(palette.shape) if isinstance(palette, Tensor) else type(palette).__name__
        raise ValueError(f"`palette` must be a non-empty (K, 3) tensor, got {got}")


def _packed(rgb: Tensor) -> Tensor:
    """``(..., 3, H, W)`` -> ``(..., H, W)`` int64 ``0xRRGGBB``."""
    rgb = rgb.long()
    return (rgb[..., 0, :, :] << 16) | (rgb[..., 1, :, :] << 8) | rgb[..., 2, :, :]


def unique_colors(image: Tensor) -> list[Tensor]:
    r"""The distinct colours of each sample's opaque pixels, sorted by ``0xRRGGBB``.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)`.

    Returns:
        One uint8 :math:`(K_b, 3)` tensor per sample (:math:`K_b = 0` when nothing is opaque).

    Example:
        >>> import torch
        >>> image = torch.zeros(1, 4, 1, 3, dtype=torch.uint8)
        >>> image[0, :, 0, 0] = torch.tensor([9, 8, 7, 255])
        >>> image[0, :, 0, 2] = torch.tensor([1, 2, 3, 255])
        >>> unique_colors(image)[0].tolist()
        [[1, 2, 3], [9, 8, 7]]
    """
    _check_rgba(image)
    keys = _packed(image[:, :3])
    opaque = image[:, 3] >= 128
    colours = []
    for sample_keys, sample_opaque in zip(keys, opaque):
        distinct = torch.unique(sample_keys[sample_opaque])
        colours.append(torch.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], 1).to(torch.uint8))
    return colours


def map_to_palette(image: Tensor, palette: Tensor) -> Tensor:
    r"""Replace every opaque pixel's colour by the nearest palette colour.

    Nearest is the smallest integer squared RGB distance; ties go to the earlier palette entry (the reference's
    rule, and `torch.argmin`'s). Distances are computed once per distinct colour, not per pixel.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha.
        palette: uint8 :math:`(K, 3)`, shared by the batch.

    Returns:
        RGBA uint8 :math:`(B, 4, H, W)`: opaque pixels recoloured with alpha 255, transparent ones
        ``(0, 0, 0, 0)``.

    Example:
        >>> import torch
        >>> image = torch.tensor([[[[10, 200]], [[10, 190]], [[10, 250]], [[255, 255]]]], dtype=torch.uint8)
        >>> map_to_palette(image, torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8))[0, :3, 0].tolist()
        [[0, 255], [0, 255], [0, 255]]
    """
    _check_rgba(image)
    _check_palette(palette)
    opaque = image[:, 3] >= 128
    keys = _packed(image[:, :3])
    distinct, inverse = torch.unique(keys, return_inverse=True)
    colours = torch.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], 1).int()
    entries = palette.to(image.device).int()
    nearest = torch.cat(
        [((chunk.unsqueeze(1) - entries.unsqueeze(0)) ** 2).sum(-1).argmin(1) for chunk in colours.split(_MAP_CHUNK)]
    )
    rgb = entries[nearest[inverse]].permute(0, 3, 1, 2).to(torch.uint8)
    alpha = (opaque * 255).to(torch.uint8).unsqueeze(1)
    return torch.cat([rgb, alpha], 1) * opaque.unsqueeze(1)


def _wu_moments(image: Tensor) -> Tensor:
    """Cumulative Wu moments ``(B, 5, 33, 33, 33)`` float64 on the CPU: weight, sum r, g, b, sum of squares."""
    batch = image.shape[0]
    rgb = image[:, :3].long()
    opaque = (image[:, 3] >= 128).flatten(1)
    side = _WU_SIDE
    bins = ((rgb >> (8 - _WU_BITS)) + 1).flatten(2)
    index = (bins[:, 0] * side + bins[:, 1]) * side + bins[:, 2]
    index = index + torch.arange(batch, device=image.device).unsqueeze(1) * side**3
    index = index[opaque]
    values = rgb.flatten(2).permute(0, 2, 1)[opaque].double()
    length = batch * side**3
    moments = [
        torch.bincount(index, minlength=length).double(),
        *(torch.bincount(index, weights=values[:, c], minlength=length) for c in range(3)),
        torch.bincount(index, weights=(values * values).sum(-1), minlength=length),
    ]
    cube = torch.stack(moments, 1).view(batch, side, side, side, 5).permute(0, 4, 1, 2, 3)
    return cube.cumsum(2).cumsum(3).cumsum(4).cpu()


def wu_palette(image: Tensor, max_colors: int) -> list[Tensor]:
    r"""Xiaolin Wu's colour quantiser: at most ``max_colors`` colours for each sample's opaque pixels.

    The histogram (32 levels per channel, five moments per bin) is built on the image's device; the box cutting
    runs on the host over its 33^3 prefix sums. Each step splits the box with the largest squared error at the
    cut that most reduces it; each palette colour is its box's mean, rounded down. Colours are in sRGB bytes,
    unweighted, as in the reference.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha.
        max_colors: largest palette size, at least 1.

    Returns:
        One uint8 :math:`(K_b, 3)` palette per sample, :math:`K_b \le` ``max_colors``, without duplicates (the
        reference can repeat near-black entries when a cut fails); empty when nothing is opaque.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
        >>> image[0, :3, 0] = 0
        >>> wu_palette(image, 2)[0].tolist()
        [[0, 0, 0], [255, 255, 255]]
    """
    _check_rgba(image)
    check_int(max_colors, "max_colors", 1)
    return [_cut_boxes(moments, max_colors) for moments in _wu_moments(image)]


def _box_sum(moments: Tensor, box: tuple[int, ...]) -> Tensor:
    """Sum of each moment over the half-open box ``(r0, r1] x (g0, g1] x (b0, b1]``, shape (5,)."""
    r0, r1, g0, g1, b0, b1 = box
    m = moments
    return (
        m[:, r1, g1, b1]
        - m[:, r1, g1, b0]
        - m[:, r1, g0, b1]
        + m[:, r1, g0, b0]
        - m[:, r0, g1, b1]
        + m[:, r0, g1, b0]
        + m[:, r0, g0, b1]
        - m[:, r0, g0, b0]
    )


def _partial_sums(moments: Tensor, box: tuple[int, ...], axis: int) -> Tensor:
    """Moments of the lower part ``(lo, i]`` of ``box`` along ``axis`` for every ``i`` in ``[lo, hi]``, (5, n)."""
    r0, r1, g0, g1, b0, b1 = box
    m = moments
    if axis == 0:
        plane = m[:, :, g1, b1] - m[:, :, g1, b0] - m[:, :, g0, b1] + m[:, :, g0, b0]
        lo, hi = r0, r1
    elif axis == 1:
        plane = m[:, r1, :, b1] - m[:, r1, :, b0] - m[:, r0, :, b1] + m[:, r0, :, b0]
        lo, hi = g0, g1
    else:
        plane = m[:, r1, g1, :] - m[:, r1, g0, :] - m[:, r0, g1, :] + m[:, r0, g0, :]
        lo, hi = b0, b1
    return plane[:, lo : hi + 1] - plane[:, lo : lo + 1]


def _variance(total: Tensor) -> float:
    weight, sums, squares = total[0], total[1:4], total[4]
    return float(squares - (sums * sums).sum() / weight) if weight > 0 else 0.0


def _best_cut(moments: Tensor, box: tuple[int, ...]) -> tuple[float, int, int] | None:
    """(score, axis, cut) maximising the between-part sum of squares, or None if the box cannot be split."""
    whole = _box_sum(moments, box)
    best = None
    for axis in range(3):
        lower = _partial_sums(moments, box, axis)[:, 1:-1]
        upper = whole.unsqueeze(1) - lower
        valid = (lower[0] > 0) & (upper[0] > 0)
        if not bool(valid.any()):
            continue
        score = (lower[1:4] ** 2).sum(0) / lower[0].clamp_min(1) + (upper[1:4] ** 2).sum(0) / upper[0].clamp_min(1)
        score = torch.where(valid, score, -1.0)
        at = int(score.argmax())
        if best is None or float(score[at]) > best[0]:
            best = (float(score[at]), axis, box[2 * axis] + 1 + at)
    return best


def _next_split(moments: Tensor, boxes: list, variances: list[float]) -> tuple[int, tuple[float, int, int]] | None:
    """The box to split next (largest error first, ties to the earliest) and its cut; None when none can be."""
    for index in sorted(range(len(boxes)), key=lambda i: -variances[i]):
        if variances[index] <= 0:
            return None
        cut = _best_cut(moments, boxes[index])
        if cut is not None:
            return index, cut
        variances[index] = 0.0  # several colours in one histogram bin: nothing to cut
    return None


def _cut_boxes(moments: Tensor, max_colors: int) -> Tensor:
    full = (0, _WU_SIDE - 1, 0, _WU_SIDE - 1, 0, _WU_SIDE - 1)
    if float(_box_sum(moments, full)[0]) == 0:
        return torch.zeros(0, 3, dtype=torch.uint8)
    boxes = [full]
    variances = [_variance(_box_sum(moments, full))]
    while len(boxes) < max_colors:
        split = _next_split(moments, boxes, variances)
        if split is None:
            break
        index, (_, axis, position) = split
        lower, upper = list(boxes[index]), list(boxes[index])
        lower[2 * axis + 1] = position
        upper[2 * axis] = position
        boxes[index] = tuple(lower)
        boxes.append(tuple(upper))
        variances[index] = _variance(_box_sum(moments, boxes[index]))
        variances.append(_variance(_box_sum(moments, boxes[-1])))
    totals = torch.stack([_box_sum(moments, box) for box in boxes])
    means = torch.div(totals[:, 1:4], totals[:, :1], rounding_mode="floor")
    return torch.unique(means.to(torch.uint8), dim=0)


def estimate_color_count(image: Tensor, max_count: int = 32) -> list[int]:
    r"""How many colours an image looks like it has, after the reference's heuristic.

    The image is area-resized to 64 px wide, median-filtered (5x5) and gaussian-blurred (5x5, sigma 1; borders
    replicated, where the reference mirrors the blur's); pixels
    with alpha >= 200 are bucketed into 6 levels per channel (:math:`\lfloor c / 48 \rfloor`), and the count is
    the number of buckets holding at least :math:`\max(3, \lfloor 0.015 N \rfloor)` of the :math:`N` kept
    pixels (recounted at :math:`\lfloor 0.02 N \rfloor` if that exceeds ``max_count``), clamped to
    ``[2, max_count]``.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)`.
        max_count: upper bound of the estimate.

    Returns:
        One count per sample.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 64, 64), 255, dtype=torch.uint8)
        >>> image[0, :3, :, :32] = 0  # the blur adds the two blends of the boundary
        >>> estimate_color_count(image)
        [4]
    """
    _check_rgba(image)
    check_int(max_count, "max_count", 2)
    height, width = image.shape[-2:]
    size = (max(1, int(64 * height / width)), 64)
    small = (
        F.interpolate(image.float(), size=size, mode="area")
        if width >= 64
        else F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
    )
    padded = F.pad(small, (2, 2, 2, 2), mode="replicate")
    median = padded.unfold(2, 5, 1).unfold(3, 5, 1).flatten(-2).median(-1).values
    taps = torch.exp(-0.5 * torch.arange(-2.0, 3.0, device=image.device) ** 2)
    taps = taps / taps.sum()
    blurred = F.pad(median, (2, 2, 2, 2), mode="replicate")
    blurred = F.conv2d(blurred.flatten(0, 1).unsqueeze(1), (taps.view(-1, 1) * taps.view(1, -1)).view(1, 1, 5, 5))
    blurred = torch.round(blurred.view_as(median))
    counts = []
    for sample in blurred:
        kept = sample[:3, sample[3] >= 200].long() // 48
        total = kept.shape[1]
        buckets = torch.bincount((kept[0] * 6 + kept[1]) * 6 + kept[2], minlength=216)
        found = int((buckets >= max(3, int(0.015 * total))).sum())
        if found > max_count:
            found = int((buckets >= max(3, int(0.015 * total), int(0.02 * total))).sum())
        counts.append(min(max(found, 2), max_count))
    return counts
