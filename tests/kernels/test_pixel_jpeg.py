"""Pixel-art cells against the JPEG they came in (`kernels.pixel_jpeg`): the lattice sampling checked against
Pillow's own resize, the shades the file does not need checked on real art encoded by libjpeg, and the shades'
colours refitted against files painted through the encoder's model and against libjpeg's."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from kernels.jpeg_chroma import jpeg_chroma_roundtrip, srgb_to_ycbcr, ycbcr_to_srgb
from kernels.pixel_jpeg import (
    BLUR_KERNELS,
    AxisSampling,
    _padded,
    _render,
    _shown,
    axis_sampling,
    file_coding,
    fit_shades,
    luma_misfit,
    merge_unneeded_shades,
)
from server.media import decode_image
from tests.fixtures import pixel_art

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cells_of(rgb: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 -> opaque RGBA (1, 4, h, w)."""
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    return torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None]


def jpeg_file(rgb: np.ndarray, quality: int, subsampling: int):
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return decode_image(buffer.getvalue(), max_pixels=1 << 24)


def colours(cells: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(colour) for colour in cells[0, :3].flatten(1).T.tolist()}


def test_a_whole_pixel_lattice_shows_one_cell_a_pixel():
    rows = axis_sampling(11, 2, 3, 3.0, 3)
    assert rows.cells.tolist() == [[0], [0], [0], [0], [0], [1], [1], [1], [2], [2], [2]]
    assert rows.inside.tolist() == [False, False] + [True] * 9
    assert rows.weights.eq(1).all()


def test_a_whole_pixel_lattice_paints_each_pixel_with_its_cell():
    """`_render` on whole-pixel lattices, against each pixel's cell found from its centre; pixels before the
    first cell and past the last take the edge cells."""
    cells = torch.from_numpy(np.random.default_rng(5).random((3, 9, 13)))
    for (height, top), (width, left), scale in (((24, 2), (40, 1), 2), ((31, 0), (44, 3), 3)):
        rows = axis_sampling(height, top, cells.shape[1], float(scale), scale)
        columns = axis_sampling(width, left, cells.shape[2], float(scale), scale)
        expected = torch.empty(3, height, width, dtype=cells.dtype)
        for y in range(height):
            for x in range(width):
                row = min(max(int((y + 0.5 - top) // scale), 0), cells.shape[1] - 1)
                column = min(max(int((x + 0.5 - left) // scale), 0), cells.shape[2] - 1)
                expected[:, y, x] = cells[:, row, column]
        assert torch.equal(_render(cells, rows, columns), expected)


@pytest.mark.parametrize("kernel", ["linear", "cubic"])
def test_a_lattices_cells_only_go_forward(kernel):
    """Along an axis each pixel's first cell is at or after the one before's, and its taps are consecutive cells
    whose weights sum to 1, for every factor of an editor's rescale by whole per cent and 33/32. (At x1.08 a
    bicubic pixel whose outer taps fell on the filter's zeros started a cell after the next one, and fitting
    shades through such a lattice, 3.24 px cells from 1.08, failed on a negative band offset.)"""
    for factor in [percent / 100 for percent in range(90, 111)] + [33 / 32]:
        for scale in (2, 3):
            period = scale * factor
            axis = axis_sampling(120, factor, int((120 - factor) // period), period, scale, kernel)
            first = axis.cells[:, 0]
            assert bool((first[1:] >= first[:-1]).all()), (factor, scale)
            consecutive = (first.unsqueeze(1) + torch.arange(axis.cells.shape[1])).clamp(max=axis.cells.max())
            assert torch.equal(axis.cells, consecutive), (factor, scale)
            assert torch.allclose(axis.weights.sum(1), torch.ones(120)), (factor, scale)
    rows = axis_sampling(64, 1.08, 19, 3.24, 3, kernel)
    palette = np.random.default_rng(1).integers(0, 256, (6, 3), dtype=np.uint8)
    cells = cells_of(palette[np.random.default_rng(2).integers(0, 6, (19, 19))])
    observed = _render(cells[0, :3].double(), rows, rows).clamp(0, 255).round().to(torch.uint8)[None]
    assert fit_shades(cells, observed, rows, rows, (2, 2)).shape == cells.shape


@pytest.mark.parametrize("kernel, method", [("linear", Image.BILINEAR), ("cubic", Image.BICUBIC)])
@pytest.mark.parametrize("scale, factor", [(3, 1.02), (3, 0.98), (2, 1.03), (2, 0.97)])
def test_a_resampled_lattice_paints_as_pillows_resize(scale, factor, kernel, method):
    """An upscale resized by Pillow is the cells painted on the measured lattice (cells of scale * f pixels from 0)
    with the resize's own filter, stretched when shrinking as Pillow's is. Pillow rounds and clips each pass to
    8 bits, so a bicubic overshoot past 0 or 255 differs there; the other filter misses by several levels."""
    art = np.random.default_rng(5).integers(0, 256, (19, 21, 3), dtype=np.uint8)
    big = art.repeat(scale, 0).repeat(scale, 1)
    size = (round(big.shape[1] * factor), round(big.shape[0] * factor))
    resized = np.asarray(Image.fromarray(big).resize(size, method)).astype(np.float64)

    def error(kernel: str) -> np.ndarray:
        rows = axis_sampling(size[1], 0, 19, scale * size[1] / big.shape[0], scale, kernel)
        columns = axis_sampling(size[0], 0, 21, scale * size[0] / big.shape[1], scale, kernel)
        painted = _render(torch.from_numpy(art).permute(2, 0, 1).double(), rows, columns).permute(1, 2, 0).numpy()
        return np.abs(painted.clip(0, 255) - resized)

    assert error(kernel).mean() <= (0.25 if kernel == "linear" else 0.5), error(kernel).mean()
    if kernel == "linear":
        assert error(kernel).max() <= 1.0
    other = "cubic" if kernel == "linear" else "linear"
    assert error(other).mean() >= 3, error(other).mean()


@pytest.mark.parametrize("name", ["angband-bolt-texture", "angband-flat", "trident-ships", "trident-terrain"])
@pytest.mark.parametrize("step, kernel", [("resample", "linear"), ("bicubic", "cubic")])
def test_the_resizes_own_filter_explains_the_file_best(name, step, kernel):
    """Real art at 2 px, resized by x0.97 bilinear or bicubic, then a q90 4:2:0 JPEG: its true cells on the true
    lattice, their shades' luma fitted to the file, miss it by less through the resize's own filter than through
    the other. (Not NetHack's or the red-on-navy's saturated colours: Pillow clips a bicubic overshoot past 0 or
    255, which the linear painting then fits better, nor the dark floor's ramp, where the JPEG's noise outweighs
    the filters' difference.)"""
    case = pixel_art.degraded(name, 2, (1, 1), f"{step}0.97 jpeg90-420")
    (rows, columns), cells = case.truth.shape[:2], cells_of(case.truth)
    observed = torch.from_numpy(case.image.copy()).permute(2, 0, 1)[None]

    def misfit(kernel: str) -> float:
        axes = [axis_sampling(length, start, count, case.cell_size, 2, kernel)
                for length, start, count in zip(case.image.shape[:2], case.first_cell, (rows, columns))]
        return luma_misfit(cells, observed, *axes)

    other = "cubic" if kernel == "linear" else "linear"
    assert misfit(kernel) < 0.75 * misfit(other), (misfit(kernel), misfit(other))


@pytest.mark.parametrize("name, scale, source, neighbour", [
    ("nethack-cells", 3, (0, 0, 0), (255, 108, 0)),
    ("nethack-cells", 3, (54, 54, 54), (71, 108, 108)),
    ("trident-terrain", 3, (191, 160, 118), (95, 118, 54)),
    ("trident-terrain", 4, (54, 118, 18), (217, 191, 160)),
])
def test_a_shade_jpeg_bled_into_goes_back_to_its_colour(name, scale, source, neighbour):
    """Real art as a q75 (q85 at 4 px) 4:2:0 JPEG, and its true cells, except that the cells of one colour beside
    another take the colour the decoded file shows at their centres: tinted by the neighbour. The file does not
    need that tint: its cells go back to their colour, and every other colour of the art stays."""
    art = pixel_art.load(name)
    raw = jpeg_file(art.repeat(scale, 0).repeat(scale, 1), 75 if scale == 3 else 85, 2)
    decoded = raw.pixels.permute(1, 2, 0).numpy()
    beside = np.zeros(art.shape[:2], bool)
    for axis in (0, 1):
        for shift in (1, -1):
            beside |= (np.roll(art, shift, axis) == neighbour).all(-1)
    bled = (art == source).all(-1) & beside
    assert bled.sum() >= 6
    tint = decoded[scale // 2 :: scale, scale // 2 :: scale][bled].mean(0).round().astype(np.uint8)
    assert np.abs(tint.astype(int) - source).max() >= 4, tint  # the file does show a tint there
    measured = art.copy()
    measured[bled] = tint
    rows, columns = (axis_sampling(length, 0, length // scale, float(scale), scale) for length in decoded.shape[:2])
    merged = merge_unneeded_shades(
        cells_of(measured), raw.pixels[None], rows, columns, raw.jpeg_quantization, (2, 2)
    )
    assert torch.equal(merged, cells_of(art))


@pytest.mark.parametrize("name, scale, degradation", [
    ("nethack-cells", 3, (75, 2)), ("angband-bolt-texture", 4, (75, 2)), ("crawl-dark-floor", 3, (90, 0)),
    ("trident-ships", 5, (60, 2)),
])
def test_the_arts_own_colours_are_all_needed(name, scale, degradation):
    """The true cells of real art (ramps of shades 1.5-3 apart, a 32-colour texture, colours of a handful of
    cells), encoded by libjpeg: every colour explains the file better than its nearest heavier colours."""
    art = pixel_art.load(name)
    raw = jpeg_file(art.repeat(scale, 0).repeat(scale, 1), *degradation)
    factors = (2, 2) if degradation[1] == 2 else (1, 1)
    rows, columns = (axis_sampling(length, 0, length // scale, float(scale), scale) for length in raw.pixels.shape[1:])
    cells = cells_of(art)
    merged = merge_unneeded_shades(cells, raw.pixels[None], rows, columns, raw.jpeg_quantization, factors)
    assert torch.equal(merged, cells)


@pytest.mark.parametrize("factor, quality, subsampling", [(0.97, 90, 2), (1.03, 85, 2), (0.97, 90, 0)])
@pytest.mark.parametrize("tint", [(247, 247, 247), (250, 252, 250)])
def test_white_beside_dark_cells_after_a_bicubic_resize_needs_no_darker_shade(factor, quality, subsampling, tint):
    """Pillow's bicubic resize overshoots at edges and clips what passes 255: white cells beside dark ones (given a
    shade of their own, as a cell's measured colour there would) paint no brighter than white. Painted unclipped,
    the file seemed to ask for less light there: that shade stayed, and the true cells themselves lost a colour."""
    rng = np.random.default_rng(0)
    palette = np.array([[255, 255, 255], [0, 0, 0], [18, 54, 18], [200, 30, 30], [40, 40, 160]], np.uint8)
    index = np.where(rng.random((32, 32)) < 0.9, 0, rng.integers(1, 5, (32, 32)))
    art = palette[index]
    big = art.repeat(2, 0).repeat(2, 1)
    size = (round(big.shape[1] * factor), round(big.shape[0] * factor))
    raw = jpeg_file(np.asarray(Image.fromarray(big).resize(size, Image.BICUBIC)), quality, subsampling)
    axes = [axis_sampling(length, 0, 32, length / 32, 2, "cubic") for length in (size[1], size[0])]
    factors = (2, 2) if subsampling == 2 else (1, 1)
    beside_dark = np.zeros(index.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            beside_dark |= np.roll(index, shift, axis) != 0
    measured = art.copy()
    measured[(index == 0) & beside_dark] = tint
    assert ((index == 0) & beside_dark).sum() >= 200
    for cells in (cells_of(measured), cells_of(art)):
        merged = merge_unneeded_shades(cells, raw.pixels[None], *axes, raw.jpeg_quantization, factors)
        assert torch.equal(merged, cells_of(art))


@pytest.mark.parametrize("scale, factor, start, kernel, unit", [
    (2, 1.0, 0, "linear", (16, 16)), (3, 1.0, 2, "linear", (8, 16)), (3, 0.98, 1.3, "linear", (16, 8)),
    (2, 1.03, 0.6, "cubic", (16, 16)), (5, 1.02, 2.5, "cubic", (8, 8)),
])
def test_each_mcu_shows_the_labels_its_pixels_take(scale, factor, start, kernel, unit):
    """`_shown` against its definition, pixel by pixel: an MCU shows a label where one of its pixels takes some
    (a weight not 0) of a cell of that label."""
    period = scale * factor
    height, width, count = 61, 75, 7
    rows, columns = (
        _padded(axis_sampling(length, start, int((length - start) // period), period, scale, kernel), side)
        for length, side in ((height, unit[0]), (width, unit[1]))
    )
    cells = (int(rows.cells.max()) + 1, int(columns.cells.max()) + 1)
    label = torch.from_numpy(np.random.default_rng(scale).integers(0, count, cells))
    tiles_across = columns.cells.shape[0] // unit[1]
    expected = torch.zeros(rows.cells.shape[0] // unit[0] * tiles_across, count, dtype=torch.bool)
    for y in range(rows.cells.shape[0]):
        for x in range(columns.cells.shape[0]):
            for row, row_weight in zip(rows.cells[y].tolist(), rows.weights[y].tolist()):
                for column, column_weight in zip(columns.cells[x].tolist(), columns.weights[x].tolist()):
                    if row_weight != 0 and column_weight != 0:
                        expected[y // unit[0] * tiles_across + x // unit[1], label[row, column]] = True
    assert torch.equal(_shown(label, rows, columns, unit, count), expected)


def test_colours_in_the_last_partial_mcus_are_judged_too():
    """A 158 x 159 image: its last row and column of MCUs are part padding, which the encoder fills by repeating
    the last pixels. Five of the art's colours (1-16 cells each) lie only there; with those MCUs left out they
    had no evidence for them and went."""
    case = pixel_art.degraded("angband-flat", 5, (2, 1), "jpeg75-420")
    assert case.image.shape[:2] == (158, 159)
    (top, left), (rows, columns) = case.first_cell, case.truth.shape[:2]
    cells = cells_of(case.truth)
    merged = merge_unneeded_shades(
        cells, cells_of(case.image), axis_sampling(158, top, rows, 5.0, 5), axis_sampling(159, left, columns, 5.0, 5),
        torch.from_numpy(np.array(case.jpeg_quantization)), (2, 2),
    )
    assert torch.equal(merged, cells)


def test_a_files_coding_computed_once_serves_every_call():
    """`file_coding` is what the encoder saw, padded to whole MCUs by repeating the last row and column (numpy's
    edge padding here); passed to `merge_unneeded_shades` it gives what the call computes for itself, and one
    of another file is refused."""
    case = pixel_art.degraded("angband-flat", 3, (1, 2), "jpeg75-420")
    height, width = case.image.shape[:2]
    (top, left), (rows, columns) = case.first_cell, case.truth.shape[:2]
    padded = np.pad(case.image, ((0, -height % 16), (0, -width % 16), (0, 0)), mode="edge")
    coding = file_coding(cells_of(case.image), (2, 2))
    expected = srgb_to_ycbcr(torch.from_numpy(padded).permute(2, 0, 1)[None].float())[0]
    assert torch.equal(coding.ycc, expected)
    assert coding.coefficients.shape == (padded.shape[0] // 16 * (padded.shape[1] // 16), 6, 8, 8)
    noisy = case.truth.copy()
    noisy[::4, ::3] = np.clip(noisy[::4, ::3].astype(int) + 6, 0, 255)
    axes = axis_sampling(height, top, rows, 3.0, 3), axis_sampling(width, left, columns, 3.0, 3)
    tables = torch.from_numpy(np.array(case.jpeg_quantization))
    alone = merge_unneeded_shades(cells_of(noisy), cells_of(case.image), *axes, tables, (2, 2))
    assert colours(alone) < colours(cells_of(noisy))
    shared = merge_unneeded_shades(cells_of(noisy), cells_of(case.image), *axes, tables, (2, 2), coding)
    assert torch.equal(shared, alone)
    other = file_coding(cells_of(case.image[:-16]), (2, 2))
    with pytest.raises(ValueError, match="coding"):
        merge_unneeded_shades(cells_of(noisy), cells_of(case.image), *axes, tables, (2, 2), other)


def test_the_result_is_deterministic_and_keeps_to_the_input_colours():
    rng = np.random.default_rng(11)
    art = pixel_art.load("trident-terrain")
    # each colour in three shades, 6 levels apart: what JPEG leaves of it, as far as the file can tell
    noisy = np.clip(art.astype(int) + rng.choice([-6, 0, 6], art.shape[:2] + (1,)), 0, 255).astype(np.uint8)
    raw = jpeg_file(art.repeat(4, 0).repeat(4, 1)[1:, 3:], 75, 2)
    rows = axis_sampling(raw.height, 3, art.shape[0] - 1, 4.0, 4)
    columns = axis_sampling(raw.width, 1, art.shape[1] - 1, 4.0, 4)
    cells = cells_of(noisy[1:, 1:])
    first, second = (merge_unneeded_shades(cells, raw.pixels[None], rows, columns, raw.jpeg_quantization, (2, 2))
                     for _ in range(2))
    assert torch.equal(first, second)
    assert colours(first) < colours(cells)


def test_bad_input_is_refused():
    raw = jpeg_file(np.zeros((16, 16, 3), np.uint8), 75, 2)
    axis = axis_sampling(16, 0, 4, 4.0, 4)
    cells = cells_of(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="opaque"):
        merge_unneeded_shades(cells * 0, raw.pixels[None], axis, axis, raw.jpeg_quantization, (2, 2))
    with pytest.raises(ValueError, match="sample"):
        short = axis_sampling(12, 0, 3, 4.0, 4)
        merge_unneeded_shades(cells, raw.pixels[None], short, axis, raw.jpeg_quantization, (2, 2))
    with pytest.raises(ValueError, match="cells"):
        merge_unneeded_shades(cells[0], raw.pixels[None], axis, axis, raw.jpeg_quantization, (2, 2))
    with pytest.raises(ValueError, match="opaque"):
        fit_shades(cells * 0, raw.pixels[None], axis, axis, (2, 2))
    with pytest.raises(ValueError, match="sample"):
        fit_shades(cells, raw.pixels[None], axis_sampling(12, 0, 3, 4.0, 4), axis, (2, 2))
    with pytest.raises(ValueError, match="factors"):
        fit_shades(cells, raw.pixels[None], axis, axis, (4, 4))


@CUDA
def test_cuda_agrees_with_the_cpu():
    art = pixel_art.load("nethack-cells")
    noisy = np.clip(art.astype(int) + np.random.default_rng(2).integers(-5, 6, art.shape), 0, 255).astype(np.uint8)
    raw = jpeg_file(art.repeat(3, 0).repeat(3, 1), 75, 2)
    rows, columns = (axis_sampling(length, 0, length // 3, 3.0, 3) for length in raw.pixels.shape[1:])
    on_cpu = merge_unneeded_shades(cells_of(noisy), raw.pixels[None], rows, columns, raw.jpeg_quantization, (2, 2))
    axes = [AxisSampling(*(field.cuda() for field in axis)) for axis in (rows, columns)]
    on_cuda = merge_unneeded_shades(
        cells_of(noisy).cuda(), raw.pixels[None].cuda(), *axes, raw.jpeg_quantization.cuda(), (2, 2)
    )
    assert (on_cuda.cpu() == on_cpu).all(1).float().mean() >= 0.99
    refitted_on_cpu = fit_shades(on_cpu, raw.pixels[None], rows, columns, (2, 2))
    refitted_on_cuda = fit_shades(on_cpu.cuda(), raw.pixels[None].cuda(), *axes, (2, 2))
    assert ((refitted_on_cuda.cpu().int() - refitted_on_cpu.int()).abs().amax(1) <= 1).float().mean() >= 0.99


def shade_colours(cells: torch.Tensor, label: np.ndarray) -> np.ndarray:
    """The colour ``cells`` gives each shade of ``label`` (h, w): (shades, 3); refused unless every cell of a
    shade has its one colour."""
    rgb = cells[0, :3].permute(1, 2, 0).numpy().astype(int)
    shades = []
    for shade in range(label.max() + 1):
        found = np.unique(rgb[label == shade], axis=0)
        assert len(found) == 1, (shade, found)
        shades.append(found[0])
    return np.array(shades)


@pytest.mark.parametrize("factors", [(2, 2), (1, 2), (1, 1)])
def test_fit_shades_finds_the_colours_a_file_was_painted_with(factors):
    """A file made by the model's own definition: random cells painted on a resampled lattice (2.94 px rows from
    1.3, 2.06 px columns from 0.6, the pixels before them another colour), the chroma stored and decoded as
    libjpeg does (`jpeg_chroma_roundtrip`), quantisation aside. Given each shade 25 levels off in chroma, the fit
    finds every true colour within the rounding of the file to bytes."""
    rng = np.random.default_rng(3)
    label = rng.integers(0, 6, (21, 17))
    truth = rng.integers(30, 226, (6, 3)).astype(np.float64)
    rows, columns = axis_sampling(64, 1.3, 21, 2.94, 3), axis_sampling(36, 0.6, 17, 2.06, 2)
    ycc_cells = srgb_to_ycbcr(torch.from_numpy(truth[label]).permute(2, 0, 1)[None])[0]
    painted = _render(ycc_cells, rows, columns)
    on_lattice = rows.inside[:, None] & columns.inside[None]
    painted = torch.where(on_lattice, painted, torch.tensor([90.0, 200.0, 60.0]).view(3, 1, 1))
    decoded = torch.cat([painted[None, :1], jpeg_chroma_roundtrip(painted[None, 1:], factors)], 1)
    observed = ycbcr_to_srgb(decoded).round().to(torch.uint8)
    off = srgb_to_ycbcr(torch.from_numpy(truth).T.reshape(1, 3, 6, 1)) + torch.tensor([0.0, 25, -25]).view(1, 3, 1, 1)
    wrong = ycbcr_to_srgb(off)[0, :, :, 0].T.round().numpy().astype(np.uint8)
    assert np.abs(wrong.astype(int) - truth).max() >= 20
    refitted = fit_shades(cells_of(wrong[label]), observed, rows, columns, factors)
    assert np.abs(shade_colours(refitted, label) - truth).max() <= 1
    assert torch.equal(refitted[:, 3], torch.full_like(refitted[:, 3], 255))


def resampled_jpeg(art: np.ndarray):
    """Real art at scale 2, resampled x0.98 by Pillow and saved by libjpeg at q85 with 4:2:0 chroma (one chroma
    sample spans a cell and its neighbours), and the lattice of its cells."""
    big = art.repeat(2, 0).repeat(2, 1)
    size = (round(big.shape[1] * 0.98), round(big.shape[0] * 0.98))
    raw = jpeg_file(np.asarray(Image.fromarray(big).resize(size, Image.BILINEAR)), 85, 2)
    periods = 2 * raw.height / big.shape[0], 2 * raw.width / big.shape[1]
    rows = axis_sampling(raw.height, 0, art.shape[0], periods[0], 2)
    columns = axis_sampling(raw.width, 0, art.shape[1], periods[1], 2)
    centre_rows = np.floor((np.arange(art.shape[0]) + 0.5) * periods[0]).astype(int)
    centre_columns = np.floor((np.arange(art.shape[1]) + 0.5) * periods[1]).astype(int)
    seen = raw.pixels[:3].permute(1, 2, 0).numpy()[centre_rows][:, centre_columns].astype(np.float64)
    return raw, rows, columns, seen


@pytest.mark.parametrize("factor, subsampling", [(0.97, 2), (1.03, 2), (0.97, 0)])
def test_fit_shades_counts_what_a_bicubic_resize_clipped(factor, subsampling):
    """Cells of white, black and three colours at 2 px, resized bicubic by Pillow, which clips the overshoot at
    edges past 255 or 0, and saved by libjpeg at q90. Fitted to the file as it is, white came back 10-13 levels
    dark and black 17-21 light; with the clipped overshoot added back, both within 7."""
    rng = np.random.default_rng(0)
    palette = np.array([[255, 255, 255], [0, 0, 0], [18, 54, 18], [200, 30, 30], [40, 40, 160]], np.uint8)
    index = np.where(rng.random((32, 32)) < 0.6, 0, rng.integers(1, 5, (32, 32)))
    big = palette[index].repeat(2, 0).repeat(2, 1)
    size = (round(big.shape[1] * factor), round(big.shape[0] * factor))
    raw = jpeg_file(np.asarray(Image.fromarray(big).resize(size, Image.BICUBIC)), 90, subsampling)
    axes = [axis_sampling(length, 0, 32, length / 32, 2, "cubic") for length in (size[1], size[0])]
    fitted = fit_shades(cells_of(palette[index]), raw.pixels[None], *axes, (2, 2) if subsampling == 2 else (1, 1))
    white, black = (shade_colours(fitted, index)[shade] for shade in (0, 1))
    assert (255 - white).max() <= 7 and black.max() <= 7, (white, black)


def test_fit_shades_moves_bled_colours_back_on_real_art_encoded_by_libjpeg():
    """Each of the art's shades is given the mean colour the decoded file shows at its cells' centres, as a reading
    of the cells does. Fitted, every fixture's cells are nearer their true colours (RGB distance), and all of them
    together by more than half."""
    before, after = [], []
    for name in pixel_art.NAMES:
        art = pixel_art.load(name)
        raw, rows, columns, seen = resampled_jpeg(art)
        keys, label = np.unique(art.reshape(-1, 3), axis=0, return_inverse=True)
        label = label.reshape(art.shape[:2])
        read = np.array([seen[label == shade].mean(0) for shade in range(len(keys))]).round().astype(np.uint8)
        fitted = fit_shades(cells_of(read[label]), raw.pixels[None], rows, columns, (2, 2))
        for errors, found in ((before, read[label]), (after, fitted[0, :3].permute(1, 2, 0).numpy())):
            errors.append(float(np.linalg.norm(found.astype(int) - art.astype(int), axis=-1).mean()))
    assert all(fitted < read for fitted, read in zip(after, before)), (after, before)
    assert sum(after) <= 0.5 * sum(before), (after, before)


def rgb_error(cells: torch.Tensor, art: np.ndarray) -> float:
    """The mean RGB distance from the colours of ``cells`` to the art's."""
    return float(np.linalg.norm(cells[0, :3].permute(1, 2, 0).numpy().astype(int) - art.astype(int), axis=-1).mean())


def test_fit_shades_drops_the_shades_that_chroma_bleed_made():
    """Each of the art's shades is split in two: its cells beside another colour become a shade of their own,
    coloured as the file shows them there, as a reading of small cells under 4:2:0 makes of chroma bleed. Fitted,
    every fixture of at most 16 colours comes back with its own colour count within 2 (the split readings have
    2-6 shades more), and its cells nearer their true colours."""
    extra = 0
    for name in pixel_art.NAMES:
        art = pixel_art.load(name)
        count = pixel_art.count_colours(art)
        if count > 16:
            continue
        raw, rows, columns, seen = resampled_jpeg(art)
        _, label = np.unique(art.reshape(-1, 3), axis=0, return_inverse=True)
        label = label.reshape(art.shape[:2])
        padded = np.pad(label, 1, mode="edge")
        border = np.zeros(label.shape, bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            border |= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] != label
        split = label * 2 + border
        read = np.zeros(art.shape, np.uint8)
        for shade in np.unique(split):
            read[split == shade] = seen[split == shade].mean(0).round()
        fitted = fit_shades(cells_of(read), raw.pixels[None], rows, columns, (2, 2))
        extra += len(colours(cells_of(read))) - count
        assert abs(len(colours(fitted)) - count) <= 2, (name, len(colours(fitted)), count)
        assert rgb_error(fitted, art) < rgb_error(cells_of(read), art), name
    assert extra >= 15


def test_fit_shades_keeps_a_colour_of_a_few_cells_the_file_shows():
    """A colour of three cells far from every other, in real art under the same file: the file shows it, so it
    stays, on the cells that have it."""
    art = pixel_art.load("trident-terrain").copy()
    art[5, 7:10] = (230, 40, 200)
    raw, rows, columns, _ = resampled_jpeg(art)
    fitted = fit_shades(cells_of(art), raw.pixels[None], rows, columns, (2, 2))[0, :3].permute(1, 2, 0).numpy()
    magenta = fitted[5, 7:10].astype(int)
    assert len(np.unique(magenta, axis=0)) == 1
    assert np.abs(magenta[0] - (230, 40, 200)).max() <= 20
    assert int((np.abs(fitted.astype(int) - magenta[0]).max(-1) == 0).sum()) == 3


def full_chroma_jpeg(art: np.ndarray, scale: int, factor: float):
    """Real art at ``scale``, resized by ``factor`` (Pillow, bilinear) unless 1, saved by libjpeg at q75 with
    full-resolution chroma, and its lattice: whole-pixel at a factor of 1."""
    big = art.repeat(scale, 0).repeat(scale, 1)
    if factor != 1:
        big = np.asarray(Image.fromarray(big).resize((round(big.shape[1] * factor), round(big.shape[0] * factor))))
    raw = jpeg_file(big, 75, 0)
    rows = axis_sampling(raw.height, 0, art.shape[0], raw.height / art.shape[0], scale)
    columns = axis_sampling(raw.width, 0, art.shape[1], raw.width / art.shape[1], scale)
    return raw, rows, columns


@pytest.mark.parametrize("scale, factor", [(2, 1.0), (3, 1.0), (3, 1.02)])
@pytest.mark.parametrize(
    "name, first, second",
    [
        ("trident-ships", (160, 160, 160), (176, 176, 176)),
        ("trident-terrain", (54, 118, 18), (95, 118, 54)),
        ("angband-bolt-texture", (24, 24, 24), (36, 36, 36)),
    ],
)
def test_fit_shades_splits_a_shade_that_holds_two_steps_of_a_ramp(name, first, second, scale, factor):
    """Two of the art's colours 12-16 levels of luma apart, 27-104 cells each, read as one shade (their
    mean), as a palette merges neighbouring steps of a ramp that JPEG's noise (and a resize's blur) joins at 2-3
    px. The file tells them apart: fitted, nine in ten cells of each come back nearer their own colour than the
    other's (before, one shade for both, the lighter or the darker half all wrong; on a resized file's lattice
    that was so until the split was made there too), and the art's other shades stay as many."""
    art = pixel_art.load(name)
    raw, rows, columns = full_chroma_jpeg(art, scale, factor)
    steps = [(art == colour).all(-1) for colour in (first, second)]
    read = art.copy()
    read[steps[0] | steps[1]] = art[steps[0] | steps[1]].mean(0).round()
    fitted = fit_shades(cells_of(read), raw.pixels[None], rows, columns, (1, 1))
    assert len(colours(fitted)) == len(colours(fit_shades(cells_of(art), raw.pixels[None], rows, columns, (1, 1))))
    found = fitted[0, :3].permute(1, 2, 0).numpy().astype(int)
    for step, own, other in ((steps[0], first, second), (steps[1], second, first)):
        nearer = np.abs(found[step] - own).sum(-1) < np.abs(found[step] - other).sum(-1)
        assert nearer.mean() >= 0.9, (own, nearer.mean())


@pytest.mark.parametrize("scale, factor", [(2, 1.0), (3, 1.0), (3, 1.02)])
def test_fit_shades_splits_no_shade_of_the_arts_own_in_jpeg_noise(scale, factor):
    """Every fixture's cells as the art's own shades, in the same files: JPEG's noise in a shade's cells is not
    two colours, so no fixture comes back with more shades than it has."""
    for name in pixel_art.NAMES:
        art = pixel_art.load(name)
        raw, rows, columns = full_chroma_jpeg(art, scale, factor)
        fitted = fit_shades(cells_of(art), raw.pixels[None], rows, columns, (1, 1))
        assert len(colours(fitted)) <= pixel_art.count_colours(art), name


@pytest.mark.parametrize("sigma", [0.5, 0.75, 1.0])
@pytest.mark.parametrize("scale", [2, 3, 5])
def test_a_blurred_upscale_paints_as_pillows_gaussian_blur(scale, sigma):
    """An upscale blurred by Pillow's gaussian blur is the cells painted on its whole-pixel lattice through the
    blur of the same sigma (Pillow approximates the gaussian by box blurs, a level or two off on average); the
    unblurred painting, and the blurs of the other sigmas, miss it by several levels."""
    art = np.random.default_rng(5).integers(0, 256, (19, 21, 3), dtype=np.uint8)
    big = art.repeat(scale, 0).repeat(scale, 1)
    blurred = np.asarray(Image.fromarray(big).filter(ImageFilter.GaussianBlur(sigma))).astype(np.float64)

    def error(kernel: str) -> float:
        rows, columns = (axis_sampling(length, 0, cells, float(scale), scale, kernel)
                         for length, cells in zip(big.shape[:2], art.shape[:2]))
        painted = _render(torch.from_numpy(art).permute(2, 0, 1).double(), rows, columns).permute(1, 2, 0).numpy()
        return float(np.abs(painted - blurred)[3:-3, 3:-3].mean())  # the image's border is blurred with itself

    own = f"blur{sigma}"
    assert error(own) <= 2.5, error(own)
    assert min(error(kernel) for kernel in ("linear", *BLUR_KERNELS) if kernel != own) >= 5, own
