"""Pixel-art cells against the JPEG they came in: which palette shades the file needs, and what colour each is.

JPEG's quantisation rings at edges and bleeds chroma across them, so the cells of a small-scale upscale come out
as shades the art never had, each beside the colour it came from. Their colours and neighbours alone hardly tell
them from an artist's own shades. The file does: paint the cells back onto the image's lattice, encode them as
the file was (`kernels.jpeg_codec`), and compare with what it stored. A shade whose cells, painted as another
colour, explain the file at least as well is not in the art.

Cells of 2-3 px are too small for their own pixels to tell their chroma (a 4:2:0 sample spans a whole cell and
its neighbours'), but all the cells of a shade together are not: `fit_shades` gives each shade the colour that,
painted on the lattice, subsampled as the encoder did and spread back as the decoder does, best explains the
file. The same least squares tells which shade each cell is and which shades the file needs at all: a cell
that another shade explains better goes there, and a shade that only stands for cells whose neighbours bled
into them goes, each of its cells to the shade that explains it best, when the fit without it misses the file
by no more than a shade's price in the Bayesian information criterion. Where the file keeps every pixel's
chroma and each pixel shows one cell, the same fit also splits a shade whose cells' luma falls in two: two steps
of a ramp that the palette took for one colour under JPEG's noise.

Images are ``(B, C, H, W)``, cells ``(B, C, h, w)``, B = 1. A lattice axis (`AxisSampling`) says which cells each
pixel of the image shows: a few neighbouring cells, weighed as the filter of the resize that made the image weighs
them (bilinear or bicubic), or one cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._utils import packed_rgb, unpacked_rgb
from kernels.jpeg_chroma import (
    block_averages,
    check_factors,
    edge_filled,
    srgb_to_ycbcr,
    ycbcr_to_srgb,
)
from kernels.jpeg_codec import (
    block_steps,
    image_coefficients,
    mcu_coefficients,
    mcu_size,
)
from kernels.pixel_palette import colour_distance, srgb_to_lab

__all__ = [
    "BLUR_KERNELS",
    "RESAMPLING_KERNELS",
    "AxisSampling",
    "FileCoding",
    "axis_sampling",
    "file_coding",
    "fit_shades",
    "luma_misfit",
    "merge_unneeded_shades",
]

# Heavier colours tried for each shade, nearest first: a bled shade's source is among its nearest colours. Where the
# file keeps every pixel's chroma, three: JPEG's chroma rounding beside contrasting cells turned 13 of Trident's olive
# (95, 118, 54) cells at 5 px q75 into a brown (114, 98, 54) that two other colours lie nearer in CIELAB, and only the
# third asked gave them back. Over the real-art set's 3000 cases of seeds 0-4 that put 475 of the 477 palette targets
# within 2 (474) and 22 cases changed: 2 nearer the art's colour count, none further, 105 more cells right. Under
# subsampled chroma, where the chroma leniency lets more through, a third lost 1473 cells (a crawl floor at 3 px
# q90 4:2:0 657 of them), and four did no better than two when first measured (89 against 90 of 92 targets).
_CANDIDATES = 3
_CANDIDATES_SUBSAMPLED = 2
# In a file with subsampled chroma, a shade also goes when the change explains the file's luma at least as well and
# its chroma score (see `merge_unneeded_shades`) is at most this: one 4:2:0 sample spans parts of several small cells
# and the painted lattice only approximates how the resize and the decoder spread it, so the chroma evidence is
# weak where luma, stored per pixel, is not. Over the real-art set's 1800 cases of seeds 0-2, 0.5 put the colour
# count within 2 of the art's for 274 of the 285 palette targets (269 without) and 1564 cases in all (1561), with
# 97.407 % of cells right (97.392 %). A prototype gave 273, 1566 and 97.404 % at 0.35, 274, 1561 and 97.388 % at
# 0.65, 271 and 1563 with the luma held to -0.1, not 0, and 274 and 1563 with 4:4:4 files lenient too.
_CHROMA_LENIENCY = 0.5
# MCUs a shade is judged on at most, evenly spaced among those it reaches: its score is a ratio of sums over them.
_MOST_MCUS = 256
# Added to the diagonal of `fit_shades`'s normal equations, relative to it, pulling towards the shade's colour
# as it came: a shade the file shows nothing of keeps that colour, the others land a millionth of the way back.
_RIDGE = 1e-6
# What a shade costs in `fit_shades`: its colour's three channels, each worth ln(n) in squared error over n
# observations, counted in the noise variance (the Bayesian information criterion). Over the real-art set's 3000
# cases of seeds 0-4 (scratch runs of the whole set, the tree before and after), `fit_shades` put the colour
# counts of 464 of the 477 palette targets within 2 of the art's (462 before), 97.59 % of the cells right
# (97.49 %) and the mean CIELAB error of the 200 JPEGs at scales 2-3 at 2.67 (2.88). At the Akaike criterion's
# lower price (2 a channel) it kept 462 of the targets.
_PARAMETERS_PER_SHADE = 3
# `fit_shades` splits a shade where its cells' luma falls into two groups: where the cut between them leaves at
# least this share of the luma's spread between the two sides (noise around one colour leaves about 2/pi to the
# best cut, 0.64), and the shade has this many cells at least.
_SPLIT_SHARE = 0.85
_SPLIT_LEAST = 16
# ... or this share on a resized file's lattice, whose filter blurs each cell into its neighbours and so fills the
# gap between the two sides' luma: in the real-art set (seed 4), NetHack's white and light grey (255 and 237) at
# 3 px x1.02 q75 4:4:4 left 0.79 of the spread between them, two of its greys (131-140 and 149) 0.83.
_SPLIT_SHARE_RESIZED = 0.78
# ... and where the two sides' mean luma lie this many levels apart at least. The splits kept in the real-art set's
# cases gave shades whose fitted luma lie 5.5-62 levels apart; a black of 16 cells in a fixture, whose noise can
# only lighten it, split 4 apart.
_SPLIT_STEP = 5.0
# ... or this many on a resized file's lattice, whose filter blurs each cell into its neighbours: a fixture's grey
# of 16 cells, at 3 px x1.02, split 5 levels apart into its cells beside darker ones and the rest. The steps of
# NetHack's grey ramp that the split gives back there lie 9-10 levels apart; over the real-art set's 3000 cases of
# seeds 0-4 the records were the same as at 5 levels.
_SPLIT_STEP_RESIZED = 8.0
# Shades over this share of the cells, or this many, are not tried: a shade of bleed lines the borders between
# two colours, and trying one costs time in proportion to its cells. On the 1024 x 1024 timing image at scale 2
# (262 144 cells) the step takes 205 ms on one thread with the share alone, 61 ms with 4096 cells, 31 ms with
# 2048. In the real-art set (at most 9216 cells a case) the share is the limit: 576 cells.
_MOST_TRIED_SHARE = 1 / 16
_MOST_TRIED = 2048
# A shade whose cells, each moved to its best other shade with the colours as they are, would miss the file by over
# this many times its price is not tried: refitting the colours brings them nearer, but on the real-art set's
# JPEGs at scales 2-3 (seeds 0-1) never by a factor over 83.
_CLEARLY_NEEDED = 100


class AxisSampling(NamedTuple):
    """Per pixel along one axis: the cells it is painted from and their weights (``T`` taps, consecutive cells
    from the first, weights summing to 1), and whether it lies on the lattice at all (pixels beyond the first and
    last complete cells show the image itself)."""

    cells: Tensor  # long (L, T)
    weights: Tensor  # float (L, T)
    inside: Tensor  # bool (L,)


def _triangle(distance: Tensor) -> Tensor:
    return (1 - distance.abs()).clamp_min(0)


def _keys_cubic(distance: Tensor) -> Tensor:
    """Keys' cubic convolution with a = -0.5: Pillow's bicubic (OpenCV's takes a = -0.75, a little sharper)."""
    x = distance.abs()
    near = (1.5 * x - 2.5) * x * x + 1
    far = ((-0.5 * x + 2.5) * x - 4) * x + 2
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _gaussian(sigma: float) -> Callable[[Tensor], Tensor]:
    return lambda distance: torch.exp(-0.5 * (distance / sigma) ** 2)


# Each resampling filter and its support in source pixels.
RESAMPLING_KERNELS = {"linear": (_triangle, 1.0), "cubic": (_keys_cubic, 2.0)}
# A gaussian blur of a whole-pixel upscale, the softening an editor or an image pipeline adds: sigmas of 0.5, 0.75
# and 1 px, each with a support of three sigmas.
BLUR_KERNELS = {f"blur{sigma}": (_gaussian(sigma), 3 * sigma) for sigma in (0.5, 0.75, 1.0)}
_KERNELS = RESAMPLING_KERNELS | BLUR_KERNELS


def axis_sampling(
    length: int, start: float, cells: int, period: float, scale: int, kernel: str = "linear", device=None
) -> AxisSampling:
    """How an upscale by ``scale``, resampled to cells of ``period`` pixels starting at ``start``, shows ``cells``
    cells along an axis of ``length`` pixels, as a resize with the ``kernel`` filter (`RESAMPLING_KERNELS`, or on a
    whole-pixel lattice a blur of `BLUR_KERNELS`) does:
    each pixel weighs the upscale's pixels by the filter at their distance from its centre, the filter widened
    by the shrink factor when shrinking, as Pillow's antialiased resize does. (Unwidened, as OpenCV's resize
    is, the painting misses Pillow's shrinks by two to four times as much; over the real-art set's 3000 cases
    its colour counts came within 2 of the art's in 2605 against 2599, its cells right as often, which is
    within the set's noise.) Taps past the lattice take its edge cells. On a whole-pixel lattice
    (``period == scale``, integer ``start``) each pixel shows one cell.

    Example:
        >>> rows = axis_sampling(5, 1, 2, 2.0, 2)
        >>> rows.cells.tolist(), rows.inside.tolist()
        ([[0], [0], [0], [1], [1]], [False, True, True, True, True])
    """
    if kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be one of {sorted(_KERNELS)}, got {kernel!r}")
    weigh, support = _KERNELS[kernel]
    centre = torch.arange(length, device=device, dtype=torch.float64) + 0.5 - start
    position = centre * scale / period  # in the upscale's pixels
    stretch = max(1.0, scale / period)
    reach = support * stretch
    source = (position - reach + 0.5).floor().unsqueeze(1) + torch.arange(
        math.ceil(2 * reach) + 1, device=device, dtype=torch.float64
    )
    weights = weigh((source + 0.5 - position.unsqueeze(1)) / stretch)
    weights = weights / weights.sum(1, keepdim=True)
    cell = source.clamp(0, cells * scale - 1).long() // scale
    used = weights != 0
    # non-decreasing along the axis, as the bands built from it assume: a pixel whose outer taps fall on the
    # filter's zeros starts at a later cell than the next pixel, whose outer taps reach back past it
    first = torch.where(used, cell, cells).min(1).values.flip(0).cummin(0).values.flip(0).unsqueeze(1)
    tap = torch.where(used, cell - first, 0)
    taps = int(tap.max()) + 1
    gathered = torch.zeros(length, taps, dtype=torch.float64, device=device).scatter_add_(1, tap, weights)
    inside = (centre >= 0) & (centre < cells * period)
    neighbours = (first + torch.arange(taps, device=device)).clamp(max=cells - 1)
    return AxisSampling(neighbours, gathered.float(), inside)


def luma_misfit(cells: Tensor, observed: Tensor, rows: AxisSampling, columns: AxisSampling) -> float:
    """How well the lattice (``rows``, ``columns``), its resampling filter included, explains ``observed``'s luma
    (:math:`(1, C, H, W)`) with the shades of ``cells`` (:math:`(1, C, h, w)`): the mean squared error per pixel
    on the lattice once each shade's luma is fitted by least squares, as `fit_shades` fits it, to the file as it
    is: adding back a bicubic overshoot that the resize clipped, as `fit_shades` does, gave the same result for
    every case of the real-art set's seeds 0-4 (and on the test fixtures missed their colour counts by a little
    more)."""
    _check_cells(cells, observed, rows, columns)
    keys, label = torch.unique(packed_rgb(cells[0, :3]), return_inverse=True)
    count = keys.shape[0]
    prior = srgb_to_ycbcr(unpacked_rgb(keys).double().T.reshape(1, 3, count, 1))[0, :1, :, 0]  # (1, count)
    luma = srgb_to_ycbcr(observed[:, :3].float())[0, :1]
    fit = _shade_fit(luma, _banded(rows, 1), _banded(columns, 1), label, count)
    return fit.error(fit.solve(prior)) / max(fit.observations, 1)


def _padded(axis: AxisSampling, unit: int) -> AxisSampling:
    """``axis`` over whole MCUs: the encoder repeats the last pixel into the padding."""
    index = edge_filled(axis.cells.shape[0], unit, axis.cells.device)
    return AxisSampling(*(field[index] for field in axis))


def _overshoots(rows: AxisSampling, columns: AxisSampling) -> bool:
    return bool((rows.weights < 0).any() or (columns.weights < 0).any())


def _clipped(ycc: Tensor) -> Tensor:
    """YCbCr ``(N, 3, H, W)`` as the image it stands for holds it: RGB clipped to 0-255."""
    return srgb_to_ycbcr(ycbcr_to_srgb(ycc))


def _tiles(image: Tensor, unit: tuple[int, int]) -> Tensor:
    """``(C, H, W)`` with H, W whole MCUs -> ``(T, C, mh, mw)``, row-major."""
    channels, height, width = image.shape
    tiles = image.reshape(channels, height // unit[0], unit[0], width // unit[1], unit[1]).permute(1, 3, 0, 2, 4)
    return tiles.reshape(-1, channels, *unit)


def _painted_along(cells: Tensor, axis: AxisSampling, dim: int) -> Tensor:
    """``cells`` painted along ``dim`` as ``axis`` samples them."""
    painted = cells.index_select(dim, axis.cells[:, 0])
    if axis.cells.shape[1] == 1:  # a whole-pixel lattice: picking is enough
        return painted
    view = [1] * cells.dim()
    view[dim] = -1
    weights = axis.weights.to(cells.dtype)
    painted = painted * weights[:, 0].view(view)
    for tap in range(1, axis.cells.shape[1]):
        painted += cells.index_select(dim, axis.cells[:, tap]) * weights[:, tap].view(view)
    return painted


def _render(cells: Tensor, rows: AxisSampling, columns: AxisSampling) -> Tensor:
    """``(C, h, w)`` cells painted as ``rows`` and ``columns`` sample them: ``(C, H, W)``. Across first, while
    the rows are few: picking whole rows is a copy, picking columns a gather. On a whole-pixel lattice the
    columns are picked as rows of the transposed cells, which takes about half the time on the timing images'
    64-512 cells a side (resampled lattices' taps were as often slower that way as faster)."""
    if columns.cells.shape[1] == 1:
        return _painted_along(_painted_along(cells.mT, columns, 1).mT, rows, 1)
    return _painted_along(_painted_along(cells, columns, 2), rows, 1)


def _tile_cells(axis: AxisSampling, unit: int) -> tuple[Tensor, Tensor]:
    """The pairs (tile, cell) along one axis where a pixel of the tile of ``unit`` pixels takes some of the cell:
    two long ``(P,)``."""
    cells = int(axis.cells.max()) + 1
    tiles = torch.arange(axis.cells.shape[0], device=axis.cells.device).unsqueeze(1) // unit
    pairs = torch.unique((tiles * cells + axis.cells)[axis.weights != 0])
    return pairs // cells, pairs % cells


def _shown(label: Tensor, rows: AxisSampling, columns: AxisSampling, unit: tuple[int, int], count: int) -> Tensor:
    """Which of ``count`` labels each MCU of ``unit`` shows some of: bool ``(T, count)``, MCUs row-major. A pixel
    takes the cells of its row's taps across its column's, so an MCU shows the cells of its rows' cells across its
    columns' cells: every pair of the two axes' (tile, cell) pairs, not every pixel, is looked up."""
    tiles_across = columns.cells.shape[0] // unit[1]
    tile_rows, cell_rows = _tile_cells(rows, unit[0])
    tile_columns, cell_columns = _tile_cells(columns, unit[1])
    labels = label.index_select(0, cell_rows).index_select(1, cell_columns)
    tiles = tile_rows.unsqueeze(1) * tiles_across + tile_columns
    shown = torch.zeros(rows.cells.shape[0] // unit[0] * tiles_across * count, dtype=torch.bool, device=label.device)
    shown[(tiles * count + labels).flatten()] = True
    return shown.view(-1, count)


def _share(chosen: Tensor, label: Tensor, tile_rows: list[Tensor], tile_columns: list[Tensor]) -> Tensor:
    """How much of each pixel of the MCUs whose rows and columns sample the cells as ``tile_rows`` and
    ``tile_columns`` (`AxisSampling`'s cells and weights, ``(n, mh, T)`` and ``(n, mw, T)``) is painted from the
    cells whose ``label`` (:math:`(h, w)`) is ``chosen`` (bool, one per label): ``(n, 1, mh, mw)``. Only the cells
    those pixels show are looked up, not the whole image."""
    (row_cells, row_weights), (column_cells, column_weights) = tile_rows, tile_columns
    flat, width = label.flatten(), label.shape[1]
    share = 0
    for row_tap in range(row_cells.shape[-1]):
        for column_tap in range(column_cells.shape[-1]):
            rows, columns = row_cells[..., row_tap].unsqueeze(2), column_cells[..., column_tap].unsqueeze(1)
            # flat lookups: indexing with two index tensors takes twice as long
            painted = chosen.take(flat.take(rows * width + columns)).float()
            if row_cells.shape[-1] * column_cells.shape[-1] > 1:
                painted = painted * row_weights[..., row_tap].unsqueeze(2) * column_weights[..., column_tap].unsqueeze(1)
            share = share + painted
    return share.unsqueeze(1)


class _BandedAxis(NamedTuple):
    """One axis of the lattice as a banded matrix over the cells: row ``i`` (a pixel, or a chroma sample of
    ``factor`` pixels) is ``weights[i, t]`` times cell ``start[i] + t``; rows off the lattice are all 0."""

    start: Tensor  # long (n,)
    weights: Tensor  # float64 (n, width)


def _banded(axis: AxisSampling, factor: int) -> _BandedAxis:
    """``axis`` as the encoder samples it: each of the axis's complete groups of ``factor`` pixels averaged.
    A group with a pixel off the lattice is left out (it shows the image itself), and so is a last, partial one
    (the encoder fills it with copies of the last pixel)."""
    groups = axis.cells.shape[0] // factor
    cells, weights = (field[: groups * factor].view(groups, -1) for field in axis[:2])
    inside = axis.inside[: groups * factor].view(groups, factor)
    start = cells[:, 0]  # the lattice's cells only go forward
    width = int((cells - start.unsqueeze(1)).max()) + 1 if groups else 1
    banded = torch.zeros(groups, width, dtype=torch.float64, device=start.device)
    banded.scatter_add_(1, cells - start.unsqueeze(1), weights.double() / factor)
    return _BandedAxis(start, banded * inside.all(1, keepdim=True))


def _decoded_average(samples: _BandedAxis, length: int) -> _BandedAxis:
    """What libjpeg's decoder shows of the ``samples`` of an axis of ``length`` pixels subsampled by 2, averaged
    over each sample's two pixels again: 3/4 of the sample and 1/8 of each neighbour (the first and last sample
    repeated past the ends). A sample beside a left-out or last, partial one is left out too."""
    count = samples.start.shape[0]
    index = torch.arange(count, device=samples.start.device)
    before = (index - 1).clamp(min=0)
    after = (index + 1).clamp(max=-(-length // 2) - 1)
    complete = samples.weights.sum(1) > 0
    kept = complete & complete[before] & (after < count) & complete[after.clamp(max=count - 1)]
    after = after.clamp(max=count - 1)
    start = samples.start[before]  # the lattice's cells only go forward
    width = samples.weights.shape[1] + int((samples.start[after] - start).max()) if count else 1
    weights = torch.zeros(count, width, dtype=torch.float64, device=start.device)
    for neighbour, share in ((before, 0.125), (index, 0.75), (after, 0.125)):
        offset = (samples.start[neighbour] - start).unsqueeze(1)
        for term in range(samples.weights.shape[1]):
            weights.scatter_add_(1, offset + term, share * samples.weights[neighbour, term : term + 1])
    return _BandedAxis(start, weights * kept.unsqueeze(1))


def _transposed_product(planes: Tensor, axis: _BandedAxis, cells: int, dim: int) -> Tensor:
    """``M^T planes`` along ``dim`` for the banded ``M`` of ``axis``: ``cells`` long there."""
    shape = list(planes.shape)
    shape[dim] = cells
    total = planes.new_zeros(shape)
    view = [1] * planes.dim()
    view[dim] = -1
    for offset in range(axis.weights.shape[1]):
        weights = axis.weights[:, offset]
        if offset == 0 or bool(weights.any()):
            index = (axis.start + offset).clamp(max=cells - 1)
            total.index_add_(dim, index, planes * weights.to(planes.dtype).view(view))
    return total


def _gram_bands(axis: _BandedAxis, cells: int) -> dict[int, Tensor]:
    """``M^T M`` of the banded ``M`` by diagonals: ``{d: g}`` with ``g[i] = (M^T M)[i, i + d]``, 0 past the end."""
    width = axis.weights.shape[1]
    bands = {}
    for offset in range(width):
        band = torch.zeros(cells + width, dtype=torch.float64, device=axis.start.device)
        for term in range(width - offset):
            band.index_add_(0, axis.start + term, axis.weights[:, term] * axis.weights[:, term + offset])
        if offset == 0 or bool(band.any()):  # on a whole-pixel lattice a pixel's second cell has weight 0
            bands[offset] = band[:cells]
            bands[-offset] = torch.cat([band.new_zeros(offset), band[: cells - offset]]) if offset else band[:cells]
    return bands


def _shade_normal_equations(
    label: Tensor, count: int, rows: _BandedAxis, columns: _BandedAxis, projected: Tensor
) -> tuple[Tensor, Tensor]:
    """The least-squares problem of a group of planes as the ``count`` shades of ``label`` (:math:`(h, w)`)
    painted through ``rows`` and ``columns``, from the planes projected back onto the cells (`_projected`,
    :math:`(C, h, w)`): the Gram matrix :math:`(count, count)` and the right-hand sides :math:`(C, count)`. The
    painting is separable, so both come from the two axes' bands."""
    height, width = label.shape
    label = label.int()
    right = torch.stack([torch.bincount(label.flatten(), plane.flatten(), count) for plane in projected])
    pairs = torch.zeros(count * count, dtype=torch.float64, device=label.device)
    column_bands = _gram_bands(columns, width)
    for down, row_band in _gram_bands(rows, height).items():
        # the pairs of cells (down, across) apart are those (-down, -across) apart swapped: the first half will do
        for across in (offset for offset in column_bands if down > 0 or (down == 0 and offset >= 0)):
            columns_from = slice(max(0, -across), width - max(0, across))
            first = label[: height - down, columns_from]
            second = label[down:, max(0, across) : width + min(0, across)]
            products = row_band[: height - down].unsqueeze(1) * column_bands[across][columns_from]
            pairs += torch.bincount((first * count + second).flatten(), products.flatten(), count * count) * (
                1 if down or across else 0.5
            )
    pairs = pairs.view(count, count)
    return pairs + pairs.T, right


def _projected(planes: Tensor, rows: _BandedAxis, columns: _BandedAxis, height: int, width: int) -> Tensor:
    """``M^T planes``: the planes (:math:`(C, n, m)`) painted back onto the ``height`` x ``width`` cells."""
    # each projected value sums a few pixels, so single precision is exact enough; the sums over cells are not
    return _transposed_product(_transposed_product(planes, columns, width, -1), rows, height, -2).double()


class _Pairs(NamedTuple):
    """The cells' Gram matrix of a separable painting by offset: cell ``(y, x)`` and cell
    ``(y + down[o], x + across[o])`` are painted together with weight ``rows[o, y] * columns[o, x]``."""

    down: Tensor  # long (O,)
    across: Tensor  # long (O,)
    rows: Tensor  # float64 (O, h)
    columns: Tensor  # float64 (O, w)


def _pairs(rows: _BandedAxis, columns: _BandedAxis, height: int, width: int) -> _Pairs:
    row_bands, column_bands = _gram_bands(rows, height), _gram_bands(columns, width)
    offsets = [(down, across) for down in row_bands for across in column_bands]
    return _Pairs(
        torch.tensor([down for down, _ in offsets], device=rows.start.device),
        torch.tensor([across for _, across in offsets], device=rows.start.device),
        torch.stack([row_bands[down] for down, _ in offsets]),
        torch.stack([column_bands[across] for _, across in offsets]),
    )


@dataclass(frozen=True)
class _ShadeFit:
    """One group of planes of the file (its luma, or its chroma samples) as least squares over the shades painted
    on the lattice, kept so that moving a few cells to other shades changes it locally (`_moved`)."""

    observations: int  # values the painting reaches
    energy: float  # their sum of squares
    projected: Tensor  # float64 (C, h * w), `_projected`
    pairs: _Pairs
    gram: Tensor  # float64 (K, K)
    right: Tensor  # float64 (C, K)

    def solve(self, prior: Tensor) -> Tensor:
        """The shades' colours (:math:`(C, K)`) that best explain the planes, ``prior`` where nothing does."""
        ridge = _RIDGE * self.gram.diagonal().clamp_min(1.0)
        return torch.linalg.solve(self.gram + torch.diag(ridge), (self.right + ridge * prior).T).T

    def error(self, colours: Tensor) -> float:
        """The sum of squares the planes miss by with the shades painted as ``colours``."""
        explained = 2 * (colours * self.right).sum() - torch.einsum("ck,kl,cl->", colours, self.gram, colours)
        return self.energy - float(explained)


def _shade_fit(planes: Tensor, rows: _BandedAxis, columns: _BandedAxis, label: Tensor, count: int) -> _ShadeFit:
    planes = planes[:, : rows.start.shape[0], : columns.start.shape[0]]
    height, width = label.shape
    seen = rows.weights.any(1).unsqueeze(1) & columns.weights.any(1)
    projected = _projected(planes, rows, columns, height, width)
    gram, right = _shade_normal_equations(label, count, rows, columns, projected)
    return _ShadeFit(
        int(seen.sum()) * planes.shape[0],
        float((planes * seen).square().sum(dtype=torch.float64)),
        projected.flatten(1),
        _pairs(rows, columns, height, width),
        gram,
        right,
    )


def fit_shades(
    cells: Tensor, observed: Tensor, rows: AxisSampling, columns: AxisSampling, factors: tuple[int, int]
) -> Tensor:
    r"""Each shade of ``cells`` recoloured as the file says it is, and the shades the file does not need dropped.

    The shades' YCbCr are fitted jointly by least squares, with the cells painted on the lattice (``rows``,
    ``columns``): luma against the file's pixels; chroma subsampled by ``factors`` as the encoder stores it,
    spread back as libjpeg's decoder does and averaged over each sample's pixels again (3/4 of a sample and 1/8
    of each neighbour along a subsampled axis), against the file's chroma averaged the same way, each sample
    counting for its pixels. Pixels off the lattice show the image itself, and what they reach is left out. Where
    the lattice's filter overshoots (bicubic), the resize clipped what passed 0 or 255: painted from ``cells``
    as they come, that is added back to the file first.

    Without subsampled chroma, where a cell's pixels are mostly its own, a shade may first be split: a palette
    merges neighbouring steps of a ramp that JPEG's noise (and a resize's blur) joins at 2-3 px. From the heaviest
    shade down, its cells' luma as the file shows it (what the fit misses there, over the cell's pixels, added to
    the shade's) is sorted and cut where the two sides' sizes times the squared difference of their means is
    largest (Otsu), each side at least 1/20 of the cells and 3. Where the cut leaves `_SPLIT_SHARE` of the luma's
    spread between the sides (noise around one colour leaves about 2/pi, 0.64) and their means `_SPLIT_STEP`
    levels apart (`_SPLIT_SHARE_RESIZED` and `_SPLIT_STEP_RESIZED` on a resized file's lattice), in a shade of
    `_SPLIT_LEAST` cells or more, the upper side becomes a shade of its own when the shades fitted again miss the
    file by more than a shade's price less (below); both sides are then tried again after the rest.

    Then, from the shade with the fewest cells up, each shade's cells are weighed against the other shades, the
    rest of the cells as they are, in squared error counted in each fit's noise variance (its mean squared
    error per observation: luma and chroma differ). First its cells that another shade explains better go there,
    if the shades fitted again agree. Then the shade is tried without: its other cells each go to the shade
    that explains them best, the shades are fitted again, and the shade goes when the error grows by no more
    than its price, :math:`3 \ln n` over :math:`n` observations (`_PARAMETERS_PER_SHADE`). A shade made of
    cells their neighbours bled into, which the painted neighbours explain, goes; one the art has, whose cells
    no other shade explains, stays. The largest shades are not tried (`_MOST_TRIED_SHARE`, `_MOST_TRIED`).

    Args:
        cells: RGBA uint8 :math:`(1, 4, h, w)`, every cell opaque.
        observed: RGB(A) uint8 :math:`(1, C, H, W)`: the decoded file the cells were read from.
        rows: `axis_sampling` of the image's height over the ``h`` cells.
        columns: `axis_sampling` of its width over the ``w`` cells.
        factors: the file's chroma subsampling ``(vertical, horizontal)``, each 1 or 2.

    Returns:
        ``cells`` with each shade's colour fitted: fewer colours, as many, or (split) more.
    """
    _check_cells(cells, observed, rows, columns)
    check_factors(factors)
    keys, label = torch.unique(packed_rgb(cells[0, :3]), return_inverse=True)
    count = keys.shape[0]
    prior = srgb_to_ycbcr(unpacked_rgb(keys).double().T.reshape(1, 3, count, 1))[0, :, :, 0]  # (3, count)
    file = observed[:, :3].float()
    if _overshoots(rows, columns):
        # no painting linear in the colours clips; the cells as they come say roughly how far past 0 and 255
        painted = _render(cells[0, :3].float(), rows, columns)
        on_lattice = rows.inside.unsqueeze(1) & columns.inside.unsqueeze(0)
        file = file + ((painted - painted.clamp(0, 255)) * on_lattice)[None]
    file = srgb_to_ycbcr(file)[0]
    chroma_rows, chroma_columns = (
        _decoded_average(_banded(axis, factor), axis.cells.shape[0]) if factor == 2 else _banded(axis, 1)
        for axis, factor in ((rows, factors[0]), (columns, factors[1]))
    )
    chroma_planes = block_averages(file[1:], factors)

    def fitted(label: Tensor, count: int) -> tuple[_ShadeFit, ...]:
        return (
            _shade_fit(file[:1], _banded(rows, 1), _banded(columns, 1), label, count),
            _shade_fit(chroma_planes, chroma_rows, chroma_columns, label, count),
        )

    fits = fitted(label, count)
    ycc = _solved(fits, prior)
    if factors == (1, 1):
        whole_pixel = rows.cells.shape[1] == columns.cells.shape[1] == 1
        least = (_SPLIT_SHARE, _SPLIT_STEP) if whole_pixel else (_SPLIT_SHARE_RESIZED, _SPLIT_STEP_RESIZED)
        fits, label, ycc, prior = _split_mixed(fits, label, ycc, prior, fitted, *least)
    label, ycc = _drop_unneeded(fits, label, ycc, prior)
    shades = ycbcr_to_srgb(ycc.reshape(1, 3, -1, 1))[0, :, :, 0].round().to(torch.uint8)  # (3, count)
    return torch.cat([shades[:, label].unsqueeze(0), cells[:, 3:]], 1)


# the YCbCr channels of `fit_shades`'s two fits: luma, chroma
_CHANNELS = (slice(0, 1), slice(1, 3))


class _Reach(NamedTuple):
    """Cells of `_drop_unneeded` (flat indices, :math:`(n,)`) and, per offset of a fit's `_Pairs`
    (:math:`(O, n)`), the cell each is painted together with, that cell's label and the pair's weight (0 past
    the edges)."""

    cells: Tensor
    neighbour: Tensor
    labels: Tensor
    weight: Tensor

    def part(self, kept: Tensor) -> _Reach:
        return _Reach(self.cells[kept], self.neighbour[:, kept], self.labels[:, kept], self.weight[:, kept])

    def relabelled(self, flat: Tensor) -> _Reach:
        return self._replace(labels=flat[self.neighbour])


def _reach(pairs: _Pairs, flat: Tensor, cells: Tensor, height: int, width: int) -> _Reach:
    row, column = cells // width, cells % width
    down, across = pairs.down.unsqueeze(1) + row, pairs.across.unsqueeze(1) + column
    inside = (down >= 0) & (down < height) & (across >= 0) & (across < width)
    neighbour = down.clamp(0, height - 1) * width + across.clamp(0, width - 1)
    return _Reach(cells, neighbour, flat[neighbour], pairs.rows[:, row] * pairs.columns[:, column] * inside)


def _moved(fit: _ShadeFit, reach: _Reach, before: Tensor, after: Tensor) -> _ShadeFit:
    """``fit`` with the cells of ``reach``, labelled ``before`` (:math:`(n,)`), relabelled ``after`` (flat
    labels of every cell). Only the pairs of cells they are in change."""
    count = fit.gram.shape[0]
    blocks = count * count
    now = after[reach.neighbour]
    unmoved = reach.labels == now
    pairs_before = before * count + reach.labels
    pairs_after = after[reach.cells] * count + now
    # the pairs from the moved cells both ways, and (a second block, transposed) those towards them from the
    # unmoved cells, the same pairs seen from the other end
    pairs = torch.cat([pairs_after.flatten(), pairs_before.flatten(), pairs_after[unmoved] + blocks,
                       pairs_before[unmoved] + blocks])
    weight, towards = reach.weight.flatten(), reach.weight[unmoved]
    weights = torch.cat([weight, -weight, towards, -towards])
    change = torch.bincount(pairs, weights, 2 * blocks).view(2, count, count)
    projected = fit.projected[:, reach.cells]
    right = fit.right.index_add(1, after[reach.cells], projected).index_add(1, before, -projected)
    return replace(fit, gram=fit.gram + change[0] + change[1].T, right=right)


def _solved(fits: tuple[_ShadeFit, ...], prior: Tensor) -> Tensor:
    """The shades' YCbCr (:math:`(3, K)`) that best explain the file, each fit solved for its channels."""
    return torch.cat([fit.solve(prior[part]) for fit, part in zip(fits, _CHANNELS)])


def _noise_scales(fits: tuple[_ShadeFit, ...], ycc: Tensor) -> list[float]:
    """One over each fit's noise variance, its mean squared error per observation as ``fits`` fit ``ycc``
    (:math:`(3, K)`): each fit's error counts in its own, as JPEG steps chroma more coarsely than luma and the
    chroma model is the rougher of the two."""
    return [fit.observations / max(fit.error(ycc[part]), 1e-12) for fit, part in zip(fits, _CHANNELS)]


def _misfit(scales: list[float], fits: tuple[_ShadeFit, ...], ycc: Tensor) -> float:
    """How far ``fits`` miss with the colours ``ycc``, counted in the noise variances of `_noise_scales`."""
    return sum(scale * fit.error(ycc[part]) for scale, fit, part in zip(scales, fits, _CHANNELS))


def _shade_price(fits: tuple[_ShadeFit, ...]) -> float:
    """What a shade costs in `_misfit`'s units (`_PARAMETERS_PER_SHADE`)."""
    return _PARAMETERS_PER_SHADE * math.log(sum(fit.observations for fit in fits))


def _unexplained(fit: _ShadeFit, reach: _Reach, colours: Tensor) -> tuple[Tensor, Tensor]:
    """What ``fit``'s planes, projected back onto the cells of ``reach``, miss with the shades painted as
    ``colours`` (:math:`(C, K)`), and each cell's own weight in the painting: :math:`(C, n)` and :math:`(n,)`."""
    weight = reach.weight.to(colours.dtype)
    painted = torch.einsum("con,on->cn", colours[:, reach.labels], weight)
    missed = fit.projected[:, reach.cells].to(colours.dtype) - painted
    return missed, weight[(fit.pairs.down == 0) & (fit.pairs.across == 0)].sum(0)


def _split_mixed(
    fits: tuple[_ShadeFit, ...],
    label: Tensor,
    ycc: Tensor,
    prior: Tensor,
    fitted: Callable[[Tensor, int], tuple[_ShadeFit, ...]],
    least_share: float,
    least_step: float,
) -> tuple[tuple[_ShadeFit, ...], Tensor, Tensor, Tensor]:
    """`fit_shades`'s first step where the file kept every pixel's chroma: each shade of ``label``
    (:math:`(h, w)`) that holds two of the art's colours, whose cut leaves ``least_share`` of its luma's spread
    between the sides and whose sides' luma lie ``least_step`` apart at least, split in two, and both sides tried
    again. The fits, labels, colours (:math:`(3, K)`) and priors after it."""
    height, width = label.shape
    scales = _noise_scales(fits, ycc)
    error, price = _misfit(scales, fits, ycc), _shade_price(fits)
    count = ycc.shape[1]
    waiting = torch.bincount(label.flatten(), minlength=count).argsort(descending=True, stable=True).tolist()
    while waiting:
        shade = waiting.pop(0)
        flat = label.flatten()
        cells = (flat == shade).nonzero().flatten()
        reach = _reach(fits[0].pairs, flat, cells, height, width)
        missed, own = _unexplained(fits[0], reach, ycc[:1])
        shown = own > 0
        luma = (ycc[0, shade] + missed[0] / own.clamp_min(1e-12))[shown]
        if luma.numel() < _SPLIT_LEAST:
            continue
        luma, order = luma.sort()
        # Otsu: the cut that leaves the two sides' means furthest apart, weighed by their sizes
        size = luma.numel()
        below = torch.arange(1, size, dtype=luma.dtype, device=luma.device)
        sums = luma.cumsum(0)[:-1]
        apart = (sums[-1] + luma[-1] - sums) / (size - below) - sums / below
        between = below * (size - below) / size * apart**2
        side = max(3, size // 20)
        between[: side - 1] = between[size - side :] = 0
        cut = int(between.argmax())
        spread = float((luma - luma.mean()).square().sum())
        if float(between[cut]) < least_share * spread or float(apart[cut]) < least_step:
            continue
        split = flat.index_put((cells[shown][order[cut + 1 :]],), torch.tensor(count, device=flat.device))
        split_prior = torch.cat([prior, prior[:, shade : shade + 1]], 1)
        split_fits = fitted(split.view(height, width), count + 1)
        split_ycc = _solved(split_fits, split_prior)
        split_error = _misfit(scales, split_fits, split_ycc)
        if error - split_error > price:
            fits, label, ycc, prior, error = split_fits, split.view(height, width), split_ycc, split_prior, split_error
            # a shade of three steps of a ramp gives one up at a time
            waiting += [shade, count]
            count += 1
    return fits, label, ycc, prior


def _move(cells_of: list[Tensor], counts: Tensor, shade: int, cells: Tensor, to: Tensor) -> None:
    """Moves ``cells`` of ``shade`` to the shades ``to`` in ``cells_of`` (each shade's cells) and ``counts``."""
    cells_of[shade] = cells_of[shade][~torch.isin(cells_of[shade], cells)]
    for target in torch.unique(to).tolist():
        cells_of[target] = torch.cat([cells_of[target], cells[to == target]])
    counts.index_add_(0, to, torch.ones_like(to))
    counts[shade] -= cells.numel()


def _drop_unneeded(fits: tuple[_ShadeFit, ...], label: Tensor, ycc: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
    """`fit_shades`'s second step on the shades of ``label`` (:math:`(h, w)`), fitted as ``ycc``
    (:math:`(3, K)`): the labels and the colours after it."""
    height, width = label.shape
    count = ycc.shape[1]
    device = label.device
    flat = label.flatten()
    scales = _noise_scales(fits, ycc)

    def tried(reaches: list[_Reach], after: Tensor) -> tuple[float, tuple[_ShadeFit, ...], Tensor]:
        before = flat[reaches[0].cells]
        moved = tuple(_moved(fit, reach, before, after) for fit, reach in zip(fits, reaches))
        moved_ycc = _solved(moved, prior)
        return _misfit(scales, moved, moved_ycc) - error, moved, moved_ycc

    error, price = _misfit(scales, fits, ycc), _shade_price(fits)
    counts = torch.bincount(flat, minlength=count)
    order = sorted(range(count), key=counts.tolist().__getitem__)  # stable: ties in colour order
    most = min(_MOST_TRIED_SHARE * flat.numel(), _MOST_TRIED)
    # each shade's cells, where it may be tried
    tried_cells = (counts <= most)[flat].nonzero().flatten()
    tried_counts = torch.where(counts <= most, counts, 0)
    cells_of = list(torch.split(tried_cells[flat[tried_cells].argsort(stable=True)], tried_counts.tolist()))

    def assessed(cells: Tensor, alive: Tensor, shade: int) -> tuple[list[_Reach], Tensor, Tensor]:
        """The cells' reach in each fit, and each cell's least cost of going to another live shade and which."""
        reaches = [_reach(fit.pairs, flat, cells, height, width) for fit in fits]
        # With the other cells as they are, moving one cell's colour by d changes its fit's error by
        # |d|^2 * (its own weight) - 2 d . (what the planes miss, projected back onto the cell).
        cost = torch.zeros(count, cells.numel(), device=device)
        for scale, fit, part, reach in zip(scales, fits, _CHANNELS, reaches):
            colours = ycc[part].float()
            missed, own = _unexplained(fit, reach, colours)
            step = colours - colours[:, shade : shade + 1]  # (C, K)
            cost += scale * (step.square().sum(0).unsqueeze(1) * own - 2 * step.T @ missed)
        cost[~alive | (torch.arange(count, device=device) == shade)] = torch.inf
        best, to = cost.min(0)
        return reaches, best, to

    for shade in order:
        cells = cells_of[shade]
        alive = counts > 0
        if cells.numel() == 0 or int(alive.sum()) < 2 or int(counts[shade]) > most:
            continue
        reaches, best, to = assessed(cells, alive, shade)
        # 1. The cells another shade explains better go there.
        better = best < 0
        if bool(better.any()):
            relabelled = flat.index_put((cells[better],), to[better])
            change, moved, moved_ycc = tried([reach.part(better) for reach in reaches], relabelled)
            if change <= 0:
                flat, fits, ycc, error = relabelled, moved, moved_ycc, error + change
                _move(cells_of, counts, shade, cells[better], to[better])
                kept = ~better
                reaches = [reach.part(kept).relabelled(flat) for reach in reaches]
                best, to, cells = best[kept], to[kept], cells[kept]
        # 2. The shade goes if the file without it misses by no more than its price. The cost of moving its cells
        # tells most shades that stay at a glance: refitted, the shades come nearer, but not this far.
        if cells.numel() == 0 or float(best.sum()) > _CLEARLY_NEEDED * price:
            continue
        dropped = flat.index_put((cells,), to)
        change, moved, moved_ycc = tried(reaches, dropped)
        if change <= price:
            flat, fits, ycc, error = dropped, moved, moved_ycc, error + change
            _move(cells_of, counts, shade, cells, to)
    return flat.view(height, width), ycc


class FileCoding(NamedTuple):
    """What the encoder saw of a decoded JPEG, on whole MCUs (the last row and column repeated into the padding,
    as it pads them): its YCbCr, and its MCUs' DCT coefficients before rounding."""

    ycc: Tensor  # float (3, H', W')
    coefficients: Tensor  # float (T, K, 8, 8), `mcu_coefficients`


def file_coding(observed: Tensor, factors: tuple[int, int]) -> FileCoding:
    """`FileCoding` of the decoded JPEG ``observed`` (RGB(A) uint8 :math:`(1, C, H, W)`) whose chroma was subsampled
    by ``factors``: what `merge_unneeded_shades` compares its paintings with, the same for every call on one file."""
    unit = mcu_size(factors)
    height, width = observed.shape[-2:]
    ycc = srgb_to_ycbcr(observed[:, :3].float())
    padding = (0, -width % unit[1], 0, -height % unit[0])
    ycc = (F.pad(ycc, padding, mode="replicate") if any(padding) else ycc)[0]
    return FileCoding(ycc, image_coefficients(ycc, factors))


def _check_cells(cells: Tensor, observed: Tensor, rows: AxisSampling, columns: AxisSampling) -> None:
    if cells.ndim != 4 or cells.shape[:2] != (1, 4) or cells.dtype != torch.uint8:
        raise ValueError(f"`cells` must be uint8 (1, 4, h, w), got {cells.dtype} {tuple(cells.shape)}")
    if not bool((cells[:, 3] >= 128).all()):
        raise ValueError("`cells` must be opaque: a JPEG has no transparency")
    height, width = observed.shape[-2:]
    if (rows.cells.shape[0], columns.cells.shape[0]) != (height, width):
        sampled = f"{rows.cells.shape[0]} x {columns.cells.shape[0]}"
        raise ValueError(f"the axes sample {sampled} px, the image is {height} x {width}")


def _score(change: Tensor, missing: Tensor, weight: Tensor, chroma_blocks: Tensor, lenient: bool) -> Tensor:
    """`merge_unneeded_shades`'s score of each candidate's ``change`` ``(K, n, 8, 8)`` of the stored blocks whose
    ``missing`` coefficients ``(n, 8, 8)`` count ``weight`` ``(n, 1, 1)`` times and are chroma where
    ``chroma_blocks`` ``(n,)``, luma elsewhere: ``(K,)``, at most 0 for a change that explains the file at least as
    well (``lenient``: see `_CHROMA_LENIENCY`), inf for one the rounding swallows whole, which says nothing."""
    # summed block by block first: the scores below are sums over the same blocks, and a chroma block's weight
    # multiplies its whole sum
    block_weight = weight.flatten()
    block_sums = (change * missing).flatten(2).sum(2) * block_weight, (change * change).flatten(2).sum(2) * block_weight

    def score_of(blocks: Tensor | slice, unchanged: float) -> Tensor:
        explained, changed = (sums[:, blocks].sum(1) for sums in block_sums)
        return torch.where(changed > 0, 1 - 2 * explained / changed.clamp_min(1e-12), unchanged)

    score = score_of(slice(None), torch.inf)
    if lenient:
        # a part that the change leaves as it was is as explained as can be
        agrees = (score_of(~chroma_blocks, -1.0) <= 0) & (score_of(chroma_blocks, -1.0) <= _CHROMA_LENIENCY)
        score = torch.where(agrees, score.clamp(max=0), score)
    return score


def merge_unneeded_shades(
    cells: Tensor,
    observed: Tensor,
    rows: AxisSampling,
    columns: AxisSampling,
    quantization: Tensor,
    factors: tuple[int, int],
    coding: FileCoding | None = None,
) -> Tensor:
    r"""Recolour each shade the JPEG does not need with the heavier colour that explains the file better.

    The cells are painted onto the image's lattice (``rows``, ``columns``), clipped to 0-255 where its filter
    overshoots (bicubic), and encoded as the file was: DCT coefficients rounded to its steps (`kernels.jpeg_codec`).
    From the shade with the fewest cells up, each is tried as each of its `_CANDIDATES` nearest (`colour_distance`)
    colours with more cells (`_CANDIDATES_SUBSAMPLED` in a file with subsampled chroma), on the MCUs it reaches.
    Let ``D`` be what that changes in the stored coefficients and ``R`` what the stored coefficients still miss of
    ``observed``'s (both in YCbCr levels, a chroma coefficient counted once per pixel it covers): the change
    explains the file at least as well when :math:`\|R - D\|^2 \le \|R\|^2`, i.e. when
    :math:`1 - 2\langle D, R\rangle / \|D\|^2 \le 0`. In a file with subsampled chroma the change also counts
    (and scores at most 0) when its luma coefficients alone score at most 0 and its chroma ones at most
    `_CHROMA_LENIENCY`. The lowest such score wins, and the next shade sees the result. Ties go to the nearer
    colour, then the lower ``0xRRGGBB``, so the result is deterministic.

    Args:
        cells: RGBA uint8 :math:`(1, 4, h, w)`, every cell opaque, one palette colour per cell.
        observed: RGB(A) uint8 :math:`(1, C, H, W)`: the decoded file the cells were read from.
        rows: `axis_sampling` of the image's height over the ``h`` cells.
        columns: `axis_sampling` of its width over the ``w`` cells.
        quantization: :math:`(3, 8, 8)` the file's quantisation tables (Y, Cb, Cr).
        factors: the file's chroma subsampling ``(vertical, horizontal)``.
        coding: `file_coding` of ``observed``, where the caller has it from an earlier call on the same file.

    Returns:
        ``cells`` with the unneeded shades recoloured: its colours a subset of the input's.
    """
    _check_cells(cells, observed, rows, columns)
    device = cells.device
    unit = mcu_size(factors)
    steps = block_steps(quantization.to(device), factors)
    # a chroma coefficient stands for fv * fh pixels, a luma one for one
    per_pixel = torch.ones(steps.shape[0], 1, 1, device=device)
    per_pixel[-2:] = factors[0] * factors[1]
    block_channel = torch.tensor([0] * (steps.shape[0] - 2) + [1, 2], device=device)
    subsampled = factors != (1, 1)
    rows, columns = _padded(rows, unit[0]), _padded(columns, unit[1])
    keys, label = torch.unique(packed_rgb(cells[0, :3]), return_inverse=True)
    count = keys.shape[0]
    colours = unpacked_rgb(keys).float()
    ycc = srgb_to_ycbcr(colours.T.reshape(1, 3, count, 1))[0, :, :, 0].T  # (count, 3)

    file_ycc, file_coefficients = coding if coding is not None else file_coding(observed, factors)
    if file_ycc.shape[-2:] != (rows.cells.shape[0], columns.cells.shape[0]):
        raise ValueError(f"`coding` is of a {tuple(file_ycc.shape[-2:])} file, not of this one")
    on_lattice = rows.inside.unsqueeze(1) & columns.inside.unsqueeze(0)
    # A filter with negative lobes (bicubic) overshoots at edges, past 0 or 255 beside white or black, and the
    # resized image the encoder saw had that clipped: painted unclipped, white beside black asked for a darker
    # white there, which a shade of the art's white made from those cells gave it.
    overshoots = _overshoots(rows, columns)
    unclipped = _render(ycc.T[:, label], rows, columns)
    painted = torch.where(on_lattice, _clipped(unclipped[None])[0] if overshoots else unclipped, file_ycc)
    coefficients = image_coefficients(painted, factors)
    stored = torch.round(coefficients / steps) * steps
    # The encoder pads the last MCUs with the last row and column, and so does `_padded` with the cells': the file's
    # own are taken as the decoder would show them there.
    missing = file_coefficients - stored
    # each MCU's blocks in turn, (T * K, 8, 8): a block is looked up by one flat index
    coefficients, stored, missing = (field.flatten(0, 1) for field in (coefficients, stored, missing))
    tiles_down, tiles_across = rows.cells.shape[0] // unit[0], columns.cells.shape[0] // unit[1]
    shown = _shown(label, rows, columns, unit, count)  # a shade is only tried on its own MCUs
    # the cells and weights of each MCU's rows and columns, which `_share` looks up
    tile_rows = [field.view(tiles_down, unit[0], *field.shape[1:]) for field in rows[:2]]
    tile_columns = [field.view(tiles_across, unit[1], *field.shape[1:]) for field in columns[:2]]
    inside = _tiles(on_lattice.float()[None], unit)
    unclipped_tiles, file_tiles = (_tiles(unclipped, unit), _tiles(file_ycc, unit)) if overshoots else (None, None)

    def recoloured(chosen: Tensor, tiles: Tensor, steps_to: Tensor) -> tuple[Tensor, ...]:
        """The blocks of the MCUs ``tiles`` that the cells of the ``chosen`` labels reach (their flat index among
        all MCUs' blocks, and which block of its MCU each is), and their coefficients and the change of what is
        stored with those cells' colour moved by each of ``steps_to`` (YCbCr) (``K``); where the painting
        overshoots, the tiles' unclipped painting with each move ``(K, n, 3, mh, mw)`` (else None)."""
        down, across = tiles // tiles_across, tiles % tiles_across
        tile_fields = [field[down] for field in tile_rows], [field[across] for field in tile_columns]
        share = _share(chosen, label, *tile_fields) * inside[tiles]
        # the coefficients are linear in the painted colours: a unit step of the cells' colour adds this much, to
        # these blocks
        unit_step = mcu_coefficients(share.expand(-1, 3, -1, -1), factors, offset=0.0)
        local, block = (unit_step.flatten(2).abs().amax(2) != 0).nonzero().unbind(1)
        blocks = unit_step.shape[1]
        at = tiles[local] * blocks + block
        unit_step = unit_step.flatten(0, 1).index_select(0, local * blocks + block)
        moved = None
        if overshoots:
            # clipping is not linear: each move's tiles are painted and encoded again
            moved = unclipped_tiles[tiles] + steps_to[:, None, :, None, None] * share
            clipped = _clipped(moved.flatten(0, 1)).view(moved.shape)
            repainted = torch.where(inside[tiles] > 0, clipped, file_tiles[tiles])
            trial = mcu_coefficients(repainted.flatten(0, 1), factors).unflatten(0, moved.shape[:2])[:, local, block]
        else:
            trial = coefficients.index_select(0, at) + steps_to[:, block_channel[block], None, None] * unit_step
        step = steps[block]
        change = torch.round(trial / step) * step - stored.index_select(0, at)
        return at, block, trial, change, moved

    target = torch.arange(count, device=device)
    nearest = _CANDIDATES_SUBSAMPLED if subsampled else _CANDIDATES
    lab = srgb_to_lab(colours.to(torch.float64))
    gaps = colour_distance(lab, lab)  # looked up for each shade below, not measured again
    counts = torch.bincount(label.flatten(), minlength=count).tolist()
    alive = [True] * count
    for shade in sorted(range(count), key=counts.__getitem__):  # stable: ties in colour order
        heavier = [colour for colour in range(count) if alive[colour] and counts[colour] > counts[shade]]
        if not alive[shade] or not heavier:
            continue
        heavier = torch.tensor(heavier, device=device)
        candidates = heavier[gaps[shade, heavier].argsort(stable=True)[:nearest]]
        chosen = target == shade
        reached = shown[:, shade].nonzero().flatten()
        # a shade over many MCUs is judged on an even sample of them
        judged = reached[:: -(-reached.numel() // _MOST_MCUS)]
        at, block, trial, change, moved = recoloured(chosen, judged, ycc[candidates] - ycc[shade])
        score = _score(change, missing.index_select(0, at), per_pixel[block], block_channel[block] > 0, subsampled)
        best = int(score.argmin())
        if float(score[best]) > 0:
            continue
        colour = int(candidates[best])
        if judged.numel() < reached.numel():
            judged = reached
            at, block, trial, change, moved = recoloured(chosen, judged, ycc[colour : colour + 1] - ycc[shade])
            best = 0
        if moved is not None:
            unclipped_tiles[judged] = moved[best]
        coefficients[at] = trial[best]
        stored[at] += change[best]
        missing[at] -= change[best]
        target[target == shade] = colour
        shown[:, colour] |= shown[:, shade]
        counts[colour] += counts[shade]
        alive[shade] = False
    rgb = colours[target[label]].round().to(torch.uint8).permute(2, 0, 1).unsqueeze(0)
    return torch.cat([rgb, cells[:, 3:]], 1)
