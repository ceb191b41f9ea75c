"""Pixel-art scale and grid detection: boundary profiles, run lengths and periodicity of upscaled art.

An upscaled pixel-art image is a lattice of ``s x s`` cells starting at a grid offset ``(oy, ox)``. Every
colour change between horizontal neighbours then sits at a column ``x = ox (mod s)`` and every change between
vertical neighbours at a row ``y = oy (mod s)``. Both detectors look at that structure through 1-D profiles
over columns and rows, computed on the device; only the decisions over those short profiles run on the host.

A resampled upscale (a x0.98 resize, say) has cells of a real-valued size, 2.94 px for scale 3, and sampling
them on whole pixels aliases: the profile's spectrum shows the cell frequency, its harmonics folded back
(3.13 px here), and a moire period near ``1 / |f - 1|`` (about 50 px). `detect_grid_edges` therefore treats
every strong spectral peak as a candidate, fits each one's period and phase to the edges, and keeps the one
whose cells best explain the image (`_grid_evidence`).

Convention: a boundary at index ``x`` is the change between pixels ``x - 1`` and ``x``, so a grid offset ``o``
means the first complete cell starts at pixel ``o``; offsets are in ``[0, s)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache, reduce

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

# The spectrum is sampled this many times finer than the profile's own resolution (1 / length): a peak, about
# 1 / length wide, is then sampled several times and its top interpolated to a small fraction of a bin, which
# keeps cells of a resampled image from drifting (scale 2 x 1.02 is 2.04 px, a whole cell off after 50 cells).
_OVERSAMPLE = 8
# Spectral peaks reaching this share of the highest one are candidate periods, at most this many.
_CANDIDATE_SHARE = 0.2
_MAX_CANDIDATES = 16
# Smallest cell considered: scale 2 shrunk by up to 10 %.
_MIN_PERIOD = 1.8
# Grid evidence (see `_grid_evidence`) below which the image has no grid: it is native art (scale 1).
_MIN_EVIDENCE = 0.3
# Candidates within this evidence of the best one count as equal, and the largest of them wins if it is a whole
# multiple (within this share of one) of the best period from `_MIRROR_BELOW` up; twice or three times the best
# period only needs this share of its evidence: the best is then its harmonic (s / 2, s / 3), whose finer cells
# also fit the noise of blurred or compressed cells.
_EVIDENCE_TIE = 0.02
_MULTIPLE_SLACK = 0.02
_HARMONIC_SHARE = 0.95
# Periods below this have a mirror p / (p - 1) in range (see `_fit_grid`), considered within this evidence of
# the best.
_MIRROR_BELOW = 2.5
_MIRROR_EVIDENCE = 0.1
# The mirror and the period are compared (`_repainted_error`) on at most this many pixels a side from the top left:
# at 2 px that is some 36 000 cells, and the whole of a 1024 x 1024 image took 100 ms a lattice.
_REPAINTED_SIDE = 384
# A lattice fitted on one axis may differ from the candidate period by this share (sizes are rounded after a
# resample, so the axes' factors differ a little); further off, that axis had too few edges to fit.
_AXIS_SLACK = 0.015
# Residuals are computed over at most about this many rows and columns, evenly spaced.
_RESIDUAL_LINES = 256
# Whole-pixel cells are kept while they would drift less than this (pixels) against the measured period
# across the image.
_MAX_DRIFT = 0.25
# How far (pixels) either side of a cell boundary a resample spreads its step, and the cells under which the next
# boundary's spread is within reach (see `_refine_lattice`). On random art resampled by 0.98 and 1.02 and saved at
# JPEG q85, the window falling off over its last pixel placed cells of 3-5 px to 0.0008 px a cell at worst
# against 0.0022 for whole pixels given to their nearest boundary, and cells of 2 px to 0.0018 against 0.0006.
_EDGE_SPREAD = 1.5
_NARROW_CELL = 2.5
# The largest period looked for is a third of the shorter side: at least three cells must be visible.
_MIN_CELLS = 3
# Share of a strong edge (99th percentile difference) below which a step is noise, see `edge_profiles`.
_EDGE_FLOOR = 0.2
# `_kth_smallest` brackets a row's k-th value with the quantile this much lower of a random sample this large:
# near the 99th percentile a sample quantile's rank strays by 0.08 % (one standard deviation), a thirteenth of it.
_KTH_SAMPLE = 16384
_KTH_MARGIN = 0.01
# Runs detection needs this many boundary positions over both axes before it trusts a gcd.
_MIN_BOUNDARIES = 4
# `_grid_evidence` weighs a lattice in this many bands of each axis's lines apart.
_BANDS = 4


@dataclass(frozen=True)
class Grid:
    """A detected pixel grid: cell size and the offset (rows, columns) of the first complete cell.

    ``period_y`` and ``period_x`` are set when the lattice is measurably not whole pixels (a resampled upscale):
    cells are then that many pixels tall and wide, offsets are fractional, and ``scale`` is the period rounded.
    """

    scale: int
    offset_y: float = 0
    offset_x: float = 0
    period_y: float | None = None
    period_x: float | None = None

    @property
    def fractional(self) -> bool:
        return self.period_y is not None or self.period_x is not None

    @property
    def cell_size(self) -> tuple[float, float]:
        """Cell height and width in pixels, fractional on a resampled lattice."""
        return (
            self.period_y if self.period_y is not None else float(self.scale),
            self.period_x if self.period_x is not None else float(self.scale),
        )


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


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """``values.kthvalue(k, dim=1).values`` of a ``(B, N)`` tensor, selected from a bracket: a random sample's
    quantile a little below k / N bounds the answer from below (checked by counting, else the whole row is
    searched), so only the values above it are searched, a few per cent of a large row. The sample is drawn at
    random because an image's values repeat with its grid, which a strided sample would pick in step with."""
    count = values.shape[1]
    if count < 2 * _KTH_SAMPLE:
        return values.kthvalue(k, dim=1).values
    picks = torch.randint(count, (_KTH_SAMPLE,), generator=torch.Generator().manual_seed(0)).to(values.device)
    rank = min(_KTH_SAMPLE, max(1, math.floor((k / count - _KTH_MARGIN) * _KTH_SAMPLE)))
    kth = []
    for row, low in zip(values, values.index_select(1, picks).kthvalue(rank, dim=1).values):
        above = row[row > low]
        at_most = count - above.numel()
        if k > at_most:
            kth.append(above.kthvalue(k - at_most).values)
        elif int(torch.count_nonzero(row < low)) < k:
            kth.append(low)
        else:
            kth.append(row.kthvalue(k).values)
    return torch.stack(kth)


def _sharp_gradient_sum(image: Tensor) -> Tensor:
    """Column profile of non-maximum-suppressed forward differences along the last axis, ``(B, W)``."""
    # one buffer, worked on in place: each pass below reads and writes the whole image
    grad = image.new_zeros(image.shape[0], *image.shape[2:])
    torch.sum((image[..., 1:] - image[..., :-1]).abs_(), 1, out=grad[..., 1:])
    # Noise floor: JPEG ringing and dithering leave small local maxima everywhere, which non-maximum
    # suppression would turn into a spurious period-2 comb.
    flat = grad.flatten(1)
    strong = _kth_smallest(flat, max(1, math.ceil(0.99 * flat.shape[1])))
    grad.masked_fill_(grad < _EDGE_FLOOR * strong.view(-1, 1, 1), 0)
    # A blurred step spreads over a few pixels; keeping only the local maximum along the scan puts all of its
    # weight back on the boundary, so a blur does not smear the comb. Ties go to the first pixel of a plateau.
    # Past either end the gradient counts as 0: the first pixel always passes its left test, the last its right
    # one, where only a gradient of 0, which adds nothing, would fail it.
    peak = torch.ones_like(grad, dtype=torch.bool)
    peak[..., 1:] = grad[..., 1:] >= grad[..., :-1]
    peak[..., :-1] &= grad[..., :-1] > grad[..., 1:]
    return grad.square_().mul_(peak).sum(-2)


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
        art), shows too few boundaries to tell, or is narrower than the cells its boundaries space out.

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
        if scale <= 1 or scale > min(image.shape[-2:]):  # no whole cell fits across the image
            grids.append(None)
            continue
        grids.append(Grid(scale, ys[0] % scale if ys else 0, xs[0] % scale if xs else 0))
    return grids


def _detection_planes(image: Tensor) -> Tensor:
    """Luma (Rec. 601) and alpha of an RGB(A) image, ``(B, 1 or 2, H, W)`` float32 (alpha only where it varies in
    some sample: a constant plane has no edges); other channel counts as is.

    JPEG keeps luma at full resolution but stores chroma at half resolution with 4:2:0 subsampling, so colour
    edges only land on its 2-pixel chroma grid. Edges are therefore looked for in luma (and alpha, which JPEG
    does not have), where the art's own pixel grid is intact."""
    if image.shape[1] not in (3, 4):
        return image.float()
    # plane by plane, the sum in place: a uint8 image is never converted whole (a float one is not written to)
    red, green, blue = (image[:, channel : channel + 1].float() for channel in range(3))
    luma = (red * 0.299).add_(green * 0.587).add_(blue * 0.114)
    alpha = image[:, 3:].flatten(1)
    if image.shape[1] == 4 and bool((alpha.amax(1) > alpha.amin(1)).any()):
        return torch.cat([luma, image[:, 3:].float()], 1)
    return luma


def _spectrum(profile: Tensor, size: int) -> Tensor:
    """Complex spectrum ``(B, size // 2 + 1)`` of a ``(B, L)`` profile less its mean, zero-padded to ``size``.

    Removing the mean removes the leakage of the zero frequency into the long periods; at the profile's own
    frequencies (k / L) the magnitude is unchanged."""
    weights = profile.double()
    return torch.fft.rfft(weights - weights.mean(-1, keepdim=True), n=size)


def _peak_top(values: Tensor, at: int) -> float:
    """Fractional index of the top of the parabola through ``values[at - 1 : at + 2]``."""
    if at <= 0 or at >= values.shape[0] - 1:
        return float(at)
    left, centre, right = float(values[at - 1]), float(values[at]), float(values[at + 1])
    curvature = left - 2 * centre + right
    shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return at + max(-0.5, min(0.5, shift))


def _candidate_periods(magnitude: Tensor, size: int, longest: float) -> list[float]:
    """Periods of the strongest local peaks of a combined magnitude spectrum ``(F,)``, strongest first.

    A lattice of real period ``p`` sampled on whole pixels puts peaks at every aliased harmonic
    ``|k / p - m|``: the fundamental, its harmonics, and for a slightly resampled lattice the moire period
    ``1 / |k / p - m|`` near ``1 / |f - 1|``. All of them are candidates; `_grid_evidence` tells them apart. A
    peak above 0.44 cycles per pixel also stands for its mirror ``1 - nu`` (cells of 1.8 to 2 px: a scale-2
    upscale shrunk a little), which whole-pixel sampling cannot tell from it."""
    frequencies = torch.arange(magnitude.shape[0], dtype=torch.float64, device=magnitude.device) / size
    usable = (frequencies >= 1.0 / longest) & (frequencies <= 0.5)
    padded = torch.cat([magnitude.new_zeros(1), magnitude, magnitude.new_zeros(1)])
    is_peak = (magnitude >= padded[:-2]) & (magnitude > padded[2:]) & usable
    if not bool(is_peak.any()):
        return []
    floor = _CANDIDATE_SHARE * float(magnitude[is_peak].max())
    peaks = (is_peak & (magnitude >= floor)).nonzero().flatten()
    peaks = peaks[magnitude[peaks].argsort(descending=True)][:_MAX_CANDIDATES]
    periods = []
    for at in peaks.tolist():
        frequency = _peak_top(magnitude, at) / size
        periods.append(1.0 / frequency)
        if 1.0 - frequency <= 1.0 / _MIN_PERIOD:
            periods.append(1.0 / (1.0 - frequency))
    return periods


def _fit_lattice(profile: Tensor, period: float, phase: float) -> tuple[float, float]:
    """Period and phase of the lattice ``phase + k * period`` fitted to a ``(L,)`` edge profile.

    Every edge within a quarter cell of the lattice is given its cell number ``k``, and ``(phase, period)`` are
    the weighted least-squares line through those ``(k, position)`` pairs, three times over. A spectral peak
    only locates a lattice of a dozen cells to a few hundredths of a pixel, enough to drift half a pixel across
    the image; the fit is exact on an exact lattice. The edges of `edge_profiles` sit at whole pixels, so on a
    resampled one it leans towards whole-pixel cells: `_refine_lattice` takes it from there."""
    weights = profile.double()
    positions = torch.arange(weights.shape[0], dtype=torch.float64, device=weights.device)
    for _ in range(3):
        index = torch.round((positions - phase) / period)
        near = (weights > 0) & ((positions - phase - index * period).abs() <= max(0.5, period / 4))
        if not bool(near.any()) or float(index[near].max() - index[near].min()) < 1:
            break
        fitted = _line_fit(index[near], positions[near], weights[near])
        if fitted is None:
            break
        period, phase = fitted
    return period, phase % period


def _line_fit(index: Tensor, position: Tensor, weight: Tensor) -> tuple[float, float] | None:
    """``(period, phase)`` of the weighted least-squares line ``position = phase + index * period``; None
    without weight or when the indices do not vary."""
    total = float(weight.sum())
    if total <= 0:
        return None
    mean_k, mean_x = float((weight * index).sum()) / total, float((weight * position).sum()) / total
    spread = float((weight * (index - mean_k) ** 2).sum())
    if spread <= 0:
        return None
    period = float((weight * (index - mean_k) * (position - mean_x)).sum()) / spread
    return period, mean_x - period * mean_k


def _gradient_profiles(planes: Tensor) -> tuple[Tensor, Tensor]:
    """``(columns, rows)``: the absolute forward differences of ``(C, H, W)`` planes summed over channels and
    lines, ``(W,)`` and ``(H,)`` float32, index 0 being 0 (as `edge_profiles`, without its suppression or
    squaring)."""
    values = planes.float()
    across = (values[..., 1:] - values[..., :-1]).abs().sum((0, 1))
    down = (values[..., 1:, :] - values[..., :-1, :]).abs().sum((0, 2))
    zero = values.new_zeros(1)
    return torch.cat([zero, across]), torch.cat([zero, down])


def _refine_lattice(gradient: Tensor, period: float, phase: float) -> tuple[float, float]:
    """A resampled lattice ``(period, phase)`` refitted to where its boundaries lie between pixels.

    `_fit_lattice` places each boundary on the pixel where its gradient peaks. A lattice about a whole pixel
    per cell off the scale (2 x 0.98 = 1.96 px) slips a pixel only every 25 cells or so, so those rounded
    positions err in a slow sawtooth whose few teeth tilt the fitted line: on 48 cells of 2 px resampled by
    0.98 it measured 0.0056 px too little a cell, the first cell 0.12 px late and the last 0.14 px early.
    Linear interpolation spreads a step over the pixels beside it in proportion to where it lies, so the
    centroid of the unsuppressed ``gradient`` (`_gradient_profiles`) around each boundary is where it lies.
    The centroid of each boundary (cell number ``k``) is taken within a window: under `_NARROW_CELL` px the
    next boundary's spread is a pixel away, so each pixel goes whole to its nearest boundary; wider cells take
    `_EDGE_SPREAD` px either side, the last pixel weighing less and less, so that the even gradient of JPEG
    noise weighs the same on both sides of a boundary wherever it lies between pixels. Three times over, as
    `_fit_lattice`."""
    weights = gradient.double()
    positions = torch.arange(weights.shape[0], dtype=torch.float64, device=weights.device)
    if period < _NARROW_CELL:
        flat, ramp = period / 2, 0.0
    else:
        flat, ramp = min(period / 2, _EDGE_SPREAD) - 0.5, 1.0
    for _ in range(3):
        below = torch.floor((positions - phase) / period)
        index = torch.cat([below, below + 1])  # each pixel is between two boundaries
        position = torch.cat([positions, positions])
        distance = (position - phase - index * period).abs()
        window = ((flat + ramp - distance) / ramp).clamp(0, 1) if ramp else (distance <= flat).double()
        fitted = _line_fit(index, position, torch.cat([weights, weights]) * window)
        if fitted is None:
            break
        period, phase = fitted
    return period, phase % period


def _line_sums(planes: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Prefix sums along the lines of ``(C, lines, L)``, laid out ``(L + 1, C * lines)`` with a leading row of 0
    so that the sums up to one position are one contiguous row; each line's sum of squares ``(C * lines,)`` and
    its band (`_BANDS` runs of neighbouring lines)."""
    values = planes.double().permute(2, 0, 1).flatten(1)
    sums = torch.cat([values.new_zeros(1, values.shape[1]), values.cumsum(0)])
    lines = planes.shape[1]
    band = (torch.arange(values.shape[1], device=values.device) % lines) * _BANDS // lines
    return sums, ((values * values).sum(0), band)


def _residual(sums: Tensor, squares: tuple[Tensor, Tensor], period: float, phase: float) -> Tensor:
    """Squared error left in each band ``(_BANDS,)`` when every line is constant between the lattice
    ``phase + k * period`` (rounded to whole pixels), from `_line_sums`."""
    length = sums.shape[0] - 1
    first = math.floor(-phase / period)
    steps = torch.arange(first, first + length / period + 3, dtype=torch.float64, device=sums.device)
    cuts = torch.round(phase + period * steps).long()
    cuts = torch.unique(torch.cat([cuts.clamp(0, length), torch.tensor([0, length], device=sums.device)]))
    at_cuts = sums.index_select(0, cuts)
    segment = at_cuts[1:] - at_cuts[:-1]
    counts = (cuts[1:] - cuts[:-1]).double()
    explained = (segment * segment / counts[:, None]).sum(0)
    per_line, band = squares
    return torch.zeros(_BANDS, dtype=torch.float64, device=sums.device).index_add_(0, band, per_line - explained)


def _grid_evidence(
    lines: list[tuple[Tensor, Tensor, tuple[Tensor, Tensor]]], period: float
) -> tuple[float, list[tuple]]:
    """How much better cells of about ``period`` explain the image than the same lattice half a cell off, in
    [0, 1], and the lattice ``(period, phase)`` fitted on each axis (`_fit_lattice`, started from the profile's
    circular-mean phase). Each band of an axis's lines scores 1 - residual / shifted residual, and the bands of
    both axes are averaged, each weighing the square root of its shifted residual; twice the weaker axis's own
    average caps it.

    A true lattice leaves only noise inside its cells and cuts every cell in two when shifted. Harmonics of it
    (s / 2) lose half of that contrast, multiples (texture at 2s) keep the cell-sized detail inside their cells
    at either phase, and the moire of a resampled image or the 2-pixel chroma grid of JPEG 4:2:0 drift across
    the art, so either phase fits it equally badly. Cells explain both axes: a lattice of a few cells with a
    boundary on one long edge (a flat area beside the art) explains that axis alone, and pooled, that edge's
    contrast outweighed the texture's cells on both (Crawl's floor below a flat band at 12-16 px, resized). Cells
    explain every part of the image, too: pooled, the residual is the contrast's, so a few strong edges (a pale
    tile beside dark, low-contrast ones) outweighed all the cells of the texture, and a lattice about ten cells
    wide with a boundary on each of them won (Crawl's floor at 10 px x0.98 came back as 101). Weighed by
    contrast itself, those edges' bands still outweigh the rest; weighed alike, a flat background's bands,
    which no lattice explains, would count as much as the art's."""
    weighed = weights = 0.0
    axis_evidence = []
    lattices = []
    for profile, sums, squares in lines:
        start = float(_phase(profile.unsqueeze(0), period)[0])
        axis_period, phase = _fit_lattice(profile, period, start)
        if abs(axis_period - period) > _AXIS_SLACK * period:
            # Too few edges on this axis to fit on their own: cells are square.
            axis_period, phase = period, start
        lattices.append((axis_period, phase))
        axis_fitted = _residual(sums, squares, axis_period, phase)
        axis_shifted = _residual(sums, squares, axis_period, phase + axis_period / 2)
        weight = axis_shifted.clamp(min=0).sqrt()
        band_evidence = torch.where(weight > 0, 1.0 - axis_fitted / axis_shifted.clamp(min=1e-12), 0.0)
        axis_weighed, axis_weights = float((weight * band_evidence).sum()), float(weight.sum())
        axis_evidence.append(axis_weighed / axis_weights if axis_weights > 0 else 0.0)
        weighed += axis_weighed
        weights += axis_weights
    return min(weighed / weights if weights > 0 else 0.0, 2 * min(axis_evidence)), lattices


def detect_grid_edges(image: Tensor, max_period: int | None = None) -> list[Grid]:
    r"""Grid of upscaled art under JPEG noise, blur or slight resampling: a real-valued period and its phase.

    1. Edge profiles (`edge_profiles`) of luma and alpha, where JPEG's 4:2:0 chroma grid does not show; with
       the colour channels as well when luma alone shows no grid (isoluminant art).
    2. Candidate periods: the strongest peaks of the profiles' spectrum (both axes together, a fine frequency
       grid, each peak's top interpolated), from 2 px (1.8 px for a shrunken scale 2) to a third of the
       shorter side. They include the harmonics of the true period, texture multiples, and the moire period
       ``1 / |f - 1|`` of a slightly resampled image.
    3. Each candidate's phase is the circular mean of the profile at that period, and its evidence is how much
       better its cells explain the image than the same lattice half a cell off (`_grid_evidence`, computed
       from prefix sums of luma over up to 256 rows and columns). The period is the one of best evidence, or the largest
       within 0.02 of it that is a multiple of the best from 2.5 px up; below an evidence of 0.3 the image is
       native (scale 1).
    4. The period is refined on each axis separately, and kept fractional (`Grid.period_y`,
       `Grid.period_x`) when whole-pixel cells would drift by more than a quarter pixel across the image, as
       on a resampled upscale, where each axis is refitted to where its boundaries lie between pixels
       (`_refine_lattice`); otherwise the grid is whole pixels with whole-pixel offsets.

    Args:
        image: image of shape :math:`(B, C, H, W)`, float or integer; RGB(A) channels first.
        max_period: largest cell size to consider; default a third of the shorter side.

    Returns:
        One `Grid` per sample; ``Grid(1)`` where no period stands out.

    Example:
        >>> import torch
        >>> art = torch.rand(1, 3, 12, 12)
        >>> image = art.repeat_interleave(6, 2).repeat_interleave(6, 3)[..., 2:, 2:]
        >>> detect_grid_edges(image)[0]
        Grid(scale=6, offset_y=4, offset_x=4, period_y=None, period_x=None)
    """
    _check_image(image)
    height, width = image.shape[-2:]
    longest = max_period if max_period is not None else min(height, width) // _MIN_CELLS
    if longest < 2:
        return [Grid(1) for _ in range(image.shape[0])]
    size = 1 << max(_OVERSAMPLE * max(height, width) - 1, 1).bit_length()
    luma = _detection_planes(image)
    luma_profiles = edge_profiles(luma)
    colour_profiles = None
    stride_y, stride_x = max(1, height // _RESIDUAL_LINES), max(1, width // _RESIDUAL_LINES)

    def line_sums(planes: Tensor) -> tuple:
        # Constant planes (the alpha of an opaque image) explain nothing and cost time; a flat image keeps one.
        varying = planes.flatten(1).amax(1) > planes.flatten(1).amin(1)
        planes = planes[varying] if bool(varying.any()) else planes[:1]
        return _line_sums(planes[:, ::stride_y, :]), _line_sums(planes[:, :, ::stride_x].transpose(1, 2))

    grids = []
    for sample in range(image.shape[0]):
        colours = image[sample]
        edges = luma[sample]
        grid = _fit_grid(*(p[sample] for p in luma_profiles), line_sums(edges), size, longest, colours, edges)
        if grid is None:
            # Isoluminant art: its edges are only in the colour channels.
            if colour_profiles is None:
                colour_profiles = edge_profiles(image)
            grid = _fit_grid(
                *(p[sample] for p in colour_profiles), line_sums(colours), size, longest, colours, colours
            )
        grids.append(grid or Grid(1))
    return grids


def _repainted_error(planes: Tensor, lattices: list[tuple[float, float]]) -> float:
    """How far ``planes`` :math:`(C, H, W)` are from themselves sampled at a lattice's cell centres (the pixel
    each centre lies in) and painted back by linear interpolation between the centres, as a resize paints an
    upscale: the mean squared difference. The true lattice's centres land on the cells' own colours, and
    interpolating between them gives back the blends a resize made at their borders; its mirror's centres
    drift across cells and blends, and interpolating them misses the image wherever it changes. On the top left
    `_REPAINTED_SIDE` pixels a side."""
    planes = planes[:, :_REPAINTED_SIDE, :_REPAINTED_SIDE].float()
    painted = planes
    for dim, (period, phase), length in zip((1, 2), lattices, planes.shape[-2:]):
        first = math.ceil(-phase / period - 0.5)
        centres = phase + period * (torch.arange(first, first + length / period + 1, dtype=torch.float64) + 0.5)
        centres = centres[(centres >= 0) & (centres < length)].to(planes.device)
        samples = painted.index_select(dim, centres.floor().long())
        pixels = torch.arange(length, dtype=torch.float64, device=planes.device) + 0.5
        position = ((pixels - centres[0]) / period).clamp(0, centres.numel() - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=centres.numel() - 1)
        weight = (position - low).float().view([-1 if axis == dim else 1 for axis in range(3)])
        painted = torch.lerp(samples.index_select(dim, low), samples.index_select(dim, high), weight)
    return float((painted - planes).square().mean(dtype=torch.float64))


def _multiple(period: float, base: float) -> int:
    """How many times ``base`` ``period`` is, within `_MULTIPLE_SLACK` of a whole multiple; 0 if it is not one."""
    whole = round(period / base)
    return whole if whole >= 1 and abs(period / base - whole) <= _MULTIPLE_SLACK * whole else 0


def _fit_grid(
    columns: Tensor, rows: Tensor, line_sums, size: int, longest: float, planes: Tensor, edges: Tensor
) -> Grid | None:
    """`detect_grid_edges` steps 2-4 for one sample's ``(W,)`` and ``(H,)`` profiles of the ``edges`` planes
    ``(C, H, W)``, with its colours ``planes``; None without a grid."""
    total = float(columns.sum() + rows.sum())
    if total <= 0:
        return None
    magnitude = (_spectrum(columns.unsqueeze(0), size)[0].abs() + _spectrum(rows.unsqueeze(0), size)[0].abs()) / total
    candidates = _candidate_periods(magnitude, size, longest)
    (x_sums, x_squares), (y_sums, y_squares) = line_sums
    lines = [(rows, y_sums, y_squares), (columns, x_sums, x_squares)]
    scored = []
    for period in candidates:
        if not _MIN_PERIOD <= period <= longest:
            continue
        evidence, lattices = _grid_evidence(lines, period)
        scored.append((evidence, period, lattices))
    if not scored:
        return None
    best = max(evidence for evidence, _, _ in scored)
    if best < _MIN_EVIDENCE:
        return None
    best_period = max(scored, key=lambda entry: entry[0])[1]
    # Cells under 2.5 px cut nearly every pixel: a lattice that fine fits any image, and its coarser tied periods
    # need not be its multiples (a 2 px alias of a resized 16 px lattice), where a coarser period tied with real
    # cells and not their multiple locked onto a few strong edges.
    coarse = [entry for entry in scored if entry[1] >= _MIRROR_BELOW]
    reference = max(coarse, key=lambda entry: entry[0])[1] if coarse else best_period

    def acceptable(evidence: float, period: float) -> bool:
        if period > reference and not _multiple(period, reference):
            return False
        # A multiple of the best period (which is then its harmonic) needs less: finer cells fit noise better.
        harmonic = 2 <= _multiple(period, best_period) <= 3
        return evidence >= best - _EVIDENCE_TIE or (harmonic and evidence >= _HARMONIC_SHARE * best)

    _, period, lattices = max((entry for entry in scored if acceptable(*entry[:2])), key=lambda item: item[1])
    # Cells of about 2 px: whole-pixel sampling cannot tell p from its mirror p / (p - 1) (2.06 from 1.94);
    # the true lattice's cells, painted back from their centres, give the image back, the mirror's do not.
    mirror_period = period / (period - 1) if period < _MIRROR_BELOW else 0.0
    # (a whole 2 px period is its own mirror)
    mirrors = [entry for entry in scored if abs(entry[1] - mirror_period) < 0.02 * period and entry[1] != period]
    gradients = cache(lambda: _gradient_profiles(edges)[::-1])  # rows, then columns, as the lattices

    def refined(lattices: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [_refine_lattice(gradient, *lattice) for gradient, lattice in zip(gradients(), lattices)]

    def repainted(lattices: list[tuple[float, float]]) -> float:
        # refined first: a candidate's period is a few thousandths off, which drifts a cell across the image
        return _repainted_error(planes, refined(lattices))

    if mirrors:
        evidence, other, other_lattices = max(mirrors, key=lambda entry: entry[0])
        if evidence >= best - _MIRROR_EVIDENCE and repainted(other_lattices) < repainted(lattices):
            period, lattices = other, other_lattices
    (period_y, offset_y), (period_x, offset_x) = lattices
    # Whole pixels unless they would drift across the image.
    height, width = planes.shape[-2:]
    scale = max(2, round((period_y + period_x) / 2))
    drift = max(abs(period_y - scale) * height / period_y, abs(period_x - scale) * width / period_x)
    if drift <= _MAX_DRIFT:
        return Grid(scale, round(offset_y) % scale, round(offset_x) % scale)
    (period_y, offset_y), (period_x, offset_x) = refined(lattices)
    return Grid(scale, offset_y, offset_x, period_y, period_x)
