"""Pixel-art downscaling: one output pixel per ``s x s`` cell, by block statistics over the cell's pixels.

All methods take and return RGBA uint8 images, ``(B, 4, H, W)`` with values in [0, 255], where alpha is already
binary (see `kernels.pixel_cleanup.binarize_alpha`): a pixel is opaque when its alpha is at least 128. Colours are
compared exactly as packed ``0xRRGGBB`` integers, so every method is deterministic and a cell of one colour
always gives that colour back.

Shared rules: a cell is opaque when at least half of its pixels are (the Rust reference's upper-median rule,
applied to every method); only its opaque pixels vote for its colour; transparent cells come out as
``(0, 0, 0, 0)`` and opaque ones with alpha 255. Cells of 3 px and more vote with their interior, the cell less
its one-pixel border ring: blur, JPEG ringing, chroma subsampling and a slightly resampled grid mix neighbouring
cells into exactly that ring. On a clean upscale the interior has the cell's colour, so nothing changes there; a
cell whose interior is all transparent votes with all of its pixels. (The reference votes with every pixel.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._utils import check_choice, check_int, packed_rgb, unpacked_rgb

__all__ = [
    "DOWNSCALE_METHODS",
    "cell_samples",
    "downscale_cells",
    "downscale_content_adaptive",
    "downscale_dominant",
    "downscale_mean",
    "downscale_median",
    "downscale_mode",
]

DOWNSCALE_METHODS = ("dominant", "median", "mode", "mean", "content-adaptive")

# A key above every packed colour: transparent pixels sort last and never form a vote.
_TRANSPARENT_KEY = 1 << 24


def _check_rgba(image: Tensor, scale: int) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 4 or image.dtype != torch.uint8:
        raise ValueError(f"`image` must be a uint8 (B, 4, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
    check_int(scale, "scale", 1)
    height, width = image.shape[-2:]
    if height % scale or width % scale or height == 0 or width == 0:
        raise ValueError(f"`image` sides must be positive multiples of `scale` = {scale}, got {height}x{width}")


def _cells(plane: Tensor, scale: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H/s, W/s, s*s)``: each cell's pixels on the last axis, row-major."""
    batch, channels, height, width = plane.shape
    cells = plane.reshape(batch, channels, height // scale, scale, width // scale, scale)
    return cells.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, height // scale, width // scale, scale * scale)


def _opaque_cells(image: Tensor, scale: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell: opaque mask of its pixels ``(B, h, w, n)``, their count ``(B, h, w)`` and the cell's opacity."""
    opaque = _cells(image[:, 3:] >= 128, scale)[:, 0]
    count = opaque.sum(-1)
    return opaque, count, 2 * count >= scale * scale


def _every_pixel_opaque(image: Tensor) -> bool:
    """Whether no pixel of RGBA ``(B, 4, H, W)`` is transparent (any JPEG): its alpha's least value, one pass."""
    return int(image[:, 3].min()) >= 128


def _finish(rgb: Tensor, cell_opaque: Tensor) -> Tensor:
    """``(B, 3, h, w)`` colours and ``(B, h, w)`` opacity -> RGBA uint8 with transparent cells zeroed."""
    alpha = (cell_opaque.unsqueeze(1) * 255).to(torch.uint8)
    return torch.cat([rgb.to(torch.uint8), alpha], 1) * cell_opaque.unsqueeze(1)


def cell_samples(image: Tensor, scale: int, taken: slice) -> tuple[Tensor, int]:
    r"""The pixels ``taken`` (a slice of ``range(scale)``) along both axes of each ``scale`` x ``scale`` cell.

    Sliced from a view of the cells, a strided copy, not gathered pixel by pixel.

    Args:
        image: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels.
        taken: the positions within a cell, the same down and across.

    Returns:
        ``(samples, side)``: :math:`(B, C, H / s \cdot n, W / s \cdot n)` cells of ``side`` = ``n`` x ``n``
        pixels, in the cells' order.

    Example:
        >>> image = torch.arange(16).view(1, 1, 4, 4)
        >>> cell_samples(image, 2, slice(1, 2))[0][0, 0].tolist()
        [[5, 7], [13, 15]]
    """
    batch, channels, height, width = image.shape
    side = len(range(scale)[taken])
    cells = image.view(batch, channels, height // scale, scale, width // scale, scale)[:, :, :, taken, :, taken]
    return cells.reshape(batch, channels, height // scale * side, width // scale * side), side


def _interiors(image: Tensor, scale: int) -> tuple[Tensor, int]:
    """Each cell less its one-pixel border ring, as an image of ``(s-2) x (s-2)`` cells; unchanged below 3 px."""
    if scale < 3:
        return image, scale
    return cell_samples(image, scale, slice(1, scale - 1))


def _vote(image: Tensor, scale: int, statistic: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Apply a per-cell colour ``statistic`` to the cells' interiors (all pixels where the interior is empty)."""
    inner, inner_scale = _interiors(image, scale)
    colours = statistic(inner, inner_scale)
    if _every_pixel_opaque(image):  # any JPEG: every cell opaque, none with an empty interior
        return _finish(colours, torch.ones_like(colours[:, 0], dtype=torch.bool))
    _, _, cell_opaque = _opaque_cells(image, scale)
    if inner_scale != scale:
        empty = cell_opaque & (_opaque_cells(inner, inner_scale)[1] == 0)
        if bool(empty.any()):
            colours = torch.where(empty.unsqueeze(1), statistic(image, scale), colours)
    return _finish(colours, cell_opaque)


def _most_common(image: Tensor, scale: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each cell's most frequent opaque colour (ties: lowest 0xRRGGBB), its count and the opaque count."""
    opaque, count, _ = _opaque_cells(image, scale)
    keys = _cells(packed_rgb(image[:, :3]).unsqueeze(1), scale)[:, 0]
    keys = torch.where(opaque, keys, _TRANSPARENT_KEY).sort(-1).values
    # Length of the run of equal keys ending at each sorted position; argmax takes the first maximum, which is the
    # end of the lowest key's run among the most frequent ones.
    position = torch.arange(keys.shape[-1], device=keys.device).expand_as(keys)
    starts = torch.ones_like(keys, dtype=torch.bool)
    starts[..., 1:] = keys[..., 1:] != keys[..., :-1]
    run_start = torch.where(starts, position, 0).cummax(-1).values
    run_length = torch.where(keys < _TRANSPARENT_KEY, position - run_start + 1, 0)
    best_count, best_at = run_length.max(-1)
    best_key = keys.gather(-1, best_at.unsqueeze(-1)).squeeze(-1)
    return best_key, best_count, count


def _mode_colours(image: Tensor, scale: int) -> Tensor:
    return unpacked_rgb(_most_common(image, scale)[0])


def _dominant_colours(image: Tensor, scale: int, threshold: float) -> Tensor:
    best_key, best_count, count = _most_common(image, scale)
    dominant = best_count.double() >= threshold * count.double()
    return torch.where(dominant.unsqueeze(1), unpacked_rgb(best_key), _mean_colours(image, scale))


def _mean_colours(image: Tensor, scale: int) -> Tensor:
    opaque, count, _ = _opaque_cells(image, scale)
    total = (_cells(image[:, :3].long(), scale) * opaque.unsqueeze(1)).sum(-1)
    return total // count.clamp_min(1).unsqueeze(1)


def _median_colours(image: Tensor, scale: int) -> Tensor:
    every_pixel_opaque = _every_pixel_opaque(image)  # the middle pixels are then at fixed places
    if every_pixel_opaque and scale == 2:  # (also the interior of a 4 px cell)
        # The four pixels as strided views of the image, in bytes, nothing copied. Of min and max of each pair,
        # the lesser minimum is the least of the four and the greater maximum the greatest: the others are the
        # middle two, and their floored mean stays in a byte as the lower plus half the gap.
        batch, _, height, width = image.shape
        pixels = image[:, :3].reshape(batch, 3, height // 2, 2, width // 2, 2)
        first, second, third, fourth = (pixels[:, :, :, row, :, column] for row in (0, 1) for column in (0, 1))
        middle = (
            torch.maximum(torch.minimum(first, second), torch.minimum(third, fourth)),
            torch.minimum(torch.maximum(first, second), torch.maximum(third, fourth)),
        )
        lower, upper = torch.minimum(*middle), torch.maximum(*middle)
        return lower + (upper - lower) // 2
    values = _cells(image[:, :3].int(), scale)  # int32 sorts about twice as fast as int64
    if every_pixel_opaque:
        values = values.sort(-1).values
        return (values[..., (scale * scale - 1) // 2] + values[..., scale * scale // 2]) // 2
    opaque, count, _ = _opaque_cells(image, scale)
    values = torch.where(opaque.unsqueeze(1), values, 256).sort(-1).values
    low = ((count - 1).clamp_min(0) // 2).unsqueeze(1).expand(-1, 3, -1, -1).unsqueeze(-1)
    high = (count // 2).clamp_max(values.shape[-1] - 1).unsqueeze(1).expand(-1, 3, -1, -1).unsqueeze(-1)
    return ((values.gather(-1, low) + values.gather(-1, high)).squeeze(-1) // 2).clamp_max(255)


def downscale_mode(image: Tensor, scale: int) -> Tensor:
    r"""Each cell takes its most frequent opaque colour; ties go to the lowest ``0xRRGGBB``.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha; ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels.

    Returns:
        RGBA uint8 :math:`(B, 4, H / s, W / s)`.

    Raises:
        ValueError: not a uint8 RGBA tensor, or sides not multiples of ``scale``.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
        >>> image[0, :3, 0, 0] = 0
        >>> downscale_mode(image, 2)[0, :, 0, 0].tolist()
        [255, 255, 255, 255]
    """
    _check_rgba(image, scale)
    return _vote(image, scale, _mode_colours)


def downscale_dominant(image: Tensor, scale: int, threshold: float) -> Tensor:
    r"""Each cell takes its most frequent opaque colour if it covers ``threshold`` of them, else their mean.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha; ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels.
        threshold: share in [0, 1] of the cell's voting opaque pixels the most frequent colour must reach
            (:math:`count \ge threshold \cdot n_{opaque}`, compared exactly); below it the cell gets the
            per-channel mean of those pixels, rounded down.

    Returns:
        RGBA uint8 :math:`(B, 4, H / s, W / s)`.

    Kiln differs: the reference compares with :math:`\lfloor n_{opaque} \cdot threshold \rfloor`, which makes the
    mean fallback unreachable at the default 0.05 for cells up to 6 px, and breaks ties by hash order.

    Example:
        >>> import torch
        >>> image = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
        >>> image[0, 0] = torch.tensor([[0, 40], [80, 120]], dtype=torch.uint8)
        >>> image[0, 3] = 255
        >>> downscale_dominant(image, 2, 0.5)[0, :, 0, 0].tolist()
        [60, 0, 0, 255]
    """
    _check_rgba(image, scale)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1], got {threshold!r}")
    return _vote(image, scale, lambda cells, size: _dominant_colours(cells, size, threshold))


def downscale_mean(image: Tensor, scale: int) -> Tensor:
    r"""Each cell takes the per-channel mean of its opaque pixels, rounded down.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha; ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels.

    Returns:
        RGBA uint8 :math:`(B, 4, H / s, W / s)`.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
        >>> image[0, 0, :, 0] = 0
        >>> downscale_mean(image, 2)[0, :, 0, 0].tolist()
        [127, 255, 255, 255]
    """
    _check_rgba(image, scale)
    return _vote(image, scale, _mean_colours)


def downscale_median(image: Tensor, scale: int) -> Tensor:
    r"""Each cell takes the per-channel median of its opaque pixels (mean of the middle two, rounded down).

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha; ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels.

    Returns:
        RGBA uint8 :math:`(B, 4, H / s, W / s)`.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
        >>> image[0, 0] = torch.tensor([[10, 20], [30, 250]], dtype=torch.uint8)
        >>> downscale_median(image, 2)[0, 0].tolist()
        [[25]]
    """
    _check_rgba(image, scale)
    return _vote(image, scale, _median_colours)


def _srgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] ``(B, 3, ...)`` -> CIELAB (D65; L in [0, 100])."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = rgb.new_tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    )
    white = rgb.new_tensor([0.950456, 1.0, 1.088754])
    xyz = torch.einsum("ij,bj...->bi...", matrix, linear) / white.view(1, 3, *[1] * (rgb.ndim - 2))
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def _lab_to_srgb(lab: Tensor) -> Tensor:
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    xyz = torch.where(f > 0.206893, f**3, (f - 16 / 116) / 7.787)
    xyz = xyz * lab.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, *[1] * (lab.ndim - 2))
    inverse = lab.new_tensor(
        [[3.240479, -1.537150, -0.498535], [-0.969256, 1.875992, 0.041556], [0.055648, -0.204043, 1.057311]]
    )
    linear = torch.einsum("ij,bj...->bi...", inverse, xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)


def downscale_content_adaptive(image: Tensor, scale: int, iterations: int = 5, colour_sigma: float = 10.0) -> Tensor:
    r"""Content-adaptive downscaling (Kopf, Shamir & Peers 2013): each cell is a gaussian kernel fitted by EM.

    Every output pixel is a kernel with a centre, a 2x2 covariance and a colour. Each iteration weighs the
    pixels of a 3x3-cell window around the kernel's cell by a spatial gaussian times a colour gaussian
    (``colour_sigma`` in CIELAB units), normalises those weights per kernel and shares each pixel among the
    kernels that claim it (E-step), then moves each kernel's centre, covariance and colour to the weighted means
    (M-step) and clamps the covariance's eigenvalues to [0.05, 0.1] px^2 (C-step, the reference's bounds: from
    the second iteration on a kernel samples the few pixels around its drifting centre, which keeps colours
    crisp). Kernels start at their cell's centre with :math:`\sigma = s/3` and the mean colour of the cell's
    centre. Transparent pixels take no part; the cell's opacity follows the shared half-opaque rule.

    Args:
        image: RGBA uint8 image :math:`(B, 4, H, W)` with binary alpha; ``H`` and ``W`` multiples of ``scale``.
        scale: cell size in pixels; 1 returns the image unchanged.
        iterations: EM iterations.
        colour_sigma: spread of the colour term, CIELAB units.

    Returns:
        RGBA uint8 :math:`(B, 4, H / s, W / s)`; colours are new (not from the input), so callers quantise.

    Kiln differs: the reference halves the image when the scale is 1 and weighs pixels by position only, so its
    kernels never adapt to content.

    Example:
        >>> import torch
        >>> image = torch.full((1, 4, 8, 8), 255, dtype=torch.uint8)
        >>> image[0, :3, :4, :4] = 40
        >>> downscale_content_adaptive(image, 4)[0, 0].tolist()
        [[40, 255], [255, 255]]
    """
    _check_rgba(image, scale)
    check_int(iterations, "iterations", 1)
    if scale == 1:
        return _finish(image[:, :3], image[:, 3] >= 128)
    batch, _, height, width = image.shape
    rows, cols = height // scale, width // scale
    window = 3 * scale
    _, _, cell_opaque = _opaque_cells(image, scale)
    opaque = (image[:, 3:] >= 128).float()
    lab = _srgb_to_lab(image[:, :3].float() / 255) * opaque

    def windows(plane: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, window*window, cells)``: each cell's 3x3-cell neighbourhood."""
        unfolded = F.unfold(plane, window, padding=scale, stride=scale)
        return unfolded.view(batch, plane.shape[1], window * window, rows * cols)

    def fold(values: Tensor) -> Tensor:
        """Inverse of `windows` for one channel: sums each pixel's share over the kernels that see it."""
        return F.fold(values, (height, width), window, padding=scale, stride=scale)

    pixel_lab = windows(lab)
    pixel_opaque = windows(opaque)[:, 0]
    # Pixel centres relative to the window's corner, (window*window, 2) as (y, x).
    grid = torch.arange(window, device=image.device, dtype=torch.float32) + 0.5
    offsets = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mean = offsets.new_full((batch, rows * cols, 2), 1.5 * scale)
    covariance = torch.diag_embed(offsets.new_full((batch, rows * cols, 2), (scale / 3) ** 2))
    # Start from the mean of the cell's interior (its centre pixels at 1-2 px), away from blurred borders.
    inner = (offsets - 1.5 * scale).abs().amax(-1) < max(scale / 2 - 1, 0.5)
    in_cell = pixel_opaque * inner.view(1, -1, 1).float()
    colour = (pixel_lab * in_cell.unsqueeze(1)).sum(2) / in_cell.sum(1).clamp_min(1).unsqueeze(1)
    for _ in range(iterations):
        delta = offsets.view(1, -1, 1, 2) - mean.unsqueeze(1)
        precision = torch.linalg.inv(covariance)
        spatial = torch.einsum("bwki,bkij,bwkj->bwk", delta, precision, delta)
        colour_distance = ((pixel_lab - colour.unsqueeze(2)) ** 2).sum(1)
        weight = torch.exp(-0.5 * spatial - colour_distance / (2 * colour_sigma**2)) * pixel_opaque
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        shared = windows(fold(weight))[:, 0]
        responsibility = weight / (shared + 1e-9)
        total = responsibility.sum(1).clamp_min(1e-12)
        mean = torch.einsum("bwk,wi->bki", responsibility, offsets) / total.unsqueeze(-1)
        colour = torch.einsum("bwk,bcwk->bck", responsibility, pixel_lab) / total.unsqueeze(1)
        delta = offsets.view(1, -1, 1, 2) - mean.unsqueeze(1)
        covariance = torch.einsum("bwk,bwki,bwkj->bkij", responsibility, delta, delta) / total.view(batch, -1, 1, 1)
        covariance = _clamp_eigenvalues(covariance, 0.05, 0.1)
    rgb = _lab_to_srgb(colour.view(batch, 3, rows, cols))
    return _finish(torch.round(rgb * 255), cell_opaque)


def _clamp_eigenvalues(covariance: Tensor, low: float, high: float) -> Tensor:
    """Symmetric 2x2 matrices ``(..., 2, 2)`` with their eigenvalues clamped to ``[low, high]``."""
    values, vectors = torch.linalg.eigh(covariance)
    return vectors @ torch.diag_embed(values.clamp(low, high)) @ vectors.transpose(-1, -2)


def downscale_cells(image: Tensor, scale: int, method: str, dominant_threshold: float = 0.05) -> Tensor:
    r"""One output pixel per cell by ``method``, one of `DOWNSCALE_METHODS`; see each method's function.

    Example:
        >>> import torch
        >>> downscale_cells(torch.zeros(2, 4, 6, 9, dtype=torch.uint8), 3, "median").shape
        torch.Size([2, 4, 2, 3])
    """
    check_choice(method, DOWNSCALE_METHODS, "method")
    if method == "dominant":
        return downscale_dominant(image, scale, dominant_threshold)
    if method == "mode":
        return downscale_mode(image, scale)
    if method == "median":
        return downscale_median(image, scale)
    if method == "mean":
        return downscale_mean(image, scale)
    return downscale_content_adaptive(image, scale)
