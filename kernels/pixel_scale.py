"""Pixel-art scale and grid detection: boundary profiles, run lengths and periodicity of upscaled art.

An upscaled pixel-art image is a lattice of ``s x s`` cells starting at a grid offset ``(oy, ox)``. Every
colour change between horizontal neighbours then sits at a column ``x = ox (mod s)`` and every change between
vertical neighbours at a row ``y = oy (mod s)``. Both detectors look at that structure through 1-D profiles
over columns and rows, computed on the device; only the decisions over those short profiles run on the host.

Convention: a boundary at index ``x`` is the change between pixels ``x - 1`` and ``x``, so a grid offset ``o``
means the first complete cell starts at pixel ``o``; offsets are in ``[0, s)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

from kernels._utils import check_int

__all__ = [
    "Grid",
    "boundary_profiles",
    "detect_grid_edges",
    "detect_grid_runs",
    "edge_profiles",
    "grid_offsets",
    "periodicity",
]

# Fractional periods are searched on this step (pixels): fine enough that the peak of a resampled grid
# (e.g. 8.24 px cells) is found, and still a small (periods x length) product.
_PERIOD_STEP = 0.125
# A period is a candidate when its coherence is at least this share of the best one. Harmonics of the true
# period (s/2, s/3) reach the same coherence on sharp art and lose to the larger period; multiples (2s, 4s)
# stay clearly below it unless the finer boundaries are all but absent.
_NEAR_BEST = 0.9
# Below this coherence the profile has no periodic structure: the image is taken as native (scale 1).
_MIN_COHERENCE = 0.2
# The largest period looked for is a third of the shorter side: at least three cells must be visible.
_MIN_CELLS = 3
# Share of a strong edge (99th percentile difference) below which a step is noise, see `edge_profiles`.
_EDGE_FLOOR = 0.2
# A fractional period is rounded to whole pixels unless the whole-pixel lattice scores clearly lower: exact
# upscales under JPEG or blur keep an exact integer grid, a resampled one gets cells of its measured size.
_WHOLE_PIXELS = 0.97
# Runs detection needs this many boundary positions over both axes before it trusts a gcd.
_MIN_BOUNDARIES = 4


@dataclass(frozen=True)
class Grid:
    """A detected pixel grid: cell size and the offset (rows, columns) of the first complete cell.

    ``period`` is set when the lattice is measurably not whole pixels (a resampled upscale): cells are then
    ``period`` pixels wide, offsets are fractional, and ``scale`` is the period rounded.
    """

    scale: int
    offset_y: float = 0
    offset_x: float = 0
    period: float | None = None


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.numel() == 0:
        raise ValueError(f"`image` must be a non-empty (B, C, H, W) tensor, got shape {tuple(image.shape)}")


def boundary_profiles(image: Tensor) -> tuple[Tensor, Tensor]:
    r"""Where any exact colour change happens, per column and per row.

    Any dtype; channels are compared exactly, so use it on integer (uint8 RGBA) images.

    Args:
        image: image of shape :math:`(B, C, H, W)`.

    Returns:
        ``(columns, rows)``: bool tensors :math:`(B, W)` and :math:`(B, H)`. ``columns[b, x]`` is true when some
        row of sample ``b`` changes between pixels ``x - 1`` and ``x``; index 0 is always false.

    Example:
        >>> import torch
        >>> image = torch.zeros(1, 4, 2, 6, dtype=torch.uint8)
        >>> image[..., 2:4] = 255
        >>> boundary_profiles(image)[0].int().tolist()
        [[0, 0, 1, 0, 1, 0]]
    """
    _check_image(image)
    batch = image.shape[0]
    changes_x = (image[..., 1:] != image[..., :-1]).any(1).any(1)
    changes_y = (image[..., 1:, :] != image[..., :-1, :]).any(1).any(-1)
    false = torch.zeros(batch, 1, dtype=torch.bool, device=image.device)
    return torch.cat([false, changes_x], 1), torch.cat([false, changes_y], 1)


def _sharp_gradient_sum(image: Tensor) -> Tensor:
    """Column profile of non-maximum-suppressed forward differences along the last axis, ``(B, W)``."""
    grad = torch.nn.functional.pad((image[..., 1:] - image[..., :-1]).abs().sum(1), (1, 0))
    # Noise floor: JPEG ringing and dithering leave small local maxima everywhere, which non-maximum
    # suppression would turn into a spurious period-2 comb.
    flat = grad.flatten(1)
    strong = flat.kthvalue(max(1, math.ceil(0.99 * flat.shape[1])), dim=1).values
    floor = _EDGE_FLOOR * strong.view(-1, 1, 1)
    grad = torch.where(grad >= floor, grad, 0)
    before = torch.nn.functional.pad(grad[..., :-1], (1, 0))
    after = torch.nn.functional.pad(grad[..., 1:], (0, 1))
    # A blurred step spreads over a few pixels; keeping only the local maximum along the scan puts all of its
    # weight back on the boundary, so a blur does not smear the comb. Ties go to the first pixel of a plateau.
    return (grad * grad * ((grad >= before) & (grad > after))).sum(-2)


def edge_profiles(image: Tensor) -> tuple[Tensor, Tensor]:
    r"""Gradient profiles over columns and rows, sharpened so that each colour step counts at its boundary.

    Works on any real image (float or integer, any range); differences are summed over all channels, alpha
    included, in float32.

    Args:
        image: image of shape :math:`(B, C, H, W)`.

    Returns:
        ``(columns, rows)``: float32 tensors :math:`(B, W)` and :math:`(B, H)`. ``columns[b, x]`` sums, over
        rows, the squared forward difference :math:`g(x)^2`, :math:`g(x) = \sum_c |I_c(x) - I_c(x-1)|`, where
        ``g`` is a local maximum along the row (:math:`g(x) \ge g(x-1)` and :math:`g(x) > g(x+1)`) and at least a
        fifth of the sample's 99th-percentile difference; rows likewise. Index 0 is 0. Squaring lets strong
        steps outweigh JPEG ringing, whose maxima would otherwise form a spurious period-2 comb.

    Example:
        >>> import torch
        >>> image = torch.zeros(1, 3, 2, 6)
        >>> image[..., 3:] = 1.0
        >>> edge_profiles(image)[0]
        tensor([[ 0.,  0.,  0., 18.,  0.,  0.]])
    """
    _check_image(image)
    x = image.float()
    return _sharp_gradient_sum(x), _sharp_gradient_sum(x.transpose(-1, -2))


def periodicity(profile: Tensor, periods: Tensor) -> Tensor:
    r"""Phase coherence of a non-negative profile at each period: its normalised Fourier magnitude.

    Args:
        profile: :math:`(B, L)` non-negative weights (e.g. from `edge_profiles`).
        periods: :math:`(P,)` periods in samples, any positive floats.

    Returns:
        :math:`(B, P)` float32 in [0, 1]: :math:`|\sum_x w_x e^{2\pi i x / p}| / \sum_x w_x`, 1 when all weight
        sits on one residue class of ``p`` and near 0 when it is spread evenly; 0 for an all-zero profile.

    Example:
        >>> import torch
        >>> comb = torch.zeros(1, 40)
        >>> comb[0, 3::5] = 1.0
        >>> periodicity(comb, torch.tensor([5.0, 7.0])).round(decimals=2)
        tensor([[1.0000, 0.1200]])
    """
    weights = profile.float()
    positions = torch.arange(weights.shape[-1], device=weights.device, dtype=torch.float64)
    phase = (2 * math.pi * positions / periods.to(weights.device, torch.float64).unsqueeze(-1)).float()
    real = weights @ torch.cos(phase).t()
    imag = weights @ torch.sin(phase).t()
    total = weights.sum(-1, keepdim=True)
    return torch.hypot(real, imag) / total.clamp_min(1e-12)


def grid_offsets(columns: Tensor, rows: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    r"""Grid offset along each axis for a known cell size: the circular mean of the profile's phase.

    Args:
        columns: :math:`(B, W)` non-negative column profile (`edge_profiles` or `boundary_profiles`).
        rows: :math:`(B, H)` row profile.
        scale: cell size in pixels, at least 1.

    Returns:
        ``(offset_y, offset_x)``, two long tensors :math:`(B,)` in ``[0, scale)``. On an exact lattice this is
        its residue; on a blurred or slightly resampled one, the residue that best fits the whole image.

    Example:
        >>> import torch
        >>> columns = torch.zeros(1, 30)
        >>> columns[0, 2::6] = 1.0
        >>> grid_offsets(columns, columns, 6)[1].tolist()
        [2]
    """
    check_int(scale, "scale", 1)
    return tuple(torch.round(_phase(profile, scale)).long().remainder(scale) for profile in (rows, columns))


def _phase(profile: Tensor, period: float) -> Tensor:
    """Where the lattice of ``period`` best fitting a ``(B, L)`` profile starts, in ``[0, period)``, float64."""
    weights = profile.double()
    phase = 2 * math.pi * torch.arange(weights.shape[-1], device=weights.device, dtype=torch.float64) / period
    angle = torch.atan2(weights @ torch.sin(phase), weights @ torch.cos(phase))
    return (angle * period / (2 * math.pi)).remainder(period)


def detect_grid_runs(image: Tensor) -> list[Grid | None]:
    r"""Exact grid of a loss-free nearest-neighbour upscale, from where its colours change.

    Every colour change of such an image lies on the lattice ``o (mod s)`` of its axis, so ``s`` is the gcd of
    the distances between boundary columns and rows, and the offset is any boundary's residue. Partial cells at
    the borders (any grid offset, any image size) do not matter, unlike the reference's gcd of run lengths.
    When it holds, every complete cell of the grid is uniform.

    Args:
        image: integer image of shape :math:`(B, C, H, W)`, compared exactly (uint8 RGBA).

    Returns:
        One `Grid` per sample, or None where the image is not such an upscale (gcd 1: JPEG, blur, native
        art) or shows too few boundaries to tell.

    Example:
        >>> import torch
        >>> art = torch.randint(0, 2, (1, 3, 5, 5), dtype=torch.uint8) * 255
        >>> art[0, :, 0, :2] = torch.tensor([[0, 255]] * 3, dtype=torch.uint8)
        >>> image = art.repeat_interleave(4, 2).repeat_interleave(4, 3)[..., 1:, 3:]
        >>> detect_grid_runs(image)[0].scale, detect_grid_runs(image)[0].offset_x
        (4, 1)
    """
    columns, rows = boundary_profiles(image)
    grids: list[Grid | None] = []
    for column_profile, row_profile in zip(columns.cpu(), rows.cpu()):
        xs = column_profile.nonzero().flatten().tolist()
        ys = row_profile.nonzero().flatten().tolist()
        if len(xs) + len(ys) < _MIN_BOUNDARIES:
            grids.append(None)
            continue
        gaps = [b - a for a, b in itertools.pairwise(xs)] + [b - a for a, b in itertools.pairwise(ys)]
        scale = reduce(math.gcd, gaps, 0)
        if scale <= 1:
            grids.append(None)
            continue
        grids.append(Grid(scale, ys[0] % scale if ys else 0, xs[0] % scale if xs else 0))
    return grids


def detect_grid_edges(image: Tensor, max_period: int | None = None) -> list[Grid]:
    r"""Grid of upscaled art under JPEG noise, blur or mild resampling, from the periodicity of its edges.

    The sharpened column and row profiles (`edge_profiles`) are scored by `periodicity` at every period from 2
    to a third of the shorter side, on a fractional grid so that a slightly resampled lattice still peaks. The
    period is the largest local peak reaching 90 % of the best score: harmonics (s/2, s/3) score as high as
    ``s`` on sharp art and lose to it, while multiples (texture at 2s or 4s) score clearly lower as long as
    cell-sized detail exists anywhere in the image. Below a coherence of 0.2 the image is native. The period is
    refined between grid steps and kept fractional (`Grid.period`) only when the whole-pixel lattice scores
    under 97 % of it, as on a resampled upscale; the offsets are the lattice's phase.

    Args:
        image: image of shape :math:`(B, C, H, W)`, float or integer.
        max_period: largest cell size to consider; default a third of the shorter side.

    Returns:
        One `Grid` per sample; ``Grid(1)`` where no period stands out.

    Example:
        >>> import torch
        >>> art = torch.rand(1, 3, 12, 12)
        >>> image = art.repeat_interleave(6, 2).repeat_interleave(6, 3)[..., 2:, 2:]
        >>> detect_grid_edges(image)[0]
        Grid(scale=6, offset_y=4, offset_x=4, period=None)
    """
    columns, rows = edge_profiles(image)
    height, width = image.shape[-2:]
    longest = max_period if max_period is not None else min(height, width) // _MIN_CELLS
    if longest < 2:
        return [Grid(1) for _ in range(image.shape[0])]
    periods = torch.arange(2.0, longest + _PERIOD_STEP / 2, _PERIOD_STEP, dtype=torch.float64)
    total_x = columns.sum(-1, keepdim=True)
    total_y = rows.sum(-1, keepdim=True)
    # Both axes together: their magnitudes add (phases differ per axis), weighted by their edge energy.
    score = (periodicity(columns, periods) * total_x + periodicity(rows, periods) * total_y) / (
        total_x + total_y
    ).clamp_min(1e-12)
    grids = []
    for sample, sample_score in enumerate(score.cpu()):
        period = _fundamental(sample_score, periods)
        if period is None:
            grids.append(Grid(1))
            continue
        column_profile, row_profile = columns[sample : sample + 1], rows[sample : sample + 1]
        scale = round(period)
        whole = torch.tensor([float(scale)], dtype=torch.float64)
        whole_score = float(
            (periodicity(column_profile, whole) * total_x[sample] + periodicity(row_profile, whole) * total_y[sample])
            / (total_x[sample] + total_y[sample]).clamp_min(1e-12)
        )
        if scale >= 2 and whole_score >= _WHOLE_PIXELS * float(sample_score.max()):
            offset_y, offset_x = grid_offsets(column_profile, row_profile, scale)
            grids.append(Grid(scale, int(offset_y), int(offset_x)))
        else:
            offset_y, offset_x = (float(_phase(profile, period)) for profile in (row_profile, column_profile))
            grids.append(Grid(max(scale, 2), offset_y, offset_x, period))
    return grids


def _fundamental(score: Tensor, periods: Tensor) -> float | None:
    """The cell size read from one sample's coherence curve (see `detect_grid_edges`), to a fraction of a pixel;
    None without periodic structure."""
    best = float(score.max())
    if best < _MIN_COHERENCE:
        return None
    padded = torch.cat([score.new_zeros(1), score, score.new_zeros(1)])
    is_peak = (score >= padded[:-2]) & (score > padded[2:]) & (score >= _NEAR_BEST * best)
    at = int(is_peak.nonzero().max())
    # The top of the parabola through the peak and its neighbours, within half a step of the sampled peak.
    left, centre, right = float(padded[at]), float(padded[at + 1]), float(padded[at + 2])
    curvature = left - 2 * centre + right
    shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float(periods[at]) + max(-0.5, min(0.5, shift)) * _PERIOD_STEP
