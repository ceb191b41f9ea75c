r"""Pixel-art colour work: unique colours, Wu's quantiser, nearest-palette mapping, colour-count estimation, and
the merging of the near-duplicate shades that JPEG, blur and resampling make of each real colour.

Images are RGBA uint8, ``(B, 4, H, W)`` with values in [0, 255]; a pixel is opaque when its alpha is at least
128 and only opaque pixels have a colour that counts. Palettes are ``(K, 3)`` uint8 tensors. Histograms are
integer-exact (counts and sums below 2**53 in float64), so every result is deterministic on any device.
Perceived colour differences are :math:`\Delta E_{94}` in CIELAB (`srgb_to_lab`, `colour_distance`); the
clustering of `merge_similar_colors` runs on the host over the few thousand distinct cell colours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._utils import check_int, packed_rgb, unpacked_rgb
from kernels.jpeg_chroma import srgb_to_ycbcr, ycbcr_to_srgb

__all__ = [
    "cell_spreads",
    "colour_counts",
    "colour_distance",
    "edge_cells",
    "estimate_color_count",
    "map_to_palette",
    "merge_similar_colors",
    "srgb_to_lab",
    "unique_colors",
    "wu_palette",
]

# Wu's histogram has 32 levels per channel (colour >> 3), plus a zero row in front for the prefix sums.
_WU_BITS = 5
_WU_SIDE = (1 << _WU_BITS) + 1
# Distances are computed for this many distinct colours at a time, bounding memory at 16 MP inputs.
_MAP_CHUNK = 1 << 18
# `merge_similar_colors`: clusters are seeded from at most this many of the heaviest colours (the rest join the
# nearest seed), and at most this many distinct colours are clustered (more are first binned, coarser and
# coarser, by dropping low bits).
_MAX_SEEDS = 256
_MAX_DISTINCT = 1 << 13
# `_seed_clusters` measures this many candidate seeds at a time.
_SEED_CANDIDATES = 32
# A cluster near one this many times heavier is its tail (the cells that JPEG, blur or resampling moved).
_TAIL_RATIO = 4.0
# `colour_distance` works on this many colours of its first set at a time (memory: about chunk x M x 80 bytes).
_DISTANCE_CHUNK = 2048
# `_merge_unimodal` measures the colours of pairs of clusters in batches of at most this many colours (or one
# pair), so that its memory stays near 10 MB whatever the number of colours.
_POINTS_AT_ONCE = 1 << 16
# The measured merge radius: this many times the colours' typical distance to the nearest heavy cluster (one
# holding this share of the weight), at most this far (`colour_distance` units).
_MERGE_PER_SPREAD = 2.5
_HEAVY_SHARE = 0.01
_MOST_MERGE_DISTANCE = 8.0
# `cell_spreads` measures at most this many interior pixels a side of each cell.
_SPREAD_SAMPLES = 4
# `cell_spreads` leaves out this many pixels at each side of a cell of 5 px or more (fewer in smaller cells): a
# resampled or blurred edge spreads a pixel either way, and the lattice it is cut on may be off by half of one.
# Measured from 1 px in, the cells of a real colour strayed by their neighbours' bleed, not by noise, and two
# shades of a ramp merged: over the 1800 real-art cases of seeds 0-2, 2 px put the colour count within 2 of the
# truth's in 1549 against 1527, with as many cells right.
_SPREAD_MARGIN = 2
# `_merge_unimodal`: two clusters are one colour while the colours midway between them weigh at least this many
# times those around the lesser centre: the two halves of one gaussian cloud leave about 1.4 and a cloud's tail
# more, while a ramp of real shades a little apart (textures) leaves about 1 and two separate colours less.
_VALLEY = 1.25
# `_merge_insignificant`: two cluster colours differ when they are this many standard errors apart (about the
# 97th percentile of the length of a 3-D standard normal).
_SIGNIFICANT = 3.0


def _check_rgba(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 4 or image.dtype != torch.uint8:
        raise ValueError(f"`image` must be a uint8 (B, 4, H, W) tensor, got {image.dtype} {tuple(image.shape)}")


def _check_palette(palette: Tensor) -> None:
    if not isinstance(palette, Tensor) or palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] == 0:
        got = tuple(palette.shape) if isinstance(palette, Tensor) else type(palette).__name__
        raise ValueError(f"`palette` must be a non-empty (K, 3) tensor, got {got}")


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
    keys = packed_rgb(image[:, :3])
    opaque = image[:, 3] >= 128
    colours = []
    for sample_keys, sample_opaque in zip(keys, opaque):
        distinct = torch.unique(sample_keys[sample_opaque])
        colours.append(unpacked_rgb(distinct).to(torch.uint8))
    return colours


def colour_counts(colours: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The distinct colours among integer colours :math:`(3, N)`, sorted by ``0xRRGGBB``.

    Returns:
        ``(distinct, index, counts)``: uint8 :math:`(K, 3)`, long :math:`(N,)` each colour's row of ``distinct``,
        and long :math:`(K,)` how many of the colours each row stands for.

    Example:
        >>> import torch
        >>> distinct, index, counts = colour_counts(torch.tensor([[9, 1, 9], [8, 2, 8], [7, 3, 7]]))
        >>> distinct.tolist(), index.tolist(), counts.tolist()
        ([[1, 2, 3], [9, 8, 7]], [1, 0, 1], [1, 2])
    """
    keys, index, counts = torch.unique(packed_rgb(colours.unsqueeze(-1)), return_inverse=True, return_counts=True)
    return unpacked_rgb(keys.flatten()).to(torch.uint8), index.flatten(), counts.flatten()


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
    keys = packed_rgb(image[:, :3])
    distinct, inverse = torch.unique(keys, return_inverse=True)
    colours = unpacked_rgb(distinct).int()
    entries = palette.to(image.device).int()
    nearest = torch.cat([_nearest_entries(chunk, entries) for chunk in colours.split(_MAP_CHUNK)])
    rgb = entries[nearest[inverse]].permute(0, 3, 1, 2).to(torch.uint8)
    alpha = (opaque * 255).to(torch.uint8).unsqueeze(1)
    return torch.cat([rgb, alpha], 1) * opaque.unsqueeze(1)


def _nearest_entries(colours: Tensor, entries: Tensor) -> Tensor:
    """The index of the nearest of ``entries`` (int :math:`(K, 3)`) to each of ``colours`` (int :math:`(N, 3)`) in
    squared RGB distance, ties to the earlier entry."""
    # channel by channel (a reduction over a last dimension of 3 is slow on many colours), squared and summed in
    # place: integer `** 2` is not vectorised and took twice as long
    total = colours.new_zeros(colours.shape[0], entries.shape[0])
    for channel in range(3):
        step = colours[:, channel, None] - entries[:, channel]
        total += step.mul_(step)
    return total.argmin(1)


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
        return torch.zeros(0, 3, dtype=torch.uint8, device=moments.device)
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


def srgb_to_lab(rgb: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""sRGB colours to CIELAB (D65), where euclidean distance (:math:`\Delta E_{76}`) follows perceived difference.

    CIELAB's linear segment near black keeps the darkest shades close together, as the eye sees them; spaces
    built on a pure cube root (Oklab) put ``(3, 0, 0)`` as far from black as two clearly different mid greys,
    which would make JPEG noise in dark areas look like new colours.

    Args:
        rgb: :math:`(..., 3)` sRGB values in [0, 255], any real or integer dtype.
        dtype: the float dtype that integer colours are converted in; float colours keep theirs.

    Returns:
        :math:`(..., 3)` ``(L*, a*, b*)`` in ``dtype`` (or the input's float dtype); L* is 0 for black and 100
        for white, and a just noticeable difference is about 2.3.

    Example:
        >>> import torch
        >>> srgb_to_lab(torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0]])).round().tolist()
        [[100.0, -0.0, 0.0], [0.0, 0.0, 0.0], [53.0, 80.0, 67.0]]
    """
    if rgb.is_floating_point():
        linear = _linear_srgb(rgb)
    else:  # 256 values a channel: looked up, not raised to the power 2.4 pixel by pixel
        table = _linear_srgb(torch.arange(256, dtype=dtype, device=rgb.device))
        # a flat index_select, several times faster than indexing with a strided (..., 3) view
        linear = table.index_select(0, rgb.flatten().int()).view(rgb.shape)
    to_xyz = linear.new_tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    # in place where a temporary is not read again, in the order of the formulas: the same bits with fewer
    # allocations (262 144 colours from bytes, float32: 18 -> 13 ms)
    xyz = (linear @ to_xyz.t()).div_(linear.new_tensor([0.95047, 1.0, 1.08883]))
    above = xyz > (6 / 29) ** 3
    cube = xyz.clamp_min(0).pow_(1 / 3)
    f = torch.where(above, cube, xyz.div_(3 * (6 / 29) ** 2).add_(4 / 29))
    x, y, z = f.unbind(-1)
    lab = torch.empty_like(f)
    torch.mul(y, 116, out=lab[..., 0]).sub_(16)
    torch.sub(x, y, out=lab[..., 1]).mul_(500)
    torch.sub(y, z, out=lab[..., 2]).mul_(200)
    return lab


def _linear_srgb(rgb: Tensor) -> Tensor:
    """sRGB values in [0, 255] (float) to linear light in [0, 1]."""
    x = rgb / 255
    above = x > 0.04045
    return torch.where(above, (x + 0.055).div_(1.055).pow_(2.4), x.div_(12.92))


def _delta_e94(first: Tensor, second: Tensor) -> Tensor:
    r""":math:`\Delta E_{94}` between CIELAB colours ``(..., 3)`` that broadcast together."""
    # channel by channel: reductions over a last dimension of 2 are slow on large inputs
    (lightness_first, a_first, b_first), (lightness_second, a_second, b_second) = first.unbind(-1), second.unbind(-1)
    chroma_first = (a_first * a_first + b_first * b_first).sqrt()
    chroma_second = (a_second * a_second + b_second * b_second).sqrt()
    chroma = chroma_first - chroma_second
    a, b = a_first - a_second, b_first - b_second
    # In place from here, in the order of sqrt(dL^2 + (dC / sC)^2 + dH^2 / sH^2): the same bits, and on the
    # all-pairs grids of `colour_distance` (thousands by hundreds) a third of the time of fresh temporaries.
    hue_squared = a.mul_(a).add_(b.mul_(b)).sub_(chroma * chroma).clamp_min_(0)
    mean_chroma = (chroma_first * chroma_second).sqrt_()
    weighed_chroma = chroma.div_(mean_chroma * 0.045 + 1)
    total = (lightness_first - lightness_second).square_().add_(weighed_chroma.mul_(weighed_chroma))
    hue_weight = mean_chroma.mul_(0.015).add_(1)
    return total.add_(hue_squared.div_(hue_weight.mul_(hue_weight))).sqrt_()


def colour_distance(first: Tensor, second: Tensor) -> Tensor:
    r"""Perceived difference :math:`\Delta E_{94}` (graphic arts) between every pair of two sets of CIELAB colours.

    Unlike plain euclidean CIELAB distance it weighs chroma and hue differences down as colours get more
    saturated, where the eye (and JPEG's chroma noise) spreads more: a saturated orange and the same orange 5 %
    less saturated are close, as are two blacks a few levels apart. Symmetric: the weights use the geometric mean
    of the two chromas.

    Args:
        first: :math:`(N, 3)` CIELAB (`srgb_to_lab`).
        second: :math:`(M, 3)` CIELAB.

    Returns:
        :math:`(N, M)` distances in the inputs' float dtype, about 1 for a just noticeable difference.

    Example:
        >>> import torch
        >>> lab = srgb_to_lab(torch.tensor([[255, 108, 0], [250, 110, 5], [0, 0, 0]]))
        >>> colour_distance(lab, lab).round(decimals=1).tolist()
        [[0.0, 0.9, 109.2], [0.9, 0.0, 106.7], [109.2, 106.7, 0.0]]
    """
    rows = [_delta_e94(chunk.unsqueeze(1), second.unsqueeze(0)) for chunk in first.split(_DISTANCE_CHUNK)]
    return torch.cat(rows) if rows else first.new_zeros(0, second.shape[0])


def cell_spreads(image: Tensor, cells: Tensor, scale: int) -> Tensor:
    r"""How far the pixels of each cell stray from its colour: the mean `colour_distance` between a cell's opaque
    interior pixels (less a border ring of 1 px at 4 px and of `_SPREAD_MARGIN` from 5 px; at most 4 x 4 of them,
    evenly spaced, as every cell is measured) and the cell's colour. A 3 px cell's interior is its centre pixel
    alone, which cannot stray from itself when it is the cell's colour: there it is the distance from the cell's
    colour to the per-channel median of the centre and the 4 pixels beside it, which bleed from one or two sides
    (2 of the 5) cannot move far. 0 on a clean upscale; JPEG, blur and resampling raise it, most in cells at an
    edge, whose colour is then the least certain.

    Args:
        image: RGBA uint8 :math:`(B, 4, H, W)` of whole ``scale`` x ``scale`` cells, binary alpha.
        cells: RGBA uint8 :math:`(B, 4, H / s, W / s)`, one colour per cell (e.g. its median).
        scale: cell size in pixels.

    Returns:
        float32 :math:`(B, H / s, W / s)`, in `colour_distance` units; 0 where the cell or all its interior
        pixels are transparent (at 3 px: any of the 5).

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 4, 4), 255, dtype=torch.uint8)
        >>> cell_spreads(image, image[..., ::2, ::2], 2).tolist()
        [[[0.0, 0.0], [0.0, 0.0]]]
    """
    _check_rgba(image)
    check_int(scale, "scale", 1)
    batch, _, rows, columns = cells.shape
    blocks = image[:, :, : rows * scale, : columns * scale].reshape(batch, 4, rows, scale, columns, scale)
    cell_lab = srgb_to_lab(cells[:, :3].permute(0, 2, 3, 1), torch.float32)
    if scale == 3:
        plus = blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, 4, rows, columns, 9)[..., [1, 3, 4, 5, 7]]
        opaque = (plus[:, 3] >= 128).all(-1) & (cells[:, 3] >= 128)
        median_lab = srgb_to_lab(plus[:, :3].median(-1).values.permute(0, 2, 3, 1), torch.float32)
        return _delta_e94(median_lab, cell_lab) * opaque
    margin = min(_SPREAD_MARGIN, (scale - 1) // 2)
    inner = slice(margin, scale - margin, -(-(scale - 2 * margin) // _SPREAD_SAMPLES))
    blocks = blocks[:, :, :, inner, :, inner]
    opaque = (blocks[:, 3] >= 128) & (cells[:, 3] >= 128)[:, :, None, :, None]
    pixel_lab = srgb_to_lab(blocks[:, :3].permute(0, 2, 3, 4, 5, 1), torch.float32)
    distance = _delta_e94(pixel_lab, cell_lab[:, :, None, :, None]) * opaque
    return distance.sum((2, 4)) / opaque.sum((2, 4)).clamp_min(1)


# Neighbours this many times `edge_cells`' distance apart bleed into each other whatever the channel (resampling, blur).
FAR_APART = 5.0


def edge_cells(cells: Tensor, distance: float) -> Tensor:
    r"""The opaque cells that would look more than ``distance`` (`colour_distance`) different with the chroma of an
    opaque 4-neighbour at their own luma (JPEG's YCbCr), where chroma subsampling bleeds one colour into the next,
    or that are `FAR_APART` times ``distance`` from one, where resampling and blur do. Neighbours that differ by a
    few steps of luma alone (a ramp of shades) are not edges: JPEG keeps luma at full resolution.

    Args:
        cells: RGBA uint8 :math:`(B, 4, h, w)`, one colour per cell (e.g. its median).
        distance: the largest difference that is still one colour, in `colour_distance` units.

    Returns:
        bool :math:`(B, h, w)`.

    Example:
        >>> import torch
        >>> cells = torch.full((1, 4, 1, 3), 255, dtype=torch.uint8)
        >>> cells[0, :3, 0, 0], cells[0, :3, 0, 1] = 120, 128  # two greys: a step of luma
        >>> cells[0, :2, 0, 2] = 0  # blue
        >>> edge_cells(cells, 2.0).tolist()
        [[[False, True, True]]]
    """
    _check_rgba(cells)
    ycc = srgb_to_ycbcr(cells[:, :3].float())
    lab = srgb_to_lab(cells[:, :3].permute(0, 2, 3, 1), torch.float32)
    opaque = cells[:, 3] >= 128
    edge = torch.zeros_like(opaque)
    for axis in (1, 2):  # down, across (of (B, h, w))
        size = opaque.shape[axis] - 1
        both = opaque.narrow(axis, 0, size) & opaque.narrow(axis, 1, size)
        far = both & (_delta_e94(lab.narrow(axis, 0, size), lab.narrow(axis, 1, size)) > FAR_APART * distance)
        for own, other in ((0, 1), (1, 0)):
            own_ycc, other_ycc = ycc.narrow(axis + 1, own, size), ycc.narrow(axis + 1, other, size)
            tinted = ycbcr_to_srgb(torch.cat([own_ycc[:, :1], other_ycc[:, 1:]], 1))
            shift = _delta_e94(srgb_to_lab(tinted.permute(0, 2, 3, 1)), lab.narrow(axis, own, size))
            edge.narrow(axis, own, size).logical_or_(far | (both & (shift > distance)))
    return edge


def merge_similar_colors(
    colours: Tensor,
    weights: Tensor,
    distance: float | None = None,
    max_colors: int | None = None,
    min_distance: float = 0.0,
    errors: Tensor | None = None,
    floor_distance: float = 2.5,
) -> tuple[Tensor, Tensor]:
    r"""Merge the near-duplicate shades that compression and blur make of each real colour into one.

    Colours are clustered by perceived difference (`colour_distance`): the heaviest colour not yet taken seeds
    a cluster and takes every free colour within ``distance``; cluster colours are then their members' weighted
    mean (sRGB), and every colour joins its nearest cluster; clusters whose colours are within ``distance`` of
    each other merge (a noise cloud wider than the radius gets seeded twice). A cluster within
    ``1.5 * distance`` of one at least four times heavier is its tail (the cells that noise moved furthest) and
    joins the nearest such. Last, while more than ``max_colors`` clusters remain, the two whose merge adds the
    least squared error (Ward) are merged.
    Ties go to the lower ``0xRRGGBB``, so the result is deterministic.

    Without a ``distance`` it is measured: 2.5 times the weighted median distance from the colours to the
    nearest heavy cluster (1 % of the weight or more) found at radius ``floor_distance``, kept within
    ``floor_distance`` to 8. Real palettes hold shades from about 3 apart, dark ramps from 1.5; JPEG and
    chroma subsampling move the colour of a cell of a few pixels by about 2.5, and of a large cell much less.

    Args:
        colours: uint8 :math:`(N, 3)` distinct colours.
        weights: :math:`(N,)` non-negative weights (e.g. how many cells have the colour).
        distance: merge radius in `colour_distance` units (about 1 is just noticeable), or None to measure.
        max_colors: largest palette size, or None for no limit.
        min_distance: with ``distance`` None, the smallest radius to use (e.g. from `cell_spreads`).
        errors: :math:`(N,)` how far each colour may be from the one it stands for, in `colour_distance` units
            (the root mean square of its cells' `cell_spreads`), or None to skip the significance test.
        floor_distance: with ``distance`` None, the least radius the measurement gives: how far compression
            moves the colours at least (2.5 for cells of a few pixels).

    Returns:
        ``(palette, labels)``: uint8 :math:`(K, 3)` without duplicates, and long :math:`(N,)` indices into it.

    Example:
        >>> import torch
        >>> colours = torch.tensor([[200, 30, 30], [203, 28, 33], [20, 20, 160]], dtype=torch.uint8)
        >>> palette, labels = merge_similar_colors(colours, torch.tensor([50.0, 4.0, 30.0]), 3.0)
        >>> palette.tolist(), labels.tolist()
        ([[20, 20, 160], [200, 30, 30]], [1, 1, 0])
    """
    if colours.ndim != 2 or colours.shape[1] != 3 or colours.shape[0] == 0:
        raise ValueError(f"`colours` must be a non-empty (N, 3) tensor, got {tuple(colours.shape)}")
    if weights.shape != colours.shape[:1]:
        raise ValueError(f"`weights` must have shape ({colours.shape[0]},), got {tuple(weights.shape)}")
    if max_colors is not None:
        check_int(max_colors, "max_colors", 1)
    device = colours.device
    rgb = colours.to("cpu", torch.float64)
    weight = weights.to("cpu", torch.float64)
    key = (colours.long().cpu() * torch.tensor([1 << 16, 1 << 8, 1])).sum(-1)
    groups = None
    shift = 1
    while key.shape[0] > _MAX_DISTINCT:
        # Too many colours to cluster one by one (a photograph, say): cluster coarser and coarser bins.
        levels = 8 - shift
        coarse = ((colours.long().cpu() >> shift) * torch.tensor([1 << 2 * levels, 1 << levels, 1])).sum(-1)
        key, groups = torch.unique(coarse, return_inverse=True)
        shift += 1
    if groups is not None:
        rgb, weight = _cluster_means(rgb, weight, groups, key.shape[0])
    lab = srgb_to_lab(rgb)
    # Heaviest first, ties to the lower 0xRRGGBB.
    order = key.argsort()
    order = order[weight[order].argsort(descending=True, stable=True)]
    seeded = None
    if distance is None:
        measured, seeded = _measured_distance(rgb, lab, weight, order, floor_distance)
        distance = max(min_distance, measured)
    # often the radius measured is the floor, where the measurement has seeded the clusters already
    label = seeded if seeded is not None and distance == floor_distance else _seed_clusters(lab, order, distance)
    centre_rgb, _ = _cluster_means(rgb, weight, label, int(label.max()) + 1)
    label = _nearest_centres(lab, srgb_to_lab(centre_rgb), label)
    label = _merge_close(rgb, weight, label, distance)
    label = _merge_unimodal(rgb, lab, weight, label, distance)
    if errors is not None:
        squared = errors.to("cpu", torch.float64) ** 2 * weights.to("cpu", torch.float64)
        if groups is not None:
            squared = torch.zeros(key.shape[0], dtype=torch.float64).index_add_(0, groups, squared)
        label = _merge_insignificant(rgb, weight, squared, label)
    label = _absorb_tails(rgb, weight, label, distance)
    if max_colors is not None:
        label = _ward_merge(rgb, weight, label, max_colors)
    centre_rgb, _ = _cluster_means(rgb, weight, label, int(label.max()) + 1)
    palette = torch.round(centre_rgb).clamp(0, 255).to(torch.uint8)
    palette, inverse = torch.unique(palette, dim=0, return_inverse=True)
    label = inverse[label]
    return palette.to(device), (label[groups] if groups is not None else label).to(device)


def _seed_clusters(lab: Tensor, order: Tensor, distance: float) -> Tensor:
    """Leader clustering: in ``order``, each colour not yet taken takes every free colour within ``distance``.

    The next `_SEED_CANDIDATES` free colours are measured against what is free at once, then taken in order: a
    candidate that an earlier one takes is no seed, and a colour within reach of several seeds goes to the first.
    A colour can only be within ``distance`` when its lightness is (the lightness term of `colour_distance` is
    unweighted), so only the pairs in that band are measured."""
    label = torch.full((lab.shape[0],), -1, dtype=torch.long)
    lab = lab.float()
    lightness = lab[:, 0].contiguous()
    seeds: list[int] = []
    taken = torch.zeros(lab.shape[0], dtype=torch.bool)
    while len(seeds) < _MAX_SEEDS:
        free = order[~taken[order]]
        if free.numel() == 0:
            break
        candidates = free[:_SEED_CANDIDATES]
        reach = ((lightness - lightness[candidates].unsqueeze(1)).abs() <= distance) & ~taken
        rows, columns = reach.nonzero().unbind(1)
        reach[rows, columns] = _delta_e94(lab[candidates[rows]], lab[columns]) <= distance
        among = reach[:, candidates].tolist()
        accepted: list[int] = []
        for row in range(candidates.shape[0]):
            if len(seeds) + len(accepted) == _MAX_SEEDS:
                break
            if not any(among[earlier][row] for earlier in accepted):
                accepted.append(row)
        reach = reach[accepted]
        grabbed = reach.any(0)
        # argmax gives the first of the seeds within reach
        label[grabbed] = len(seeds) + reach[:, grabbed].int().argmax(0)
        taken |= grabbed
        seeds += candidates[accepted].tolist()
    if not bool(taken.all()):
        rest = (~taken).nonzero().flatten()
        label[rest] = colour_distance(lab[rest], lab[seeds]).argmin(1)
    return label


def _nearest_centres(lab: Tensor, centres: Tensor, guess: Tensor) -> Tensor:
    """``colour_distance(lab, centres).argmin(1)``, ties to the lower index, measuring only the centres that can
    beat each colour's ``guess``: no centre is nearer than its difference of lightness (unweighted in
    `colour_distance`), and the margin keeps a centre whose computed distance rounds to the guess's."""
    bound = _delta_e94(lab, centres[guess])
    near = (lab[:, :1] - centres[:, 0]).abs() <= bound.unsqueeze(1) * (1 + 1e-9) + 1e-12
    rows, columns = near.nonzero().unbind(1)
    distance = _delta_e94(lab[rows], centres[columns])
    least = torch.full_like(bound, torch.inf).scatter_reduce_(0, rows, distance, "amin")
    tied = distance == least[rows]
    first = torch.full_like(guess, centres.shape[0])
    return first.scatter_reduce_(0, rows[tied], columns[tied], "amin")


def _measured_distance(rgb: Tensor, lab: Tensor, weight: Tensor, order: Tensor, low: float) -> tuple[float, Tensor]:
    """The merge radius `merge_similar_colors` uses when none is given, at least ``low``, and the labels of
    `_seed_clusters` at ``low`` that it was measured from."""
    label = _seed_clusters(lab, order, low)
    centre_rgb, centre_weight = _cluster_means(rgb, weight, label, int(label.max()) + 1)
    # Clusters holding 1 % of the weight, or the heaviest one.
    heavy = centre_weight >= min(_HEAVY_SHARE * float(centre_weight.sum()), float(centre_weight.max()))
    nearest = colour_distance(lab, srgb_to_lab(centre_rgb[heavy])).min(1).values
    ranked = nearest.argsort()
    cumulative = weight[ranked].cumsum(0)
    median = float(nearest[ranked][int(torch.searchsorted(cumulative, cumulative[-1] / 2))])
    return min(_MOST_MERGE_DISTANCE, max(low, _MERGE_PER_SPREAD * median)), label


def _cluster_means(rgb: Tensor, weight: Tensor, label: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Weighted mean colour ``(count, 3)`` and weight ``(count,)`` of each cluster; empty ones get weight 0."""
    total = torch.zeros(count, dtype=torch.float64).index_add_(0, label, weight)
    sums = torch.zeros(count, 3, dtype=torch.float64).index_add_(0, label, rgb * weight.unsqueeze(1))
    if bool((total > 0).all()):
        return sums / total.unsqueeze(1), total
    # A cluster of zero weight still has members: give it their plain mean.
    plain = torch.zeros(count, 3, dtype=torch.float64).index_add_(0, label, rgb)
    members = torch.zeros(count, dtype=torch.float64).index_add_(0, label, torch.ones_like(weight))
    means = torch.where(
        (total > 0).unsqueeze(1), sums / total.clamp_min(1e-300).unsqueeze(1), plain / members.clamp_min(1).unsqueeze(1)
    )
    return means, total


def _compact(label: Tensor) -> Tensor:
    return torch.unique(label, return_inverse=True)[1]


def _absorb_tails(rgb: Tensor, weight: Tensor, label: Tensor, distance: float) -> Tensor:
    """Each cluster within ``2 * distance`` of one at least `_TAIL_RATIO` times heavier joins the nearest such."""
    label = _compact(label)
    count = int(label.max()) + 1
    centre_rgb, centre_weight = _cluster_means(rgb, weight, label, count)
    gap = colour_distance(srgb_to_lab(centre_rgb), srgb_to_lab(centre_rgb))
    heavier = centre_weight.unsqueeze(0) >= _TAIL_RATIO * centre_weight.unsqueeze(1).clamp_min(1e-12)
    gap = torch.where(heavier & (gap <= 1.5 * distance), gap, torch.inf)
    target = torch.where(gap.min(1).values < torch.inf, gap.argmin(1), torch.arange(count))
    # Targets are heavier, so following them ends; log2(count) steps reach every end.
    for _ in range(max(1, count.bit_length())):
        target = target[target]
    return _compact(target[label])


def _merge_close(rgb: Tensor, weight: Tensor, label: Tensor, distance: float) -> Tensor:
    """Merge the two clusters with the closest centres while they are within ``distance``: a cloud wider than
    the seeding radius is seeded more than once, and its pieces' centres end up that close."""
    label = _compact(label)
    count = int(label.max()) + 1
    centre_rgb, centre_weight = _cluster_means(rgb, weight, label, count)
    centre_weight = centre_weight.clamp_min(1e-9)
    lab = srgb_to_lab(centre_rgb)
    gap = colour_distance(lab, lab)
    gap.fill_diagonal_(torch.inf)
    target = torch.arange(count)
    while count > 1:
        flat = int(gap.argmin())
        if float(gap.flatten()[flat]) > distance:
            break
        keep, drop = sorted((flat // gap.shape[0], flat % gap.shape[0]))
        merged = centre_weight[keep] + centre_weight[drop]
        centre_rgb[keep] = (centre_rgb[keep] * centre_weight[keep] + centre_rgb[drop] * centre_weight[drop]) / merged
        centre_weight[keep] = merged
        lab[keep] = srgb_to_lab(centre_rgb[keep])
        target[target == drop] = keep
        row = colour_distance(lab[keep : keep + 1], lab)[0]
        row[gap[drop] == torch.inf] = torch.inf  # clusters merged away earlier stay out
        row[keep] = row[drop] = torch.inf
        gap[keep], gap[:, keep] = row, row
        gap[drop], gap[:, drop] = torch.inf, torch.inf
        count -= 1
    return _compact(target[label])


def _merge_unimodal(rgb: Tensor, lab: Tensor, weight: Tensor, label: Tensor, distance: float) -> Tensor:
    """Merge clusters whose colours have no valley between them: pieces of one noise cloud, or a cloud and its tail.

    For two clusters that can touch (centres within ``2 * distance`` plus their root-mean-square radii: seeds at
    ``distance`` leave neighbouring pieces of one cloud that close), the weight of their colours within a quarter
    of the gap of the midpoint is compared with that around each centre (three disjoint balls). Two real colours
    leave fewer colours between them than around the lesser of the two; the noise around one colour is densest
    in the middle, or thins out from one end to the other. A pair merges while its middle holds at least
    `_VALLEY` times the weight around its lesser centre, in rounds: each round merges every pair that is the
    fullest of both its clusters' pairs (ties to the lower pair of indices), then measures the merged clusters'
    pairs again."""
    label = _compact(label)
    count = int(label.max()) + 1
    sizes = torch.bincount(label, minlength=count).tolist()
    # each cluster's colours, kept gathered: a merge joins two clusters' rows instead of gathering them again
    order = label.argsort(stable=True)
    member_rgb: list[Tensor] = list(rgb[order].split(sizes))
    # single precision is ample for counting colours in balls, and twice as fast
    member_lab: list[Tensor] = list(lab.float()[order].split(sizes))
    member_weight: list[Tensor] = list(weight[order].split(sizes))
    centres = torch.zeros(count, 3, dtype=torch.float32)
    radii = torch.zeros(count, dtype=torch.float32)

    def measure(clusters: list[int]) -> None:
        which = torch.repeat_interleave(torch.tensor([sizes[index] for index in clusters]))
        point_rgb = torch.cat([member_rgb[index] for index in clusters])
        point_weight = torch.cat([member_weight[index] for index in clusters])
        mean, total = _cluster_means(point_rgb, point_weight, which, len(clusters))
        measured = srgb_to_lab(mean).float()
        centres[clusters] = measured
        squared = _delta_e94(torch.cat([member_lab[index] for index in clusters]), measured[which]) ** 2
        spread = torch.zeros(len(clusters), dtype=torch.float64).index_add_(0, which, squared * point_weight)
        radii[clusters] = spread.div(total.clamp_min(1e-12)).sqrt().float()

    def middle_shares(firsts: list[int], seconds: list[int], gaps: Tensor) -> list[float]:
        ends = torch.stack([centres[firsts], centres[seconds]])
        balls = torch.stack([ends[0], ends.mean(0), ends[1]])
        radius = gaps / 4
        pairs = list(zip(firsts, seconds))
        lengths = [sizes[first] + sizes[second] for first, second in pairs]
        shares: list[float] = []
        start = 0
        while start < len(lengths):
            stop, taken = start + 1, lengths[start]
            while stop < len(lengths) and taken + lengths[stop] <= _POINTS_AT_ONCE:
                taken += lengths[stop]
                stop += 1
            batch = [cluster for pair in pairs[start:stop] for cluster in pair]
            pair = torch.repeat_interleave(torch.tensor(lengths[start:stop]))
            points_lab = torch.cat([member_lab[cluster] for cluster in batch])
            inside = _delta_e94(points_lab.unsqueeze(0), balls[:, pair + start]) <= radius[pair + start]
            points_weight = torch.cat([member_weight[cluster] for cluster in batch]) * inside
            around = torch.zeros(3, stop - start, dtype=weight.dtype).index_add_(1, pair, points_weight)
            shares += (around[1] / around[[0, 2]].min(0).values.clamp_min(1e-12)).tolist()
            start = stop
        return shares

    def mergeable(firsts: Tensor, alive: Tensor) -> list[tuple[float, int, int]]:
        """The pairs of ``firsts`` with the live clusters, each once, whose middle is full enough to merge:
        ``(-share, lower, higher)``, the fullest middle first, ties to the lower pair of indices."""
        reach = 2 * distance + radii[firsts].unsqueeze(1) + radii
        gap = colour_distance(centres[firsts], centres)
        among = torch.zeros(count, dtype=torch.bool)
        among[firsts] = True
        # a pair of two of the firsts is measured from the lower one only
        near = (gap <= reach) & alive & ~(among & (torch.arange(count) <= firsts.unsqueeze(1)))
        rows, seconds = near.nonzero().unbind(1)
        gaps = gap[rows, seconds]
        firsts, seconds = firsts[rows].tolist(), seconds.tolist()
        shares = middle_shares(firsts, seconds, gaps)
        return sorted(
            (-share, min(first, second), max(first, second))
            for first, second, share in zip(firsts, seconds, shares)
            if share >= _VALLEY
        )

    measure(list(range(count)))
    alive = torch.ones(count, dtype=torch.bool)
    target = torch.arange(count)
    pairs = mergeable(torch.arange(count), alive)
    # A round at a time rather than a pair: far fewer, larger tensor operations (a third of the time on the
    # scale-2 timing image's 221 clusters, merged in 13 rounds), and each merge is still both clusters' best.
    while pairs:
        merged: set[int] = set()
        seen: set[int] = set()
        keeps: list[int] = []
        for _, keep, drop in pairs:
            if seen.isdisjoint((keep, drop)):  # no fuller pair holds either
                merged |= {keep, drop}
                keeps.append(keep)
                for member in (member_rgb, member_lab, member_weight):
                    member[keep] = torch.cat([member[keep], member[drop]])
                sizes[keep] += sizes[drop]
                alive[drop] = False
                target[target == drop] = keep
            seen |= {keep, drop}
        measure(keeps)
        waiting = [pair for pair in pairs if not merged & set(pair[1:])]
        pairs = sorted(waiting + mergeable(torch.tensor(keeps), alive))
    return _compact(target[label])


def _merge_insignificant(rgb: Tensor, weight: Tensor, squared: Tensor, label: Tensor) -> Tensor:
    """Merge the clusters whose colours are not told apart by their cells: a cluster's colour is the mean of its
    cells', each uncertain by its spread, so it is uncertain by the root of the summed squared spreads over the
    cell count (``squared`` holds each colour's summed squared spread). While two clusters are closer than
    `_SIGNIFICANT` times the uncertainty of their difference, the closest such pair (in those units) merges: a
    few cells at edges, whose pixels stray far, cannot make a colour of their own, while the same few cells
    with clean interiors can."""
    label = _compact(label)
    count = int(label.max()) + 1
    centre_rgb, centre_weight = _cluster_means(rgb, weight, label, count)
    spread = torch.zeros(count, dtype=torch.float64).index_add_(0, label, squared)
    lab = srgb_to_lab(centre_rgb)
    target = torch.arange(count)
    alive = torch.ones(count, dtype=torch.bool)
    while int(alive.sum()) > 1:
        variance = spread / centre_weight.clamp_min(1e-12) ** 2
        score = colour_distance(lab, lab) / (variance.unsqueeze(0) + variance.unsqueeze(1)).sqrt().clamp_min(1e-12)
        score[~alive] = torch.inf
        score[:, ~alive] = torch.inf
        score.fill_diagonal_(torch.inf)
        flat = int(score.argmin())
        if float(score.flatten()[flat]) >= _SIGNIFICANT:
            break
        keep, drop = sorted((flat // count, flat % count))
        merged = centre_weight[keep] + centre_weight[drop]
        centre_rgb[keep] = (centre_rgb[keep] * centre_weight[keep] + centre_rgb[drop] * centre_weight[drop]) / merged
        centre_weight[keep] = merged
        spread[keep] += spread[drop]
        lab[keep] = srgb_to_lab(centre_rgb[keep])
        alive[drop] = False
        target[target == drop] = keep
    return _compact(target[label])


def _ward_merge(rgb: Tensor, weight: Tensor, label: Tensor, max_colors: int) -> Tensor:
    """Merge clusters pairwise by least added squared `colour_distance` until at most ``max_colors`` remain.

    The pair costs are kept in a matrix of which each merge updates one row and column."""
    label = _compact(label)
    count = int(label.max()) + 1
    if count <= max_colors:
        return label
    centre_rgb, centre_weight = _cluster_means(rgb, weight, label, count)
    centre_weight = centre_weight.clamp_min(1e-9)
    lab = srgb_to_lab(centre_rgb)

    def costs(index: int) -> Tensor:
        pair = centre_weight[index] * centre_weight / (centre_weight[index] + centre_weight)
        return pair * colour_distance(lab[index : index + 1], lab)[0] ** 2

    pair = centre_weight.unsqueeze(1) * centre_weight / (centre_weight.unsqueeze(1) + centre_weight)
    cost = pair * colour_distance(lab, lab) ** 2
    cost.fill_diagonal_(torch.inf)
    target = torch.arange(count)
    for _ in range(count - max_colors):
        flat = int(cost.argmin())
        keep, drop = sorted((flat // count, flat % count))
        merged = centre_weight[keep] + centre_weight[drop]
        centre_rgb[keep] = (centre_rgb[keep] * centre_weight[keep] + centre_rgb[drop] * centre_weight[drop]) / merged
        centre_weight[keep] = merged
        lab[keep] = srgb_to_lab(centre_rgb[keep])
        target[target == drop] = keep
        row = costs(keep)
        row[keep] = torch.inf
        row[cost[drop] == torch.inf] = torch.inf  # clusters merged away earlier stay out
        row[drop] = torch.inf
        cost[keep], cost[:, keep] = row, row
        cost[drop], cost[:, drop] = torch.inf, torch.inf
    return _compact(target[label])
