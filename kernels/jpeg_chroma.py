"""JPEG chroma subsampling as a linear model, and the per-region chroma that best explains a decoded image.

Most JPEGs keep one chroma sample per 2 x 2 pixels (4:2:0) or per 2 x 1 (4:2:2). The encoder (libjpeg and its
descendants: Pillow, browsers, cameras) stores each block's average, with the image's last row and column
repeated to fill the edge blocks; libjpeg's decoder spreads each sample back over its pixels with its "fancy"
triangle filter, 3/4 of the nearest sample and 1/4 of the next one along each subsampled axis (edges repeated).
So a decoded pixel's chroma mixes those of up to two blocks either way: at a colour boundary of pixel art the
cells within about two pixels take on part of their neighbours' colour, and their medians come out as shades
the art never had. `region_chroma` undoes that for images made of flat regions (cells of a known grid): it
finds the chroma per region that, painted and passed through the encoder and decoder, comes closest to what
the decoder showed.

Everything here is linear in the chroma planes: ``(B, C, H, W)`` float tensors, any number of planes (Cb and
Cr), any device. `factors` are the subsampling factors ``(vertical, horizontal)``, each 1 or 2: (2, 2) for 4:2:0,
(1, 2) for 4:2:2, (1, 1) for none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._utils import REC601

__all__ = [
    "block_averages",
    "check_factors",
    "edge_filled",
    "jpeg_chroma_roundtrip",
    "region_bleed",
    "region_chroma",
    "shift_chroma",
    "srgb_to_ycbcr",
    "ycbcr_to_srgb",
]

# Added to the diagonal of each axis's normal equations: the chroma of a region that no pixel lies in (or of a
# pattern finer than the chroma samples, which the model cannot see) comes out 0, that of the others unchanged
# (their diagonal is at least 1/64, one pixel seen at the smallest weight).
_RIDGE = 1e-9


def srgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """JPEG's full-range YCbCr (Rec. 601 luma) of sRGB :math:`(B, 3, H, W)` in 0-255."""
    r, g, b = rgb.unbind(1)
    y = REC601[0] * r + REC601[1] * g + REC601[2] * b
    return torch.stack([y, 128 + (b - y) / (2 - 2 * REC601[2]), 128 + (r - y) / (2 - 2 * REC601[0])], 1)


def ycbcr_to_srgb(ycc: Tensor) -> Tensor:
    """The inverse of `srgb_to_ycbcr`, clamped to 0-255."""
    y = ycc[:, 0]
    r = y + (ycc[:, 2] - 128) * (2 - 2 * REC601[0])
    b = y + (ycc[:, 1] - 128) * (2 - 2 * REC601[2])
    g = (y - REC601[0] * r - REC601[2] * b) / REC601[1]
    return torch.stack([r, g, b], 1).clamp(0, 255)


def check_factors(factors: tuple[int, int]) -> None:
    """Refuses chroma subsampling factors other than 1 or 2 per axis."""
    if len(factors) != 2 or any(factor not in (1, 2) for factor in factors):
        raise ValueError(f"chroma subsampling factors must be (1 or 2, 1 or 2), got {factors!r}")


def _clamped(length: int, shift: int, device: torch.device) -> Tensor:
    return (torch.arange(length, device=device) + shift).clamp(0, length - 1)


def _upsample(samples: Tensor, dim: int) -> Tensor:
    """libjpeg's fancy upsampling by 2 along `dim`: output 2i is 3/4 of sample i and 1/4 of sample i - 1,
    output 2i + 1 is 3/4 of sample i and 1/4 of sample i + 1 (edges repeated)."""
    length = samples.shape[dim]
    before = samples.index_select(dim, _clamped(length, -1, samples.device))
    after = samples.index_select(dim, _clamped(length, 1, samples.device))
    return torch.stack([0.75 * samples + 0.25 * before, 0.75 * samples + 0.25 * after], dim + 1).flatten(dim, dim + 1)


def edge_filled(length: int, factor: int, device: torch.device) -> Tensor:
    """The pixel each position of an axis padded to a multiple of `factor` takes: the encoder repeats the last."""
    return torch.arange(-(-length // factor) * factor, device=device).clamp(max=length - 1)


def jpeg_chroma_roundtrip(chroma: Tensor, factors: tuple[int, int]) -> Tensor:
    """What a JPEG decoder shows of chroma planes stored subsampled by `factors`, quantisation aside.

    Args:
        chroma: :math:`(B, C, H, W)` float chroma planes (any offset: the model is linear).
        factors: ``(vertical, horizontal)`` subsampling, each 1 or 2.

    Returns:
        :math:`(B, C, H, W)`: each block's average (edge rows and columns repeated to fill the block), spread back
        with the triangle filter along each subsampled axis.
    """
    check_factors(factors)
    height, width = chroma.shape[-2:]
    rows, columns = edge_filled(height, factors[0], chroma.device), edge_filled(width, factors[1], chroma.device)
    samples = block_averages(chroma.index_select(-2, rows).index_select(-1, columns), factors)
    for dim, factor in ((-2, factors[0]), (-1, factors[1])):
        if factor == 2:
            samples = _upsample(samples, samples.dim() + dim)
    return samples[..., :height, :width]


def block_averages(planes: Tensor, factors: tuple[int, int]) -> Tensor:
    """The average of each ``factors`` block of ``planes`` :math:`(..., H, W)`, a partial last row or column of
    blocks dropped: `F.avg_pool2d` with its kernel as its stride, to the bit (the same sums in the same order,
    row by row), at a fraction of its cost on many small planes, where it pays per output."""
    check_factors(factors)
    height, width = planes.shape[-2] // factors[0] * factors[0], planes.shape[-1] // factors[1] * factors[1]
    planes = planes[..., :height, :width]
    total = planes[..., :: factors[0], :: factors[1]]
    for row in range(factors[0]):
        for column in range(factors[1]):
            if row or column:
                total = total + planes[..., row :: factors[0], column :: factors[1]]
    return total / (factors[0] * factors[1])


def _axis_operator(index: Tensor, factor: int) -> tuple[Tensor, tuple[float, ...]]:
    """The decoded chroma along one axis as a sparse matrix over the regions: pixel ``i`` shows the sum over ``k``
    of ``weights[k]`` times the chroma of region ``regions[i, k]`` (`jpeg_chroma_roundtrip` of painted regions,
    the same model term by term). Returns ``(regions, weights)``: :math:`(L, K)` and K weights, K = 4 for a
    subsampled axis, 1 for one that is not."""
    length = index.numel()
    if factor == 1:
        return index.unsqueeze(1), (1.0,)
    # sample j averages pixels 2j and 2j + 1 (the last pixel repeated past the edge); pixel i shows 3/4 of its
    # own sample i // 2 and 1/4 of the one before (even i) or after (odd i), the edge samples repeated
    filled = index.index_select(0, edge_filled(length, 2, index.device))
    samples = filled.numel() // 2
    own = torch.arange(length, device=index.device) // 2
    other = (own + torch.where(torch.arange(length, device=index.device) % 2 == 0, -1, 1)).clamp(0, samples - 1)
    regions = torch.stack([filled[2 * own], filled[2 * own + 1], filled[2 * other], filled[2 * other + 1]], 1)
    return regions, (0.375, 0.375, 0.125, 0.125)


def _gather_transpose(image: Tensor, regions: Tensor, weights: tuple[float, ...], count: int, dim: int) -> Tensor:
    """``M^T image`` along `dim` for the sparse `_axis_operator` ``M`` with `count` regions."""
    # added whole rows at a time (dim -2 of a contiguous copy): along the last dim index_add_ adds element by
    # element, 3-6 times slower on a decoded image's planes
    rows = image.transpose(dim, -2).contiguous()
    total = rows.new_zeros(*rows.shape[:-2], count, rows.shape[-1])
    for term, weight in enumerate(weights):
        total.index_add_(-2, regions[:, term], rows, alpha=weight)
    return total.transpose(dim, -2)


def _render_rows(regions_chroma: Tensor, regions: Tensor, weights: tuple[float, ...]) -> Tensor:
    """``M @ regions_chroma`` along dim -2 for the sparse `_axis_operator` ``M``: rows are copied whole."""
    rendered = regions_chroma.index_select(-2, regions[:, 0]) * weights[0]
    for term in range(1, len(weights)):
        rendered += regions_chroma.index_select(-2, regions[:, term]) * weights[term]
    return rendered


def region_bleed(
    regions_chroma: Tensor, rows: Tensor, columns: Tensor, factors: tuple[int, int]
) -> Tensor:
    """What subsampling adds to each pixel's chroma from the regions around it: the decoded chroma of the regions
    painted with `regions_chroma` (`jpeg_chroma_roundtrip`) less the painted chroma. 0 inside flat areas.

    Args:
        regions_chroma: :math:`(B, C, h, w)`, e.g. `region_chroma`'s.
        rows, columns, factors: as for `region_chroma`.

    Returns:
        :math:`(B, C, H, W)`.
    """
    check_factors(factors)
    row_regions, row_weights = _axis_operator(rows, factors[0])
    column_regions, column_weights = _axis_operator(columns, factors[1])
    # columns first, on the small (h, w) grid (transposed: gathering rows is what is fast), then the rows
    decoded = _render_rows(regions_chroma.mT, column_regions, column_weights).mT.contiguous()
    painted = regions_chroma.mT.index_select(-2, columns).mT.contiguous()
    return _render_rows(decoded, row_regions, row_weights) - painted.index_select(-2, rows)


def shift_chroma(rgb: Tensor, shift: Tensor) -> Tensor:
    """sRGB :math:`(B, 3, H, W)` with its Cb and Cr (`srgb_to_ycbcr`) moved by `shift` :math:`(B, 2, H, W)` at the
    same luma, not clamped."""
    red = shift[:, 1] * (2 - 2 * REC601[0])
    blue = shift[:, 0] * (2 - 2 * REC601[2])
    green = -(REC601[0] * red + REC601[2] * blue) / REC601[1]
    return rgb + torch.stack([red, green, blue], 1)


def _gram(regions: Tensor, weights: tuple[float, ...], count: int) -> Tensor:
    """``M^T M`` of the sparse `_axis_operator` ``M``, :math:`(count, count)` float64 (exact: multiples of 1/64)."""
    gram = torch.zeros(count, count, dtype=torch.float64, device=regions.device)
    for first, first_weight in enumerate(weights):
        for second, second_weight in enumerate(weights):
            product = first_weight * second_weight
            products = torch.full((regions.shape[0],), product, dtype=torch.float64, device=regions.device)
            gram.index_put_((regions[:, first], regions[:, second]), products, accumulate=True)
    return gram


def region_chroma(
    planes: Tensor, rows: Tensor, columns: Tensor, regions: tuple[int, int], factors: tuple[int, int]
) -> Tensor:
    """The value of each region of a grid that best explains a decoded JPEG's subsampled planes.

    Least squares: the region values that, painted over their pixels and passed through `jpeg_chroma_roundtrip`,
    come closest to `planes`, solved exactly (the model is separable). Regions that no pixel lies in get 0. The
    model is linear, so the planes may be the Cb and Cr of `srgb_to_ycbcr` or the RGB it is computed from (the
    regions' RGB then gives their chroma). Integer planes (RGB of a decoded image) are summed exactly, so the
    result does not depend on the order in which a device adds them up.

    Args:
        planes: :math:`(B, C, H, W)` the decoded image's planes, any real dtype (summed in float64).
        rows: :math:`(H,)` long, the region row each pixel row lies in, in ``[0, h)``.
        columns: :math:`(W,)` long, the region column of each pixel column, in ``[0, w)``.
        regions: ``(h, w)``, the grid's size.
        factors: the JPEG's ``(vertical, horizontal)`` chroma subsampling, each 1 or 2.

    Returns:
        :math:`(B, C, h, w)` float64, the value of each region in each plane.
    """
    check_factors(factors)
    height, width = planes.shape[-2:]
    if rows.shape != (height,) or columns.shape != (width,):
        raise ValueError(
            f"rows and columns must index the {height}x{width} pixels, got {tuple(rows.shape)} and {tuple(columns.shape)}"
        )
    # The model is separable: decoded = My @ regions @ Mx^T, so the least-squares regions are
    # Gy^-1 (My^T decoded Mx) Gx^-1 with G = M^T M, a small banded matrix per axis (a region that no pixel lies in
    # gets a zero row; the ridge makes its value 0). M's weights are multiples of 1/8, so both projections are
    # exact on integer planes, whatever the order of the device's atomic adds; only then come the solves, in
    # float64: a grid finer than the chroma samples leaves G singular, and only double precision keeps G + ridge
    # positive definite then.
    axes = [(-2, rows, regions[0], factors[0]), (-1, columns, regions[1], factors[1])]
    operators = [_axis_operator(index, factor) for _, index, _, factor in axes]
    projected = planes.double()
    for (dim, _, count, _), (axis_regions, weights) in zip(axes, operators):
        projected = _gather_transpose(projected, axis_regions, weights, count, dim)
    cholesky = []
    for (_, _, count, _), (axis_regions, weights) in zip(axes, operators):
        gram = _gram(axis_regions, weights, count)
        gram.diagonal().add_(_RIDGE)
        cholesky.append(torch.linalg.cholesky(gram))
    return torch.cholesky_solve(torch.cholesky_solve(projected, cholesky[0]).mT, cholesky[1]).mT
