"""fal-ai/image2pixel: find the pixel grid under upscaled "pixel art", snap to it, reduce colours, clean up.

fal runs the open `unfake` package (PyPI 1.0.7); Kiln keeps fal's schema and the reference's order of steps,
with better detectors and deterministic output:

1. Alpha is made binary at `alpha_threshold`, and colours under alpha 0 are cleared.
2. The scale is `scale` when given (0 or null detects), else detected. `runs`: every colour change of a
   loss-free nearest-neighbour upscale lies on one lattice per axis, so the scale is the gcd of the distances
   between boundary columns and rows, whatever the grid offset (the reference's gcd of run lengths fails on any
   offset). `edge`: the peaks of the spectrum of the luma edge profiles (JPEG's 4:2:0 chroma grid does not
   show there) are candidate real-valued periods, each fitted with its phase to the edges and verified by how
   much better its cells explain the image than the same lattice half a cell off; that rejects harmonics,
   texture multiples and the moire period ~1 / |f - 1| of a slightly resampled image, and survives JPEG and
   blur (the reference's peak spacing returns 1 on clean art and 4x the scale on textured art). `auto`: runs,
   then edge.
3. With `snap_grid` the image is cropped to the complete cells of the detected grid (offsets are exact, where
   the reference's Sobel offsets are ambiguous by a pixel and often lose a row of cells); without, to whole
   cells from the top-left corner. A resampled upscale (cells of, say, 5.88 px) is sampled on its measured
   lattice, so no cell drifts or drops off; `pixel_scale` is then the rounded cell size, and the Kiln fields
   `cell_size` and `grid_offset` give the measured lattice.
4. `cleanup_morph`: an opening then a closing of the alpha mask with a 2x2 square.
5. Colours are reduced to the working palette: the fixed `palette`; on a clean upscale the image's own colours,
   or Wu's quantiser at `max_colors` when it has more; on a degraded one the cells' colours with the near-
   duplicate shades that JPEG, blur and resampling make merged (perceptual distance, CIELAB) before
   `max_colors` applies, which is also what `auto_color_detect` counts. On a JPEG that stored its chroma
   subsampled (4:2:0, most do), cells of 4 px and more take the chroma that, subsampled and decoded as JPEG
   does, best explains the image (`kernels.jpeg_chroma`), instead of their median's, which their neighbours
   bleed into.
6. One pixel per cell by `downscale_method`, then every colour is mapped onto the working palette. Cells of
   3 px and more vote with their interior: blur, JPEG ringing and chroma subsampling blend neighbours into the
   cell's one-pixel border ring, and on a clean upscale the interior has the cell's colour anyway. On a
   degraded upscale `dominant` and `mode` take the palette colour nearest the interior's median instead of a
   pixel vote, which chroma bleed from neighbours can win (`dominant_color_threshold` then has no effect).
   On a JPEG, a shade the file does not need goes: painted as one of its two nearest colours with more cells,
   the cells re-encoded with the file's own quantisation tables explain the file at least as well
   (`kernels.pixel_jpeg`). That is what JPEG's rounding makes of small cells at an edge: ringing, and chroma
   bled from the neighbour, which colours and neighbours alone hardly tell from the artist's own shades. Cells
   under 4 px then take their shade's colour as all its cells explain the file (luma per pixel, chroma per
   sample as the decoder spreads it), not their medians, which are mostly their neighbours' chroma; where the
   file subsampled its chroma, the re-encoding test is asked again with those colours, and where it did not,
   a shade whose cells' luma the file shows falling in two (two steps of a ramp) is split first.
7. `transparent_background`: flood fill from the `background_mode` seeds within `background_tolerance`.
8. `cleanup_jaggy`, then `trim_borders`.
9. The palette is read from the result. `images` are the result upscaled by the scale (its size is the snapped
   crop) and the result at one pixel per cell, both RGBA PNG with transparent pixels (0, 0, 0, 0).

The nine choices where the reference is buggy or fal's schema is silent, each with its reason:

1. A fixed palette is always applied. The reference ignores it when the image already has no more than
   `max_colors` colours, which no caller who passed a palette wants.
2. Every downscale method ends on the working palette (median, mean, content-adaptive and the dominant
   method's mean fallback create colours), so `num_colors <= max_colors` always holds; the reference returns
   hundreds of colours from median and mean.
3. Ties are deterministic: the lowest `0xRRGGBB` wins a tied vote, the earlier palette entry a tied distance.
   The reference breaks ties by Rust's randomised hash order, so identical requests differ.
4. The dominant threshold is exact, `count >= dominant_color_threshold * opaque pixels`. The reference floors
   the right side, so at the default 0.05 its mean fallback can never fire for cells up to 6 px.
5. `cleanup_morph` is a true opening and closing of the alpha mask, colours untouched. The reference uses the
   same corner anchor for erosion and dilation, which moves the whole mask by (+2, +2) pixels.
6. `cleanup_jaggy` judges all pixels at once: an opaque pixel with no opaque 4-neighbour and exactly one
   diagonal one is removed. unfake.py's version removes nothing (a shadowed variable); the intended in-place
   scan eats a diagonal line down to one pixel. It runs after the background removal, so pixels that the
   removal isolated are cleaned too.
7. `max_colors: null` means no limit, as fal's documentation says ("Set None to disable limit"); the
   estimate runs only with `auto_color_detect`, capped by `max_colors` (32 when unlimited). The reference
   estimates on null and ignores `max_colors` when estimating, with a histogram heuristic that counts
   blends and noise as colours; Kiln's estimate is the merged palette of step 5.
8. `background_tolerance` defaults to 0, an exact colour match. fal's page shows no default, which is how it
   renders 0; after step 6 the background is one palette colour, so 0 removes exactly its region.
9. `trim_borders` crops border rows and columns of the result that are all background: the top-left pixel's
   colour within `background_tolerance`, or transparent (the ImageMagick and PIL trim idiom; no reference
   has this field). It runs after the background removal, and an all-background result is kept whole.

Also: a cell is opaque when at least half its pixels are, for every method (the Rust rule); content-adaptive
at scale 1 returns the image rather than halving it; images over `MAX_SIDE` px a side or `MAX_PIXELS` pixels
are refused with a 422 on `image_url`, where the reference raises. Kiln addition: `sync_mode`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AliasChoices, BaseModel, Field

from kernels.jpeg_chroma import (
    region_bleed,
    region_chroma,
    shift_chroma,
    srgb_to_ycbcr,
    ycbcr_to_srgb,
)
from kernels.pixel_cleanup import (
    BACKGROUND_MODES,
    binarize_alpha,
    fill_background,
    open_close_alpha,
    remove_jaggies,
    trim_box,
)
from kernels.pixel_downscale import (
    DOWNSCALE_METHODS,
    cell_samples,
    downscale_cells,
    downscale_median,
)
from kernels.pixel_jpeg import (
    BLUR_KERNELS,
    RESAMPLING_KERNELS,
    AxisSampling,
    axis_sampling,
    file_coding,
    fit_shades,
    luma_misfit,
    merge_unneeded_shades,
)
from kernels.pixel_palette import (
    cell_spreads,
    colour_counts,
    edge_cells,
    map_to_palette,
    merge_similar_colors,
    unique_colors,
    wu_palette,
)
from kernels.pixel_scale import (
    Grid,
    detect_grid_edges,
    detect_grid_runs,
    edge_profiles,
    grid_offsets,
)
from pipelines.contract import FieldError, Image, Pipeline, RawImage, RequestContext

MAX_SIDE = 8192
MAX_PIXELS = 16 * 1024 * 1024
# The estimate's cap when `max_colors` is null, the reference's.
AUTO_COLOR_CAP = 32

# Pixels a side (at most) of the interior of a cell whose median is its colour for the palette.
CELL_SAMPLES = 8
# Degraded inputs merge shades closer than this many times the cells' spread (`cell_spreads`), at least.
SPREAD_TO_MERGE = 2.0
# The least merge radius times the side of a cell's interior (`interior_side`): JPEG moves the median of the 3 x 3
# interior of a 5 px cell about 2.5 (`colour_distance`), as far as real palettes space their shades, and the median
# of n x n pixels by about 1/n of the noise, so large cells keep the 1.5-3 steps of dark ramps apart.
MERGE_FLOOR_TIMES_SIDE = 7.5
# `interior_side` counts at most this many pixels where the file stores chroma per pixel, though the median samples
# at most `CELL_SAMPLES` a side: they spread over the whole interior, and at 8 four single 15 px cells of a dark
# blue ramp in Trident's terrain, steps 0.6-1.1 apart, merged into one colour (now three). Under 4:2:0 a cell's
# chroma is the model's (`unbled_cells`) and the count stays at `CELL_SAMPLES`: at 12 there, q60 JPEGs of Crawl's
# floors split into shades of one colour.
INTERIOR_SIDE_CAP = 12
# Cells under this many pixels a side that border another chroma (`edge_cells`) weigh this much in the palette: in
# so small a cell JPEG's chroma bleed reaches most of the interior, so its median is shifted towards the
# neighbour, and a region's border cells would otherwise outweigh the tail test that merges such shades. Shades
# that differ in luma alone (a texture's ramps) keep their weight: luma is not subsampled. With `cell_spreads`
# leaving out the 2 px an edge reaches, 6 px and 7 px cells measured better at full weight: over the 1800
# real-art cases of seeds 0-2, 6 put the colour count within 2 of the art's in 1561 against 1549 for 8 (5 did as
# well, 4 and 7 worse), with as many cells right.
BLEED_REACH = 6
EDGE_WEIGHT = 0.25
# Cells from this many pixels a side (two chroma samples) take their chroma from the JPEG's subsampling model
# (`unbled_cells`). Smaller ones share each 2 x 2 chroma sample with their neighbours, so the model can hardly tell
# them apart and its solution follows the quantisation noise: on the real-art set's 4:2:0 JPEGs it put 51 % of
# the cells right at scale 2 (79 % without); at scale 3 it gained a point of cells (90.6 against 89.7 %) while
# moving colour counts as often away from the truth as towards it.
CHROMA_MODEL_MIN_SCALE = 4
# Shares of a 2 px cell's span on a resampled lattice whose middle its pixels are sampled from (`cells_image`):
# for its colour, the pixels nearest its centre; for its spread (`cell_spreads`), the middle half, whose pixels
# stray towards the neighbours as far as the cell's colour is uncertain. With the lattice placed to a few
# hundredths of a pixel (`kernels.pixel_scale`), colours from the middle quarter put 95.8 % of the cells right in
# the real-art set's 100 resampled scale-2 cases of seeds 0-4, against 94.2 % from the middle half, and 61 colour
# counts within 2 of the art's against 45 (palette targets: 3 of 10 against 2). Spreads from the middle quarter
# too did as well on cells but blind the palette's significance test, as a cell whose samples are all one pixel
# has no spread: 1 of the 10 targets.
COLOUR_SPAN = 0.25
SPREAD_SPAN = 0.5
# The resampling filter is chosen (`painting_sampling`) on at most this many cells a side, from the top left: over
# the real-art set's 3000 cases (up to 96 cells a side) that chose as the whole image did. The choice fits the
# shades through both filters, and most of a fit's time goes on trying each shade: on a 1024 x 1024 image at 2 px
# the choice took 236 ms over the whole image, 161 ms over 128 cells a side, 103 ms over 64.
FILTER_TRIAL_CELLS = 64
# A whole-pixel lattice's blur is chosen on at most this many pixels a side: at 8 and 16 px, 64 cells are most of a
# 1024 x 1024 image, and on 256 px a side the choice came out as on 64 cells in all but 7 of the set's 6000 cases.
BLUR_TRIAL_PIXELS = 256

HexColor = Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")]


class Image2PixelInput(BaseModel):
    image_url: str = Field(description="The image URL to process into improved pixel art")
    max_colors: int | None = Field(
        32, ge=1, le=256, description="Maximum number of colors in the output palette. Set None to disable limit."
    )
    auto_color_detect: bool = Field(False, description="Enable automatic detection of optimal number of colors.")
    fixed_palette: list[HexColor] | None = Field(
        None,
        min_length=1,
        max_length=256,
        validation_alias=AliasChoices("fixed_palette", "palette"),
        description="Optional fixed color palette as hex strings (e.g., ['#000000', '#ffffff']). "
        "Kiln also accepts it as `palette`; alpha digits of #rrggbbaa are ignored.",
    )
    detect_method: Literal["auto", "runs", "edge"] = Field("auto", description="Scale detection method to use.")
    scale: int | None = Field(None, ge=0, description="Force a specific pixel scale. If None, auto-detect.")
    downscale_method: Literal[DOWNSCALE_METHODS] = Field(
        "dominant", description="Downscaling method to produce the pixel-art output."
    )
    trim_borders: bool = Field(False, description="Trim borders of the image.")
    transparent_background: bool = Field(
        False,
        description="Remove background of the image. This will check for contiguous color regions from the edges "
        "after correction and make them transparent.",
    )
    cleanup_morph: bool = Field(False, description="Apply morphological operations to remove noise.")
    cleanup_jaggy: bool = Field(False, description="Remove isolated diagonal pixels (jaggy edge cleanup).")
    snap_grid: bool = Field(True, description="Align output to the pixel grid.")
    alpha_threshold: int = Field(128, ge=0, le=255, description="Alpha binarization threshold (0-255).")
    dominant_color_threshold: float = Field(0.05, ge=0.0, le=1.0, description="Dominant color threshold (0.0-1.0).")
    background_tolerance: int = Field(0, ge=0, le=255, description="Background tolerance (0-255).")
    background_mode: Literal[BACKGROUND_MODES] = Field(
        "corners", description="Controls where to flood-fill from when removing the background."
    )
    sync_mode: bool = Field(
        False,
        description="If True, the media will be returned as a data URI and the output data won't be available in "
        "the request history.",
    )


class Image2PixelOutput(BaseModel):
    pixel_scale: int = Field(description="The detected pixel scale of the input.")
    palette: list[str] = Field(description="The palette of the processed media.")
    num_colors: int = Field(description="The number of colors in the processed media.")
    images: list[Image] = Field(description="The processed pixel-art image (PNG) and the scaled image (PNG).")
    cell_size: list[float] | None = Field(
        None,
        description="Kiln extension: the measured cell [height, width] in input pixels, fractional when the input "
        "was resampled (e.g. [2.04, 2.04]); `pixel_scale` is it rounded.",
    )
    grid_offset: list[float] | None = Field(
        None,
        description="Kiln extension: [rows, columns] from the input's top-left corner to the first complete cell, "
        "in pixels; fractional with a fractional `cell_size`.",
    )


@dataclass(frozen=True)
class Item:
    inputs: Image2PixelInput
    image: torch.Tensor  # (4, H, W) uint8 RGBA on the host
    chroma_subsampling: tuple[int, int]  # the file's (`RawImage.chroma_subsampling`)
    jpeg_quantization: torch.Tensor | None  # the file's (`RawImage.jpeg_quantization`)


@dataclass(frozen=True)
class Pixelated:
    """The result of `pixelate`: the art at one pixel per cell and how it was found."""

    native: torch.Tensor  # (4, h, w) uint8 RGBA
    grid: Grid
    detected_by: str
    palette_source: str  # fixed, image, wu, merged or unlimited
    chroma_model: bool  # whether the cells' chroma came from the JPEG's subsampling model (`unbled_cells`)

    @property
    def cell_size(self) -> list[float]:
        """The measured cell height and width in input pixels (the `cell_size` output field)."""
        return [round(float(length), 4) for length in self.grid.cell_size]

    @property
    def grid_offset(self) -> list[float]:
        """Rows and columns before the first complete cell (the `grid_offset` output field)."""
        return [round(float(self.grid.offset_y), 4), round(float(self.grid.offset_x), 4)]

    @property
    def palette(self) -> list[str]:
        colours = unique_colors(self.native.unsqueeze(0))[0].tolist()
        return sorted(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours)


def to_rgba8(image: RawImage) -> torch.Tensor:
    """Decoded pixels as `(4, H, W)` uint8 RGBA: 16-bit rounded to 8, opaque alpha added to RGB."""
    pixels = image.pixels
    if image.max_value != 255:
        pixels = (pixels.long() * 255 + image.max_value // 2) // image.max_value
    pixels = pixels.to(torch.uint8)
    if not image.has_alpha:
        pixels = torch.cat([pixels, torch.full_like(pixels[:1], 255)])
    return pixels


def parse_palette(entries: Sequence[str]) -> torch.Tensor:
    """`#rrggbb` (or `#rrggbbaa`, alpha ignored) strings -> `(K, 3)` uint8."""
    return torch.tensor([[int(entry[i : i + 2], 16) for i in (1, 3, 5)] for entry in entries], dtype=torch.uint8)


def find_grid(image: torch.Tensor, inputs: Image2PixelInput) -> tuple[Grid, str]:
    """The pixel grid of a `(1, 4, H, W)` image and what found it: `scale`, `runs`, `edge` or `none`."""
    if inputs.scale:
        if inputs.scale == 1:
            return Grid(1), "scale"
        columns, rows = edge_profiles(image)
        offset_y, offset_x = grid_offsets(columns, rows, inputs.scale)
        return Grid(inputs.scale, int(offset_y), int(offset_x)), "scale"
    if inputs.detect_method in ("auto", "runs"):
        grid = detect_grid_runs(image)[0]
        if grid is not None:
            return grid, "runs"
        if inputs.detect_method == "runs":
            return Grid(1), "none"
    grid = detect_grid_edges(image)[0]
    return grid, "edge" if grid.scale > 1 else "none"


def cells_image(image: torch.Tensor, grid: Grid, snap: bool, span: float = COLOUR_SPAN) -> torch.Tensor:
    """The complete cells of `grid` as an image of exact `scale` x `scale` cells, at least one cell.

    With `snap` the cells start at the grid's offset, else at the corner. On a fractional grid (a resampled
    upscale) each cell's pixels are sampled from its span of the input, nearest neighbour, so the cells keep
    their place across the whole image instead of drifting off an integer grid. Cells of 2 px sample the middle
    `span` of it (`COLOUR_SPAN`, `SPREAD_SPAN`): the pixels at their borders are blends of the neighbours.
    """
    height, width = image.shape[-2:]
    scale = grid.scale
    (top, rows, period_y), (left, columns, period_x) = lattice(image, grid, snap)
    if not (grid.fractional and snap):
        return image[..., top : top + rows * scale, left : left + columns * scale]

    def sources(length: int, start: float, cells: int, period: float) -> torch.Tensor:
        sampled = span if scale == 2 else 1.0
        within = (torch.arange(scale, device=image.device, dtype=torch.float64) + 0.5 - scale / 2) * sampled / scale
        centres = start + (torch.arange(cells, device=image.device, dtype=torch.float64) + 0.5) * period
        position = (centres.unsqueeze(1) + within.unsqueeze(0) * period).flatten()
        return position.floor().long().clamp(0, length - 1)

    return image.index_select(-2, sources(height, top, rows, period_y)).index_select(-1, sources(width, left, columns, period_x))


def lattice(image: torch.Tensor, grid: Grid, snap: bool) -> tuple[tuple[float, int, float], ...]:
    """Per axis (rows, then columns), where the first complete cell of `cells_image` starts in `image`, how many
    complete cells follow and their size in pixels."""

    def axis(length: int, offset: float, period: float) -> tuple[float, int, float]:
        if not (grid.fractional and snap):
            start = int(offset) if snap and length - int(offset) >= grid.scale else 0
            return start, (length - start) // grid.scale, float(grid.scale)
        # Cells missing less than half a pixel at either end of the image still count as complete.
        if offset > period - 0.5:
            offset -= period
        return offset, max(1, int((length - offset + 0.5) // period)), period

    (height, width), (period_y, period_x) = image.shape[-2:], grid.cell_size
    return axis(height, grid.offset_y, period_y), axis(width, grid.offset_x, period_x)


def lattice_sampling(image: torch.Tensor, grid: Grid, snap: bool, kernel: str = "linear") -> list[AxisSampling]:
    """Per axis (rows, then columns), which cells of `cells_image` each pixel of `image` shows, through `kernel`:
    a resize's filter on a fractional grid, a blur (or none, "linear") on a whole-pixel one."""
    return [
        axis_sampling(length, start, cells, period, grid.scale, kernel, image.device)
        for length, (start, cells, period) in zip(image.shape[-2:], lattice(image, grid, snap))
    ]


def painting_sampling(
    native: torch.Tensor, decoded: torch.Tensor, grid: Grid, snap: bool, chroma_subsampling: tuple[int, int]
) -> list[AxisSampling]:
    """`lattice_sampling` of the JPEG `decoded` with the resampling filter that explains it best. On a fractional
    grid the resize that made the image could have been bilinear or bicubic, whose overshoot at edges a bilinear
    painting takes for other shades: the filter through which `native`'s cells, their shades fitted to the file
    (`fit_shades`), miss its luma least (`luma_misfit`), judged on the top left `FILTER_TRIAL_CELLS` cells a side.
    On the JPEGs of the real-art set's resampled cases (seeds 0-3) that chose the resize's own filter in 358 of
    360; the cells' labels as they are, their shades' luma fitted alone, in 354, which cost the gain at scale 2
    (bicubic 95.8 % of the cells right there, 96.6 % with the shades fitted, 95.7 % with one filter): cells that
    the overshoot mislabelled favour the wrong filter until the fit moves them.

    On a whole-pixel grid the image may have been blurred (`BLUR_KERNELS`), which a painting of sharp cells takes
    for other shades at every edge: the choice is between the sharp cells and each blur, on the top left
    `BLUR_TRIAL_PIXELS` pixels a side, by the cells as they are with their shades' luma fitted alone. Over the
    real-art set's 6000 cases of seeds 0-9 (scratch runs, the tree before and after) that put 1.25 points more of
    the cells right on the 300 blurred JPEGs (0.6 px, q80 4:2:0), their mean CIELAB error from 3.20 to 2.59, and
    0.72 points more on the q60 4:2:0 ones, whose chroma the codec blurs; colour counts as often within 2 of the
    art's (2074 of 2123 against 2075). Choosing with the shades fitted (`fit_shades`), as a resize's filter is
    chosen, did as well (0.68 points on q60) and cost a third more time over the 1024 x 1024 timing images."""
    if not snap:
        return lattice_sampling(decoded, grid, snap)
    height, width = (round(FILTER_TRIAL_CELLS * size) for size in grid.cell_size)
    if grid.fractional:
        kernels, fitted = list(RESAMPLING_KERNELS), True
    else:
        kernels, fitted = ["linear", *BLUR_KERNELS], False  # "linear" on whole pixels: each pixel its own cell
        height, width = min(height, BLUR_TRIAL_PIXELS), min(width, BLUR_TRIAL_PIXELS)
    trial = decoded[..., :height, :width]
    (_, rows, _), (_, columns, _) = lattice(trial, grid, snap)
    cells = native[..., :rows, :columns]

    def misfit(kernel: str) -> float:
        axes = lattice_sampling(trial, grid, snap, kernel)
        shades = fit_shades(cells, trial, *axes, chroma_subsampling) if fitted else cells
        return luma_misfit(shades, trial, *axes)

    return lattice_sampling(decoded, grid, snap, min(kernels, key=misfit))


def file_shades(
    native: torch.Tensor,
    decoded: torch.Tensor,
    grid: Grid,
    snap: bool,
    quantization: torch.Tensor,
    chroma_subsampling: tuple[int, int],
) -> torch.Tensor:
    """`native`'s shades as the JPEG `decoded` explains them (module docs, step 6), painted through the resize's
    filter (`painting_sampling`)."""
    axes = painting_sampling(native, decoded, grid, snap, chroma_subsampling)
    coding = file_coding(decoded, chroma_subsampling)
    native = merge_unneeded_shades(native, decoded, *axes, quantization, chroma_subsampling, coding)
    if grid.scale < CHROMA_MODEL_MIN_SCALE:
        # Smaller cells kept their medians, mostly their neighbours' chroma: each shade takes the colour that
        # all its cells together explain the file with (on the 120 JPEGs at scales 2-3 of the real-art set's
        # seeds 0-2 that put 91.5 % of the cells right against 89.8 % and brought their mean CIELAB error
        # from 4.1 to 3.1); then cells another shade explains better move there, and a shade whose cells
        # their painted neighbours explain goes. Where the file keeps every pixel's chroma, a shade whose cells'
        # luma falls in two is split first: on a whole-pixel lattice, over the set's 3000 cases of seeds 0-4,
        # that put 473 of the 477 palette targets within 2 (471) and changed 33 cases, all 4:4:4 JPEGs at 2-3
        # px: 28 came nearer the art's colour count, 2 went further, and 28 have more cells right, 1 fewer.
        native = fit_shades(native, decoded, *axes, chroma_subsampling)
        if chroma_subsampling != (1, 1) or (grid.fractional and snap):
            # The fit counts the rounding of the file's chroma as noise, but under 4:2:0 much of what a small
            # cell's chroma misses is that rounding, and it falls alike on every cell beside one neighbour: one
            # colour came back as shades of one luma, apart in chroma only (NetHack's grey 54 as Cr 119 and 131),
            # each explaining the file by 12 and 13 times a shade's price. The file's own coding, asked again
            # with the fitted colours, tells such shades from the art's: over the real-art set's 3000 cases of
            # seeds 0-4 the colour count came within 2 for 469 of the 477 palette targets (463), cells as
            # right as before (docs/image2pixel.md). Asked of 4:4:4 files too, it kept 467.
            # A resize blurs each cell into its neighbours, and where the split above gave a ramp's steps back
            # there, it also left one colour as shades apart in chroma (NetHack's grey 205 as three); asked
            # again, the file merges them. On the set's resized 4:4:4 JPEGs at 2-3 px (seeds 0-4), split and
            # asked again, 473 palette targets within 2 (472), 13 cases changed: 9 nearer the art's colour count,
            # 4 further, 10 with more cells right (+404) and 1 with fewer (-5). Split alone, 472 targets, NetHack
            # at 3 px x1.02 with 19 colours for 15; asked again on whole-pixel 4:4:4 files too, 15 more cases
            # changed, 3 nearer and 10 further.
            native = merge_unneeded_shades(native, decoded, *axes, quantization, chroma_subsampling, coding)
    return native


@dataclass(frozen=True)
class UnbledCells:
    """The cells of a JPEG that stored its chroma subsampled, as its chroma model (`kernels.jpeg_chroma`) explains
    them: each cell's chroma, and the cells image with the chroma that subsampling spread across cell borders
    taken back out of every pixel."""

    chroma: torch.Tensor  # (1, 2, h, w) float32 Cb, Cr
    image: torch.Tensor  # (1, 4, H, W) uint8 RGBA, the cells of `cells_image`


def unbled_cells(image: torch.Tensor, grid: Grid, factors: tuple[int, int]) -> UnbledCells:
    """`UnbledCells` of `image`, the decoded JPEG whose chroma was subsampled by `factors`, on `grid` (snapped).
    The cells cut by the image's edges are solved for too, each side as one region, and dropped."""

    def regions(length: int, start: float, cells: int, period: float) -> torch.Tensor:
        centres = torch.arange(length, device=image.device, dtype=torch.float64) + 0.5
        return (torch.floor((centres - start) / period).long() + 1).clamp(0, cells + 1)

    (top, rows, period_y), (left, columns, period_x) = lattice(image, grid, True)
    row_regions, column_regions = regions(image.shape[-2], top, rows, period_y), regions(image.shape[-1], left, columns, period_x)
    # solved on the RGB planes, integers, which the solve sums exactly (see `region_chroma`)
    regions_rgb = region_chroma(image[:, :3], row_regions, column_regions, (rows + 2, columns + 2), factors)
    chroma = srgb_to_ycbcr(regions_rgb)[:, 1:].float()
    bleed = region_bleed(chroma, row_regions, column_regions, factors)
    unbled = torch.cat([shift_chroma(image[:, :3].float(), -bleed).clamp_(0, 255).round_().to(torch.uint8), image[:, 3:]], 1)
    return UnbledCells(chroma[..., 1:-1, 1:-1], cells_image(unbled, grid, True))


def cell_colours(image: torch.Tensor, scale: int, chroma: torch.Tensor | None = None) -> torch.Tensor:
    """Each cell's colour for the palette, `(1, 4, h, w)`: the per-channel median of its interior, off the border
    where blur, ringing and chroma subsampling reach: from 3 px its pixels less the border ring, sampled on at
    most 8 x 8 of them, and from 5 px those samples less their own outer ring (2 px of border at 5-10 px). With
    `chroma` (`(1, 2, h, w)` Cb and Cr, `UnbledCells`) the median gives the luma and `chroma` the rest."""
    medians = _interior_medians(image, scale)
    if chroma is None:
        return medians
    luma = srgb_to_ycbcr(medians[:, :3].float())[:, :1]
    rgb = ycbcr_to_srgb(torch.cat([luma, chroma], 1)).round().to(torch.uint8)
    return torch.cat([rgb, medians[:, 3:]], 1)


def _interior_medians(image: torch.Tensor, scale: int) -> torch.Tensor:
    if scale < 3:
        return downscale_median(image, scale)
    return downscale_median(*cell_samples(image, scale, slice(1, scale - 1, -(-(scale - 2) // CELL_SAMPLES))))


def working_palette(
    image: torch.Tensor,
    scale: int,
    inputs: Image2PixelInput,
    unbled: Callable[[], UnbledCells] | None = None,
    strays: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, str, torch.Tensor | None]:
    """The palette every colour ends on, where it came from (`fixed`, `image`, `wu`, `merged` or `unlimited`), and
    the cells' colours (`cell_colours`) where they were measured for it, so they are not measured twice.

    On a clean upscale (every cell one colour) the palette is the image's colours, or Wu's at `max_colors`. On a
    degraded one it is the cells' colours (`cell_colours`) with near-duplicate shades merged
    (`merge_similar_colors`, within a radius that follows how far the cells' colours scatter), so JPEG, blur
    and resampling do not turn each real colour into several; that is also the estimate of `auto_color_detect`.
    Small cells at a chroma boundary weigh less there (`EDGE_WEIGHT`): their colours are the ones bled into.
    `unbled` gives the cells as a model of the file's chroma subsampling explains them: their chroma is then the
    model's, not their medians', and their spread is measured without the bleed the model explains. It is called
    only for a degraded image. `strays`, where given, are the cells whose pixels the spreads are measured on in
    place of `image`'s (`SPREAD_SPAN`).
    """
    if inputs.fixed_palette:
        return parse_palette(inputs.fixed_palette).to(image.device), "fixed", None
    budget = inputs.max_colors
    if inputs.auto_color_detect:
        budget = min(budget or AUTO_COLOR_CAP, AUTO_COLOR_CAP)
    if budget is None:
        return None, "unlimited", None
    corners = image[..., ::scale, ::scale]
    if torch.equal(image, corners.repeat_interleave(scale, -2).repeat_interleave(scale, -1)):
        colours = unique_colors(image)[0]
        if colours.shape[0] <= budget:
            return (colours if colours.shape[0] else None), "image", None
        return wu_palette(image, budget)[0], "wu", None
    model = unbled() if unbled is not None else None
    cells = cell_colours(image, scale, model.chroma if model is not None else None)
    opaque = cells[0, 3] >= 128
    if not bool(opaque.any()):
        return None, "image", cells
    colours, which, counts = colour_counts(cells[0, :3, opaque])
    spread_cells = model.image if model is not None else strays if strays is not None else image
    spreads = cell_spreads(spread_cells, cells, scale)[0, opaque].double()
    # Each colour is as uncertain as its cells' pixels stray from it (root mean square over its cells).
    errors = (torch.zeros_like(counts, dtype=torch.float64).index_add_(0, which, spreads**2) / counts).sqrt()
    # The median of a larger interior is surer than its pixels' spread says: by the root of its side over a 5 px
    # cell's (by the side itself, JPEG q60's 12 px cells split into shades of one colour).
    side = interior_side(scale, chroma_modelled=model is not None)
    errors *= (3 / side) ** 0.5
    # A 3 px cell's spread is taken against pixels of its border ring, bleed included (see `cell_spreads`): it says
    # how uncertain the cell's colour is, not how far the noise in flat areas reaches, so it sets no radius.
    merge_at_least = SPREAD_TO_MERGE * float(spreads.median()) if scale != 3 else 0.0
    weights = counts.double()
    if scale < BLEED_REACH:
        edge = edge_cells(cells, merge_at_least)[0, opaque]
        weights = torch.zeros_like(weights).index_add_(0, which, torch.where(edge, EDGE_WEIGHT, 1.0).double())
    palette, _ = merge_similar_colors(
        colours, weights, max_colors=budget, min_distance=merge_at_least, errors=errors,
        floor_distance=MERGE_FLOOR_TIMES_SIDE / side,
    )
    return palette, "merged", cells


def interior_side(scale: int, chroma_modelled: bool) -> int:
    """The pixels a side of a ``scale`` px cell over which its colour's median averages JPEG's noise: its interior
    less the border ring, at most `INTERIOR_SIDE_CAP` (`CELL_SAMPLES` where its chroma is modelled). Cells under
    5 px count as 5 px cells: chroma bleed, not the noise a median averages, moves their colour."""
    return max(3, min(CELL_SAMPLES if chroma_modelled else INTERIOR_SIDE_CAP, scale - 2))


# Nothing here is differentiated: outside autograd each of the palette's many small tensor ops costs a fifth less.
@torch.inference_mode()
def pixelate(
    image: torch.Tensor,
    inputs: Image2PixelInput,
    chroma_subsampling: tuple[int, int] = (1, 1),
    jpeg_quantization: torch.Tensor | None = None,
) -> Pixelated:
    """Runs the whole endpoint on one `(1, 4, H, W)` uint8 RGBA image on its device (see the module docs);
    `chroma_subsampling` and `jpeg_quantization` are the decoded file's (`RawImage`)."""
    # 1. Binary alpha, hidden colours cleared.
    image = binarize_alpha(image, inputs.alpha_threshold)
    # 2-3. Grid, and the complete cells under it.
    grid, detected_by = find_grid(image, inputs)
    if not inputs.snap_grid:
        grid = Grid(grid.scale)
    decoded = image
    image = cells_image(image, grid, grid.scale > 1)
    strays = None
    if grid.scale == 2 and grid.fractional:
        strays = cells_image(decoded, grid, True, SPREAD_SPAN)
    unbled = None
    if chroma_subsampling != (1, 1) and grid.scale >= CHROMA_MODEL_MIN_SCALE:
        unbled = partial(unbled_cells, decoded, grid, chroma_subsampling)
    # 4. Alpha specks and pinholes.
    if inputs.cleanup_morph:
        image = open_close_alpha(image)
    # 5. Colours onto the working palette.
    palette, palette_source, cells = working_palette(image, grid.scale, inputs, unbled, strays)
    if palette_source in ("fixed", "wu"):
        image = map_to_palette(image, palette)
    # 6. One pixel per cell, every colour back on the palette.
    if palette_source == "merged" and inputs.downscale_method in ("dominant", "mode"):
        # A degraded cell's pixels are its colour plus noise and its neighbours' bleed: its colour is the palette
        # colour nearest its interior's median, not a vote that the bleed can win. Opaque: half its pixels are.
        opaque = F.avg_pool2d((image[:, 3:] >= 128).float(), grid.scale) >= 0.5
        native = torch.cat([cells[:, :3], (opaque * 255).to(torch.uint8)], 1) * opaque
    else:
        native = downscale_cells(image, grid.scale, inputs.downscale_method, inputs.dominant_color_threshold)
    if palette is not None:
        native = map_to_palette(native, palette)
    if palette_source == "merged" and jpeg_quantization is not None and bool((native[:, 3] >= 128).all()):
        # The palette's merge sees colours, not how they came about: the file's own coding tells JPEG's shades
        # from the art's (module docs, step 6). A fixed palette is the caller's, and a clean upscale has none.
        native = file_shades(
            native, decoded, grid, inputs.snap_grid, jpeg_quantization.to(native.device), chroma_subsampling
        )
    # 7-8. Background, jaggies, borders.
    if inputs.transparent_background:
        native = fill_background(native, inputs.background_mode, inputs.background_tolerance)
    if inputs.cleanup_jaggy:
        native = remove_jaggies(native)
    if inputs.trim_borders:
        top, bottom, left, right = trim_box(native, inputs.background_tolerance)[0]
        native = native[..., top:bottom, left:right]
    return Pixelated(native[0], grid, detected_by, palette_source, unbled is not None and cells is not None)


class Image2PixelPipeline(Pipeline[Image2PixelInput, Item, Pixelated]):
    endpoint_id = "fal-ai/image2pixel"
    Input = Image2PixelInput
    Output = Image2PixelOutput
    max_side: ClassVar[int] = MAX_SIDE
    max_pixels: ClassVar[int] = MAX_PIXELS
    bytes_per_input_pixel: ClassVar[int] = 128  # measured ~100 B/px marginal (1-9 Mpx, CPU) over ~0.4 GB fixed

    def decode(self, inputs: Image2PixelInput, request: RequestContext) -> Item:
        raw = request.fetch_image(inputs.image_url, "image_url")
        width, height = raw.width, raw.height
        if max(width, height) > self.max_side or width * height > self.max_pixels:
            raise FieldError(
                "image_url",
                f"the image is {width}x{height}; image2pixel accepts at most {self.max_side} px a side and "
                f"{self.max_pixels} pixels, so downscale it first",
                type="image_too_large",
            )
        if inputs.scale and inputs.scale > min(width, height):
            raise FieldError(
                "scale",
                f"`scale` is {inputs.scale}, larger than the image ({width}x{height}); use at most "
                f"{min(width, height)}, or 0 to detect it",
            )
        return Item(inputs, to_rgba8(raw), raw.chroma_subsampling, raw.jpeg_quantization)

    def predict(self, items: Sequence[Item], requests: Sequence[RequestContext]) -> list[Pixelated]:
        results = []
        for item, request in zip(items, requests):
            result = pixelate(
                item.image.to(self.device).unsqueeze(0), item.inputs, item.chroma_subsampling, item.jpeg_quantization
            )
            grid = result.grid
            request.add_provenance(
                {
                    "detected_by": result.detected_by,
                    "grid_offset": [grid.offset_y, grid.offset_x],
                    "palette_source": result.palette_source,
                    "chroma_subsampling": list(item.chroma_subsampling),
                    "chroma_model": result.chroma_model,
                }
            )
            request.log(
                f"pixel scale {grid.scale} ({result.detected_by}), grid offset ({grid.offset_y}, "
                f"{grid.offset_x}), palette from {result.palette_source}"
            )
            results.append(result)
        return results

    def encode(self, prediction: Pixelated, inputs: Image2PixelInput, request: RequestContext) -> Image2PixelOutput:
        scale = prediction.grid.scale
        native = prediction.native
        full = native.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        palette = prediction.palette
        images = [
            request.image_output(
                np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()), sync_mode=inputs.sync_mode
            )
            for pixels in (full, native)
        ]
        return Image2PixelOutput(
            pixel_scale=scale,
            palette=palette,
            num_colors=len(palette),
            images=images,
            cell_size=prediction.cell_size,
            grid_offset=prediction.grid_offset,
        )
