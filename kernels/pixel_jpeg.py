"""Pixel-art cells against the JPEG they came in: which palette shades the file actually needs.

JPEG's quantisation rings at edges and bleeds chroma across them, so the cells of a small-scale upscale come out
as shades the art never had, each beside the colour it came from. Their colours and neighbours alone hardly tell
them from an artist's own shades. The file does: paint the cells back onto the image's lattice, encode them as
the file was (`kernels.jpeg_codec`), and compare with what it stored. A shade whose cells, painted as another
colour, explain the file at least as well is not in the art.

Images are ``(B, C, H, W)``, cells ``(B, C, h, w)``, B = 1. A lattice axis (`AxisSampling`) says which cells each
pixel of the image shows: the interpolation between two neighbouring cells of a resampled upscale, or one cell.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from kernels._utils import packed_rgb, unpacked_rgb
from kernels.jpeg_chroma import edge_filled, srgb_to_ycbcr
from kernels.jpeg_codec import block_steps, mcu_coefficients, mcu_size
from kernels.pixel_palette import colour_distance, srgb_to_lab

__all__ = ["AxisSampling", "axis_sampling", "merge_unneeded_shades"]

# Heavier colours tried for each shade, nearest first: a bled shade's source is among its nearest colours. On the
# real-art set's JPEGs four did no better than two (89 against 90 of the 92 palette targets) at twice the cost.
_CANDIDATES = 2
# MCUs a shade is judged on at most, evenly spaced among those it reaches: its score is a ratio of sums over them.
_MOST_MCUS = 256


class AxisSampling(NamedTuple):
    """Per pixel along one axis: the two cells it interpolates, the weight of the second, and whether it lies on
    the lattice at all (pixels beyond the first and last complete cells show the image itself)."""

    first: Tensor  # long (L,)
    second: Tensor  # long (L,)
    weight: Tensor  # float (L,)
    inside: Tensor  # bool (L,)


def axis_sampling(length: int, start: float, cells: int, period: float, scale: int, device=None) -> AxisSampling:
    """How an upscale by ``scale``, resampled to cells of ``period`` pixels starting at ``start``, shows ``cells``
    cells along an axis of ``length`` pixels: linear interpolation between the upscale's pixel centres, as a
    resize does. On a whole-pixel lattice (``period == scale``, integer ``start``) each pixel shows one cell.

    Example:
        >>> axis_sampling(5, 1, 2, 2.0, 2).first.tolist(), axis_sampling(5, 1, 2, 2.0, 2).inside.tolist()
        ([0, 0, 0, 1, 1], [False, True, True, True, True])
    """
    centre = torch.arange(length, device=device, dtype=torch.float64) + 0.5 - start
    position = centre / period * scale - 0.5  # in the upscale's pixel centres
    low = position.floor()
    last = cells * scale - 1
    first = low.clamp(0, last).long() // scale
    second = (low + 1).clamp(0, last).long() // scale
    inside = (centre >= 0) & (centre < cells * period)
    return AxisSampling(first, second, (position - low).float(), inside)


def _padded(axis: AxisSampling, unit: int) -> AxisSampling:
    """``axis`` over whole MCUs: the encoder repeats the last pixel into the padding."""
    index = edge_filled(axis.first.shape[0], unit, axis.first.device)
    return AxisSampling(*(field[index] for field in axis))


def _tiles(image: Tensor, unit: tuple[int, int]) -> Tensor:
    """``(C, H, W)`` with H, W whole MCUs -> ``(T, C, mh, mw)``, row-major."""
    channels, height, width = image.shape
    tiles = image.reshape(channels, height // unit[0], unit[0], width // unit[1], unit[1]).permute(1, 3, 0, 2, 4)
    return tiles.reshape(-1, channels, *unit)


def _render(cells: Tensor, rows: AxisSampling, columns: AxisSampling) -> Tensor:
    """``(C, h, w)`` cells painted as ``rows`` and ``columns`` sample them: ``(C, H, W)``. Across first, while
    the rows are few: picking whole rows is a copy, picking columns a gather."""
    across = cells.index_select(2, columns.first)
    if bool(columns.weight.any()):
        across = torch.lerp(across, cells.index_select(2, columns.second), columns.weight.to(cells.dtype))
    down = across.index_select(1, rows.first)
    if bool(rows.weight.any()):
        down = torch.lerp(down, across.index_select(1, rows.second), rows.weight.to(cells.dtype).view(1, -1, 1))
    return down


def _shown(label: Tensor, rows: AxisSampling, columns: AxisSampling, unit: tuple[int, int], count: int) -> Tensor:
    """Which of ``count`` labels each MCU of ``unit`` shows some of: bool ``(T, count)``, MCUs row-major."""
    mcus = rows.first.shape[0] // unit[0] * (columns.first.shape[0] // unit[1])
    shown = torch.zeros(mcus, count, device=label.device)
    for row, row_used in ((rows.first, rows.weight < 1), (rows.second, rows.weight > 0)):
        for column, column_used in ((columns.first, columns.weight < 1), (columns.second, columns.weight > 0)):
            if bool(row_used.any()) and bool(column_used.any()):
                labels = _tiles(label[row][:, column][None], unit).flatten(1)
                used = _tiles((row_used.unsqueeze(1) & column_used.unsqueeze(0)).float()[None], unit).flatten(1)
                shown.scatter_add_(1, labels, used)
    return shown > 0


def _share(mask: Tensor, tile_rows: list[Tensor], tile_columns: list[Tensor]) -> Tensor:
    """How much of each pixel of the MCUs whose rows and columns sample the cells as ``tile_rows`` and
    ``tile_columns`` (`AxisSampling` fields, ``(n, mh)`` and ``(n, mw)``) is painted from ``mask``'s cells:
    ``(n, 1, mh, mw)``."""
    first_row, second_row, row_weight = (field.unsqueeze(2) for field in tile_rows[:3])
    first_column, second_column, column_weight = (field.unsqueeze(1) for field in tile_columns[:3])
    if not (bool(row_weight.any()) or bool(column_weight.any())):  # a whole-pixel lattice: one cell a pixel
        return mask[first_row, first_column].unsqueeze(1)
    top = torch.lerp(mask[first_row, first_column], mask[first_row, second_column], column_weight)
    bottom = torch.lerp(mask[second_row, first_column], mask[second_row, second_column], column_weight)
    return torch.lerp(top, bottom, row_weight).unsqueeze(1)


def merge_unneeded_shades(
    cells: Tensor,
    observed: Tensor,
    rows: AxisSampling,
    columns: AxisSampling,
    quantization: Tensor,
    factors: tuple[int, int],
) -> Tensor:
    r"""Recolour each shade the JPEG does not need with the heavier colour that explains the file better.

    The cells are painted onto the image's lattice (``rows``, ``columns``) and encoded as the file was: DCT
    coefficients rounded to its steps (`kernels.jpeg_codec`). From the shade with the fewest cells up, each is
    tried as each of its `_CANDIDATES` nearest (`colour_distance`) colours with more cells, on the MCUs it reaches.
    Let ``D`` be what that changes in the stored coefficients and ``R`` what the stored coefficients still miss of
    ``observed``'s (both in YCbCr levels, a chroma coefficient counted once per pixel it covers): the change
    explains the file at least as well when :math:`\|R - D\|^2 \le \|R\|^2`, i.e. when
    :math:`1 - 2\langle D, R\rangle / \|D\|^2 \le 0`. The lowest such score wins, and the next shade sees the
    result. Ties go to the nearer colour, then the lower ``0xRRGGBB``, so the result is deterministic.

    Args:
        cells: RGBA uint8 :math:`(1, 4, h, w)`, every cell opaque, one palette colour per cell.
        observed: RGB(A) uint8 :math:`(1, C, H, W)`: the decoded file the cells were read from.
        rows: `axis_sampling` of the image's height over the ``h`` cells.
        columns: `axis_sampling` of its width over the ``w`` cells.
        quantization: :math:`(3, 8, 8)` the file's quantisation tables (Y, Cb, Cr).
        factors: the file's chroma subsampling ``(vertical, horizontal)``.

    Returns:
        ``cells`` with the unneeded shades recoloured: its colours a subset of the input's.
    """
    if cells.ndim != 4 or cells.shape[:2] != (1, 4) or cells.dtype != torch.uint8:
        raise ValueError(f"`cells` must be uint8 (1, 4, h, w), got {cells.dtype} {tuple(cells.shape)}")
    if not bool((cells[:, 3] >= 128).all()):
        raise ValueError("`cells` must be opaque: a JPEG has no transparency")
    height, width = observed.shape[-2:]
    if (rows.first.shape[0], columns.first.shape[0]) != (height, width):
        sampled = f"{rows.first.shape[0]} x {columns.first.shape[0]}"
        raise ValueError(f"the axes sample {sampled} px, the image is {height} x {width}")
    device = cells.device
    unit = mcu_size(factors)
    steps = block_steps(quantization.to(device), factors)
    # a chroma coefficient stands for fv * fh pixels, a luma one for one
    per_pixel = torch.ones(steps.shape[0], 1, 1, device=device)
    per_pixel[-2:] = factors[0] * factors[1]
    block_channel = torch.tensor([0] * (steps.shape[0] - 2) + [1, 2], device=device)
    rows, columns = _padded(rows, unit[0]), _padded(columns, unit[1])
    keys, label = torch.unique(packed_rgb(cells[0, :3]), return_inverse=True)
    count = keys.shape[0]
    colours = unpacked_rgb(keys).float()
    ycc = srgb_to_ycbcr(colours.T.reshape(1, 3, count, 1))[0, :, :, 0].T  # (count, 3)

    padded_rows = torch.arange(rows.first.shape[0], device=device)
    padded_columns = torch.arange(columns.first.shape[0], device=device)
    file_pixels = observed[0, :3].float()[:, padded_rows.clamp(max=height - 1)]
    file_ycc = srgb_to_ycbcr(file_pixels[:, :, padded_columns.clamp(max=width - 1)][None])[0]
    on_lattice = rows.inside.unsqueeze(1) & columns.inside.unsqueeze(0)
    painted = torch.where(on_lattice, _render(ycc.T[:, label], rows, columns), file_ycc)
    coefficients = mcu_coefficients(_tiles(painted, unit), factors)
    stored = torch.round(coefficients / steps) * steps
    # The encoder pads the last MCUs with the last row and column, and so does `_padded` with the cells': the file's
    # own are taken as the decoder would show them there.
    missing = mcu_coefficients(_tiles(file_ycc, unit), factors) - stored
    tiles_down, tiles_across = rows.first.shape[0] // unit[0], columns.first.shape[0] // unit[1]
    shown = _shown(label, rows, columns, unit, count)  # a shade is only tried on its own MCUs
    tile_rows = [field.view(tiles_down, unit[0]) for field in rows]
    tile_columns = [field.view(tiles_across, unit[1]) for field in columns]
    inside = _tiles(on_lattice.float()[None], unit)

    def recoloured(mask: Tensor, tiles: Tensor, steps_to: Tensor) -> tuple[Tensor, ...]:
        """The blocks of the MCUs ``tiles`` that ``mask``'s cells reach, ``(tile, block)``, and their coefficients
        and the change of what is stored with those cells' colour moved by each of ``steps_to`` (YCbCr)."""
        down, across = tiles // tiles_across, tiles % tiles_across
        share = _share(mask, [field[down] for field in tile_rows], [field[across] for field in tile_columns])
        # the coefficients are linear in the painted colours: a unit step of the cells' colour adds this much
        unit_step = mcu_coefficients((share * inside[tiles]).expand(-1, 3, -1, -1), factors, offset=0.0)
        local, block = (unit_step != 0).flatten(2).any(2).nonzero().unbind(1)
        tile, unit_step = tiles[local], unit_step[local, block]
        trial = coefficients[tile, block] + steps_to[:, block_channel[block], None, None] * unit_step
        change = torch.round(trial / steps[block]) * steps[block] - stored[tile, block]
        return tile, block, trial, change

    target = torch.arange(count, device=device)
    lab = srgb_to_lab(colours.to(torch.float64))
    counts = torch.bincount(label.flatten(), minlength=count).tolist()
    alive = [True] * count
    for shade in sorted(range(count), key=counts.__getitem__):  # stable: ties in colour order
        heavier = [colour for colour in range(count) if alive[colour] and counts[colour] > counts[shade]]
        if not alive[shade] or not heavier:
            continue
        heavier = torch.tensor(heavier, device=device)
        distance = colour_distance(lab[shade : shade + 1], lab[heavier])[0]
        candidates = heavier[distance.argsort(stable=True)[:_CANDIDATES]]
        mask = (target[label] == shade).float()
        reached = shown[:, shade].nonzero().flatten()
        # a shade over many MCUs is judged on an even sample of them
        sampled = reached[:: -(-reached.numel() // _MOST_MCUS)]
        tile, block, trial, change = recoloured(mask, sampled, ycc[candidates] - ycc[shade])
        weight = per_pixel[block]
        explained = (change * missing[tile, block] * weight).flatten(1).sum(1)
        changed = (change * change * weight).flatten(1).sum(1)
        # a change the rounding swallows whole says nothing either way: the shade stays
        score = torch.where(changed > 0, 1 - 2 * explained / changed.clamp_min(1e-12), torch.inf)
        best = int(score.argmin())
        if float(score[best]) > 0:
            continue
        colour = int(candidates[best])
        if sampled.numel() < reached.numel():
            tile, block, trial, change = recoloured(mask, reached, ycc[colour : colour + 1] - ycc[shade])
            best = 0
        coefficients[tile, block] = trial[best]
        stored[tile, block] += change[best]
        missing[tile, block] -= change[best]
        target[target == shade] = colour
        shown[:, colour] |= shown[:, shade]
        counts[colour] += counts[shade]
        alive[shade] = False
    rgb = colours[target[label]].round().to(torch.uint8).permute(2, 0, 1).unsqueeze(0)
    return torch.cat([rgb, cells[:, 3:]], 1)
