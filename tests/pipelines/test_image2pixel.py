"""fal-ai/image2pixel: the acceptance fixtures of the research note (section 9), generated here, and the API.

Synthetic pixel art is upscaled by every scale from 2 to 16 at every grid offset, then degraded (JPEG, blur,
non-integer resampling); the tests check the detected scale, the recovered cells and the palette against the
art that made the image. Most fixtures call `pixelate` (the endpoint's whole computation) directly; the API
tests drive `/run/fal-ai/image2pixel` for the schema, the output, the limits and byte-identical reruns.
Real, human-made pixel art (small crops of freely licensed game tiles, `tests/fixtures/pixel_art`) checks the
cases of issue 15: resampling at small scales, JPEG chroma subsampling, flat areas, near-duplicate shades.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.pixel_downscale import DOWNSCALE_METHODS
from kernels.pixel_jpeg import merge_unneeded_shades
from pipelines.image2pixel import (
    CELL_SAMPLES,
    Image2PixelInput,
    Image2PixelPipeline,
    cell_colours,
    pixelate,
)
from server.config import Settings
from testkit.degradations import blur, jpeg, resample
from testkit.images import data_uri, png_bytes
from tests.fixtures import pixel_art
from tests.kernels.test_pixel_cleanup import background_fixture, reference_fill

ENDPOINT = "fal-ai/image2pixel"


@pytest.fixture(autouse=True, scope="module")
def server_thread_count():
    """Run `pixelate` on the server's CPU thread count: on a busy machine more threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(Settings().cpu_threads)
    yield
    torch.set_num_threads(previous)


# -- generated art -------------------------------------------------------------------------------------------


def make_palette(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random colours at least 64 apart on some channel, ``(count, 3)`` uint8."""
    colours: list[np.ndarray] = []
    while len(colours) < count:
        colour = rng.integers(0, 256, 3)
        if all(np.abs(colour - other).max() >= 64 for other in colours):
            colours.append(colour)
    return np.array(colours, dtype=np.uint8)


def random_art(cells: int, seed: int, colours: int = 6) -> np.ndarray:
    """``(cells, cells, 3)``: every cell an independent pick from a small palette."""
    rng = np.random.default_rng(seed)
    return make_palette(colours, rng)[rng.integers(0, colours, (cells, cells))]


def blobby_art(cells: int, seed: int, colours: int = 6) -> np.ndarray:
    """``(cells, cells, 3)``: smooth random blobs, so colours come in regions with cell-precise outlines."""
    rng = np.random.default_rng(seed)
    palette = make_palette(colours, rng)
    coarse = (rng.random((cells // 3 + 2, cells // 3 + 2)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((cells, cells), Image.BICUBIC), dtype=float)
    return palette[np.digitize(field, np.quantile(field, np.linspace(0, 1, colours + 1)[1:-1]))]


def textured_blobs(cells: int, seed: int, period: int = 4) -> np.ndarray:
    """Blobby art under a regular texture: a darker one-cell stripe every ``period`` cells in both axes, the
    pattern that makes peak-spacing detectors report ``period`` times the scale."""
    art = blobby_art(cells, seed).astype(np.int16)
    stripe = np.arange(cells) % period == 0
    on_stripe = stripe[:, None] | stripe[None, :]
    art[on_stripe] = art[on_stripe] * 3 // 5
    return art.astype(np.uint8)


def upscale(art: np.ndarray, scale: int, start: tuple[int, int] = (0, 0), end: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Nearest-neighbour upscale, less ``start`` pixels at the top/left and ``end`` at the bottom/right."""
    big = art.repeat(scale, 0).repeat(scale, 1)
    return np.ascontiguousarray(big[start[0] : big.shape[0] - end[0], start[1] : big.shape[1] - end[1]])


def complete_cells(art: np.ndarray, scale: int, start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    """The cells of ``art`` that survive whole in ``upscale(art, scale, start, end)``."""
    rows = slice(1 if start[0] else 0, art.shape[0] - (1 if end[0] else 0))
    columns = slice(1 if start[1] else 0, art.shape[1] - (1 if end[1] else 0))
    return art[rows, columns]


DEGRADATIONS = {
    "jpeg q60": lambda image: jpeg(image, 60),
    "jpeg q75": lambda image: jpeg(image, 75),
    "jpeg q90": lambda image: jpeg(image, 90),
    "blur 0.6": lambda image: blur(image, 0.6),
    "blur 1.0": lambda image: blur(image, 1.0),
    "resample x1.02": lambda image: resample(image, 1.02),
    "resample x0.98": lambda image: resample(image, 0.98),
}


def correct_cells(result: np.ndarray, truth: np.ndarray, palette: np.ndarray) -> int:
    """How many cells of ``truth`` the ``result`` shows as the right palette colour (the nearest palette colour
    of the result's cell), at the best alignment within one cell either way."""

    def labels(colours: np.ndarray) -> np.ndarray:
        return ((colours[..., None, :].astype(int) - palette.astype(int)) ** 2).sum(-1).argmin(-1)

    want, got = labels(truth), labels(result[..., :3])
    return max(int((want[true_cells] == got[result_cells]).sum())
               for true_cells, result_cells in pixel_art.alignments(want.shape, got.shape))


def run_pixelate(image: np.ndarray, **fields) -> tuple[int, np.ndarray]:
    """``(pixel_scale, native RGBA (h, w, 4))`` of the endpoint's computation on an RGB or RGBA array."""
    if image.shape[-1] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    result = pixelate(tensor, Image2PixelInput(image_url="unused", **fields))
    return result.grid.scale, result.native.permute(1, 2, 0).numpy()


def hex_palette(colours: np.ndarray) -> list[str]:
    return sorted({f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours.reshape(-1, 3).tolist()})


# -- acceptance: clean, degraded, texture --------------------------------------------------------------------


@pytest.mark.parametrize("scale", range(2, 17))
def test_clean_upscales_at_every_offset_are_exact(scale):
    art = (random_art if scale % 2 else blobby_art)(10, seed=scale)
    for offset in range(scale):
        start, end = (offset, (offset + 1) % scale), ((offset * 3) % scale, (offset * 5) % scale)
        image = upscale(art, scale, start, end)
        detected, native = run_pixelate(image)
        truth = complete_cells(art, scale, start, end)
        assert detected == scale, f"offset {offset}"
        np.testing.assert_array_equal(native[..., :3], truth, err_msg=f"offset {offset}")
        assert (native[..., 3] == 255).all()


@pytest.mark.parametrize("scale", range(2, 17))
def test_degraded_upscales(scale):
    """Scale exact from 4 up and at least 98 % of cells right per degradation over the set (95 % per image)."""
    for art_kind, make in (("random", random_art), ("blobby", blobby_art)):
        art = make(12, seed=100 + scale)
        palette = np.unique(art.reshape(-1, 3), axis=0)
        offset = (scale * 7 + (art_kind == "blobby")) % scale
        clean = upscale(art, scale, (offset, offset))
        truth = complete_cells(art, scale, (offset, offset), (0, 0))
        # every scale meets two of the degradations, so all of them are covered at small and large scales
        names = list(DEGRADATIONS)
        for name in (names[scale % len(names)], names[(scale + 3 + (art_kind == "blobby")) % len(names)]):
            detected, native = run_pixelate(DEGRADATIONS[name](clean))
            if scale < 4:
                continue  # too few pixels per cell to promise anything under JPEG or blur
            label = f"{art_kind} {name}"
            assert detected == scale, label
            assert correct_cells(native, truth, palette) >= 0.95 * truth[..., 0].size, label


def test_degraded_set_cell_accuracy_per_degradation():
    correct = dict.fromkeys(DEGRADATIONS, 0)
    total = dict.fromkeys(DEGRADATIONS, 0)
    for scale in (4, 5, 6, 8, 11, 16):
        art = random_art(12, seed=scale)
        palette = np.unique(art.reshape(-1, 3), axis=0)
        offset = (scale // 2, scale - 1)
        clean = upscale(art, scale, offset)
        truth = complete_cells(art, scale, offset, (0, 0))
        for name, degrade in DEGRADATIONS.items():
            _, native = run_pixelate(degrade(clean))
            correct[name] += correct_cells(native, truth, palette)
            total[name] += truth[..., 0].size
    accuracy = {name: correct[name] / total[name] for name in DEGRADATIONS}
    assert min(accuracy.values()) >= 0.98, accuracy


@pytest.mark.parametrize("scale", [4, 6, 8])
def test_texture_multiples_give_the_base_scale(scale):
    clean = upscale(textured_blobs(24, seed=scale), scale, (1, 2))
    for image in (clean, jpeg(clean, 75), blur(clean, 0.8)):
        assert run_pixelate(image)[0] == scale


def test_native_art_is_scale_one_and_unchanged():
    art = random_art(48, seed=5)
    scale, native = run_pixelate(art)
    assert scale == 1
    np.testing.assert_array_equal(native[..., :3], art)


# -- acceptance: colours -------------------------------------------------------------------------------------


def noisy_upscale(seed: int = 0) -> np.ndarray:
    """A JPEG of upscaled art: thousands of distinct colours."""
    return jpeg(upscale(random_art(10, seed, colours=12), 6), 70)


@pytest.mark.parametrize("method", DOWNSCALE_METHODS)
@pytest.mark.parametrize("max_colors", [2, 5, 8])
def test_num_colors_never_exceeds_max_colors(method, max_colors):
    _, native = run_pixelate(noisy_upscale(), max_colors=max_colors, downscale_method=method)
    assert 1 <= len(hex_palette(native[..., :3])) <= max_colors


@pytest.mark.parametrize("method", DOWNSCALE_METHODS)
def test_fixed_palette_is_always_honoured(method):
    palette = ["#000000", "#FFFFFF", "#ff0000"]
    allowed = {entry.lower() for entry in palette}
    few_colours = upscale(random_art(8, 1, colours=3), 4)  # fewer colours than max_colors: the reference ignores it
    for image in (few_colours, noisy_upscale(2)):
        _, native = run_pixelate(image, fixed_palette=palette, downscale_method=method)
        assert set(hex_palette(native[..., :3])) <= allowed


def test_unlimited_colours_skip_quantisation_and_auto_detect_caps():
    image = noisy_upscale(3)
    _, unlimited = run_pixelate(image, max_colors=None, downscale_method="mean")
    assert len(hex_palette(unlimited[..., :3])) > 32
    _, estimated = run_pixelate(image, max_colors=4, auto_color_detect=True)
    assert len(hex_palette(estimated[..., :3])) <= 4


def test_dominant_threshold_is_exact():
    """A 2 px cell (all four pixels vote) whose top colour holds exactly half of the votes."""
    image = np.zeros((2, 2, 4), np.uint8)
    image[..., 3] = 255
    image[..., 0] = [[10, 10], [50, 90]]  # 10 holds half the votes
    _, above = run_pixelate(image, scale=2, dominant_color_threshold=0.5, max_colors=None)
    _, below = run_pixelate(image, scale=2, dominant_color_threshold=0.51, max_colors=None)
    assert above[0, 0, 0] == 10 and below[0, 0, 0] == (10 + 10 + 50 + 90) // 4


# -- acceptance: alpha and background ------------------------------------------------------------------------


def test_alpha_threshold_and_half_transparent_cells():
    image = np.full((4, 8, 4), 200, np.uint8)
    image[:, :, 3] = [[127, 128, 255, 255, 0, 0, 0, 255]] * 4
    image[:2, 4:8, 3] = 255  # cell (0, 2) half opaque, cell (0, 3) three quarters
    _, native = run_pixelate(image, scale=2, max_colors=None, snap_grid=False)
    assert native[..., 3].tolist() == [[255, 255, 255, 255], [255, 255, 0, 255]]
    assert (native[native[..., 3] == 0] == 0).all()
    _, strict = run_pixelate(image, scale=2, alpha_threshold=255, max_colors=None, snap_grid=False)
    assert strict[0, 0, 3] == 0 and strict[0, 1, 3] == 255


@pytest.mark.parametrize("mode", ["edges", "corners", "midpoints"])
@pytest.mark.parametrize("tolerance", [0, 2])
def test_background_modes_give_the_reference_masks(mode, tolerance):
    rgb = background_fixture().astype(np.uint8)
    _, native = run_pixelate(
        upscale(rgb, 4),
        transparent_background=True,
        background_mode=mode,
        background_tolerance=tolerance,
        max_colors=None,
    )
    expected = reference_fill(rgb, np.ones(rgb.shape[:2], bool), mode, tolerance)
    np.testing.assert_array_equal(native[..., 3] == 255, expected)


def test_trim_borders_after_background_removal():
    rgb = np.full((10, 12, 3), 255, np.uint8)
    rgb[3:6, 4:9] = (30, 90, 200)
    _, native = run_pixelate(upscale(rgb, 3), transparent_background=True, trim_borders=True)
    assert native.shape == (3, 5, 4) and (native[..., 3] == 255).all()


def test_jaggy_cleanup_runs_after_background_removal():
    rgb = np.full((8, 8, 3), 255, np.uint8)
    rgb[2:5, 2:5] = (200, 0, 0)
    rgb[5, 5] = (0, 0, 200)  # touches the sprite only diagonally
    _, native = run_pixelate(upscale(rgb, 2), transparent_background=True, cleanup_jaggy=True)
    assert native[5, 5, 3] == 0 and (native[2:5, 2:5, 3] == 255).all()


def test_snap_grid_off_cuts_cells_from_the_corner():
    art = random_art(8, 9)
    image = upscale(art, 5, (2, 2))
    snapped_scale, snapped = run_pixelate(image)
    _, corner = run_pixelate(image, snap_grid=False)
    np.testing.assert_array_equal(snapped[..., :3], art[1:, 1:])
    assert snapped_scale == 5 and corner.shape[:2] == (7, 7)
    assert not np.array_equal(corner[..., :3], art[1:, 1:])


# -- real pixel art (issue 15) -------------------------------------------------------------------------------

LARGE_FIXTURES = [name for name in pixel_art.NAMES if min(pixel_art.load(name).shape[:2]) >= 30]
FEW_COLOURS = [name for name in pixel_art.NAMES if pixel_art.count_colours(pixel_art.load(name)) <= 16]


def known_failures(names: list[str], reasons: dict[str, str]) -> list:
    """``names`` as parameters, those in ``reasons`` expected to fail (strictly: a fix shows as a failure to
    update the test)."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reasons[name])) if name in reasons
            else name for name in names]


def pixelate_rgb(
    image: np.ndarray, chroma_subsampling: tuple[int, int] = (1, 1), quantization: np.ndarray | None = None, **fields
):
    """`pixelate` on an RGB array: the whole `Pixelated` result."""
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    tensor = torch.from_numpy(rgba).permute(2, 0, 1).unsqueeze(0)
    tables = None if quantization is None else torch.from_numpy(np.array(quantization))
    return pixelate(tensor, Image2PixelInput(image_url="x", **fields), chroma_subsampling, tables)


def pixelate_case(case: pixel_art.Case, **fields):
    """`pixelate_rgb` of a degraded fixture, told what the server's decoder reads of the file."""
    return pixelate_rgb(case.image, case.chroma_subsampling, case.jpeg_quantization, **fields)


def cell_accuracy(result, case: pixel_art.Case) -> float:
    return pixel_art.correct_cells(result.native.permute(1, 2, 0).numpy(), case.truth) / case.truth[..., 0].size


@pytest.mark.parametrize("name", pixel_art.NAMES)
def test_real_art_clean_upscales_are_exact(name):
    for scale, start in ((2, (1, 0)), (3, (2, 1)), (7, (3, 5)), (16, (0, 11))):
        case = pixel_art.degraded(name, scale, start)
        detected, native = run_pixelate(case.image)
        assert detected == scale, f"scale {scale}"
        np.testing.assert_array_equal(native[..., :3], case.truth, err_msg=f"scale {scale}")


@pytest.mark.parametrize("scale", [12, 13, 14, 15, 16])
def test_real_art_flat_area_beside_texture_does_not_set_the_scale(scale):
    """Issue 15 (4): Crawl's dark floor below a flat grey band, as its sheet lays tiles beside empty space, resized:
    a lattice of a few cells with a boundary on the band's edge explained the image better than the floor's cells
    with both axes' evidence pooled, the edge's contrast outweighing the texture (the real-art set's floor at 15 px
    x1.03 with blur came back as 85). Of these 45 cases, 27 came back wrong; cells explain both axes now."""
    band = np.broadcast_to(np.array([159, 162, 151], np.uint8), (10, 32, 3))
    art = np.concatenate([band, pixel_art.load("crawl-dark-floor")])
    for start in ((0, 0), (3, 7), (7, 2)):
        for degradation in ("resample1.03 blur0.5", "resample0.97 blur0.5", "resample1.03"):
            detected, _ = run_pixelate(pixel_art.degrade(art, scale, start, degradation).image)
            assert detected == scale, (start, degradation, detected)


@pytest.mark.parametrize("scale", [4, 6, 8, 11, 13])
def test_real_art_few_strong_edges_do_not_set_the_scale(scale):
    """Issue 15 (1, 4): a pale flat block over two thirds of Crawl's dark, low-contrast floor, as tile sheets lay
    a light tile beside dark ones, resized. A lattice about ten cells wide with a boundary on each of the block's
    two edges explained the image about as well as the floor's cells, its contrast all on those edges, and won
    the tie as the larger period (the real-art set's Crawl floor at 10 px x0.98 came back as 101). Each band of
    lines now counts apart, and a larger tied period is a multiple of the best one of 2.5 px or more: of these 20
    cases 17 came back wrong before (38-133, and one 2), 15 with the multiple rule alone, 1 with the bands alone
    (40 at 4 px)."""
    art = np.tile(pixel_art.load("crawl-dark-floor"), (2, 2, 1))[:43, :43]
    art[:27, :29] = (159, 162, 151)
    for start in ((0, 0), (3, 7)):
        for degradation in ("resample0.98", "resample1.03"):
            detected, _ = run_pixelate(pixel_art.degrade(art, scale, start, degradation).image)
            assert detected == scale, (start, degradation, detected)


@pytest.mark.parametrize("name, scale, least", [
    ("trident-ships", 3, 0.88), ("angband-red-on-navy", 3, 0.99), ("crawl-dark-floor", 3, 0.9), ("nethack-cells", 2, 0.9),
])
def test_real_art_blurred_jpeg_is_painted_through_the_blur(name, scale, least):
    """Issue 15 (5): art blurred (0.6 px) before a q80 4:2:0 JPEG. Painted as sharp cells, the blur at every edge
    read as other shades, and the re-encoding test kept them: 0.737, 0.955, 0.836 and 0.857 of these cells were
    right; painted through the blur that explains the file best, as many as ``least``."""
    result = pixelate_case(case := pixel_art.degraded(name, scale, (1, 1), "blur0.6 jpeg80-420"))
    assert cell_accuracy(result, case) >= least


@pytest.mark.parametrize("name", known_failures(LARGE_FIXTURES, {
    "crawl-dark-floor": "the cells of a dark, low-contrast ramp resampled at scales 2-3: 80 % right, on the right "
                        "lattice",
}))
def test_real_art_resampled_at_small_scales_keeps_fractional_cells(name):
    """Issue 15 (1, 2): a x1.02 or x0.98 resample of scale 2-3 art gave the moire period (50 px) or an alias
    (3.12 for 2.94 px cells), and cells drifted."""
    accuracies = []
    for scale, start, degradation in ((2, (1, 0), "resample1.02"), (2, (0, 1), "resample0.98"),
                                      (3, (2, 1), "resample0.98"), (3, (1, 1), "resample1.03")):
        case = pixel_art.degraded(name, scale, start, degradation)
        result = pixelate_case(case)
        label = f"scale {scale} {degradation}"
        assert result.grid.scale == scale, label
        assert result.cell_size == pytest.approx([case.cell_size] * 2, abs=0.03), label
        accuracies.append(cell_accuracy(result, case))
    assert min(accuracies) >= 0.88 and sum(accuracies) / len(accuracies) >= 0.95, accuracies


@pytest.mark.parametrize("name, degradation", [
    ("trident-terrain", "bicubic1.03 jpeg85-420"), ("trident-ships", "bicubic1.03 jpeg75-420"),
    ("angband-bolt-texture", "bicubic1.03 jpeg85-420"), ("angband-flat", "resample0.97 jpeg75-420"),
    ("crawl-dark-floor", "resample1.02"), ("crawl-dark-floor", "bicubic0.98"),
])
def test_real_art_2_px_cells_resampled_keep_their_period_not_its_mirror(name, degradation):
    """Sampled on whole pixels, cells of p px and of p / (p - 1) px show the same spectrum (2.06 and 1.94); JPEG's
    noise hid which one the art's cells are from a comparison of their centres' colours, and these cases came out
    as the mirror, a quarter to two thirds of the cells wrong. Painted back from their centres, the art's cells
    give the image back and the mirror's do not."""
    case = pixel_art.degraded(name, 2, (1, 0), degradation)
    assert pixelate_case(case).cell_size == pytest.approx([case.cell_size] * 2, abs=0.03)


@pytest.mark.parametrize("name", pixel_art.NAMES)
def test_real_art_under_jpeg_with_and_without_chroma_subsampling(name):
    """Issue 15 (3): 4:2:0 chroma lives on a 2-pixel grid, which must not win over the art's own grid."""
    for subsampling in ("420", "444"):
        case = pixel_art.degraded(name, 9, (4, 7), f"jpeg75-{subsampling}")
        result = pixelate_case(case)
        assert result.grid.scale == 9, subsampling
        assert cell_accuracy(result, case) >= 0.98, subsampling


def test_real_art_with_flat_areas_resampled_keeps_the_scale():
    """Issue 15 (4): large flat areas plus a x0.98 resample gave a divisor of the scale (3 for 9)."""
    for scale in (9, 13):
        case = pixel_art.degraded("angband-flat", scale, (2, 5), "resample0.98")
        result = pixelate_case(case)
        assert result.grid.scale == scale
        assert result.cell_size == pytest.approx([case.cell_size] * 2, abs=0.03)
        assert cell_accuracy(result, case) >= 0.99


@pytest.mark.parametrize("name", FEW_COLOURS)
def test_real_art_palette_keeps_its_colour_count_under_jpeg(name):
    """Issue 15 (5): JPEG turned 4-11-colour art into 27-29 colours at the default `max_colors` (32)."""
    for scale, degradation in ((12, "jpeg85-444"), (12, "jpeg80-420"), (9, "jpeg75-420")):
        case = pixel_art.degraded(name, scale, (5, 3), degradation)
        result = pixelate_case(case)
        # within 2 is the target; with 4:2:0 chroma a fixture can still come out 3 over
        assert abs(len(result.palette) - case.colours) <= (3 if "420" in degradation else 2), degradation
        assert cell_accuracy(result, case) >= 0.98, degradation


@pytest.mark.parametrize("degradation, at_least, colours_within", [
    ("resample0.98", 0.98, 2), ("resample0.98 jpeg85-420", 0.85, 3), ("resample1.03 jpeg90-444", 0.98, 2),
])
def test_real_art_2_px_cells_take_their_colour_from_the_middle_of_their_span(degradation, at_least, colours_within):
    """A resampled 2 px cell's pixels away from its centre are part neighbour: its colour comes from the pixels
    nearest its centre (`COLOUR_SPAN`), its spread from the middle half (`SPREAD_SPAN`). Colours from the middle
    half put 0.895, 0.666 and 0.954 of Trident ships' cells right, and gave its 20 colours as 12 under 4:2:0.
    Under 4:2:0 they come out 17: the file's coding, asked again with the fitted colours, takes a dark navy of
    21 cells (#13244e) for the navy beside it (18 without)."""
    case = pixel_art.degraded("trident-ships", 2, (1, 0), degradation)
    result = pixelate_case(case)
    assert result.grid.fractional
    assert cell_accuracy(result, case) >= at_least
    assert abs(len(result.palette) - case.colours) <= colours_within, (len(result.palette), case.colours)


# x1.02's (2, 0) case puts 0.987 of its cells right on an AMD EPYC (Zen 3, AVX2), and 0.99 or more on the machines
# where the threshold was set and CI passed: the results move a little with the CPU
@pytest.mark.parametrize("degradation, colours_within, at_least", [
    ("resample1.02 jpeg75-444", 1, 0.985), ("resample0.98 jpeg75-444", 3, 0.975),
])
def test_real_art_ramp_steps_come_back_apart_on_a_resized_3_px_lattice(degradation, colours_within, at_least):
    """Trident ships' grey ramps at 3 px, resized, then saved with full-resolution chroma: the palette merges
    neighbouring steps, and the file splits them again where the resize left each pixel mostly one cell's (at x1.02
    its 20 colours came back as 16-17 and 0.948-0.969 of the cells right, at x0.98 16 and 0.945-0.975, before the
    split was made on resized lattices too)."""
    for start in ((1, 2), (2, 0)):
        case = pixel_art.degraded("trident-ships", 3, start, degradation)
        result = pixelate_case(case)
        assert result.grid.fractional
        assert abs(len(result.palette) - case.colours) <= colours_within, (start, len(result.palette))
        assert cell_accuracy(result, case) >= at_least, start


@pytest.mark.parametrize("name, scale, start, degradation, at_least", [
    ("angband-bolt-texture", 2, (2, 0), "resample1.02 jpeg75-444", 0.6),
    ("trident-ships", 2, (2, 0), "resample1.02 jpeg75-444", 0.87),
    ("trident-ships", 3, (1, 2), "bicubic0.97 jpeg75-444", 0.85),
])
def test_real_art_ramps_on_a_resized_lattice_split_step_by_step(name, scale, start, degradation, at_least):
    """Issue 15: on a resized lattice the split asked for as large a share of a shade's luma spread between its two
    sides as on whole pixels, which a resize's blur leaves no two steps of a ramp, and tried each shade once: 0.362,
    0.687 and 0.653 of these cells right (0.649, 0.840 and 0.817 with the lower share alone; 0.649, 0.895 and 0.876
    with both)."""
    case = pixel_art.degraded(name, scale, start, degradation)
    result = pixelate_case(case)
    assert result.grid.fractional
    assert cell_accuracy(result, case) >= at_least


def test_real_art_shades_the_fit_leaves_on_a_resized_lattice_are_asked_of_the_file_again():
    """Angband's 12 flat colours at 2 px, resized x1.03, then saved with full-resolution chroma: the shades fitted
    on the resized lattice came back as 15 colours; the file's coding, asked again with the fitted colours, as it
    is under 4:2:0, merges those it does not need (13)."""
    case = pixel_art.degraded("angband-flat", 2, (2, 0), "resample1.03 jpeg75-444")
    result = pixelate_case(case)
    assert result.grid.fractional
    assert abs(len(result.palette) - case.colours) <= 2, len(result.palette)
    assert cell_accuracy(result, case) >= 0.99


@pytest.mark.parametrize("name", ["nethack-cells", "angband-red-on-navy"])
def test_real_art_palette_at_small_scales_under_chroma_subsampling(name):
    """Issue 15 (5): in 4 px cells 4:2:0 chroma bleeds a neighbour's hue into the whole interior of the cells at a
    colour boundary, so each colour also came out as a tinted shade (whites next to NetHack's teal: 15 colours
    gave 23); the border cells' shades are tails of their colour, not colours."""
    case = pixel_art.degraded(name, 4, (1, 2), "jpeg75-420")
    result = pixelate_case(case)
    assert abs(len(result.palette) - case.colours) <= 2, (len(result.palette), case.colours)
    assert cell_accuracy(result, case) >= 0.98


@pytest.mark.parametrize("name", known_failures(FEW_COLOURS, {
    "crawl-dark-floor": "a 3 px cell's colour is one pixel, which JPEG moves about as far as the ramp's shades lie "
                        "apart (1.5-3): they merge (12 colours give 6)",
}))
def test_real_art_palette_at_scale_3_under_jpeg(name):
    """Issue 15 (5): a 3 px cell's colour is its centre pixel, whose spread was measured against itself (always 0),
    so no colour was uncertain and each JPEG-shifted shade stayed a colour (12-colour art came back with 29-32)."""
    for start in ((1, 2), (2, 0)):
        case = pixel_art.degraded(name, 3, start, "jpeg90-444")
        result = pixelate_case(case)
        assert abs(len(result.palette) - case.colours) <= 2, (start, len(result.palette), case.colours)
        assert cell_accuracy(result, case) >= 0.99, start


def test_real_art_texture_keeps_its_shades_at_small_scales_under_chroma_subsampling():
    """Issue 15: weighing down every small cell that bordered another colour merged away the shades of a 32-colour
    texture, where nearly every cell borders another shade (scale 5, JPEG q75 4:2:0: 0.626 of the cells right).
    Shades that differ in luma alone do not bleed into each other under chroma subsampling."""
    case = pixel_art.degraded("angband-bolt-texture", 5, (1, 2), "jpeg75-420")
    assert cell_accuracy(pixelate_case(case), case) >= 0.85


def test_real_art_palettes_in_6_and_7_px_cells_under_jpeg():
    """Issue 15 (5): cells of 6-7 px at a chroma edge weighed a quarter in the palette, as the smaller cells whose
    whole interior JPEG's chroma bleed reaches, and real shades merged into their neighbours: over every fixture
    at scales 6 and 7 under q75 with and without 4:2:0, the colour counts were 53 off in all (7 at most, the
    32-shade texture) and the texture at q75 4:2:0 had 94 % of its cells right. At full weight: 19 off, 3 at
    most, every case 99 % right or more."""
    cases = [pixel_art.degraded(name, scale, (1, 2), f"jpeg75-{chroma}")
             for name in pixel_art.NAMES for scale in (6, 7) for chroma in ("420", "444")]
    results = [pixelate_case(case) for case in cases]
    errors = [abs(len(result.palette) - case.colours) for result, case in zip(results, cases)]
    assert sum(errors) <= 25 and max(errors) <= 3, errors
    assert min(cell_accuracy(result, case) for result, case in zip(results, cases)) >= 0.99


@pytest.mark.parametrize(
    "scale, start, degradation",
    [(13, (5, 2), "jpeg90-420"), (10, (3, 7), "jpeg90-420"), (11, (6, 0), "resample1.03"),
     (9, (0, 3), "blur0.5 resample1.03")],
)
def test_real_art_dark_ramp_keeps_its_shades_in_large_cells(scale, start, degradation):
    """Issue 15: the merge radius never went under 2.5, so the shades of a dark ramp, 1.5-3 apart, merged at every
    scale (12-colour crawl floor: 4-6 colours, 0.81-0.94 of the cells right), though the median of a large
    cell's interior moves far less than that under JPEG, blur or resampling."""
    case = pixel_art.degraded("crawl-dark-floor", scale, start, degradation)
    result = pixelate_case(case)
    assert abs(len(result.palette) - case.colours) <= 2, (len(result.palette), case.colours)
    assert cell_accuracy(result, case) >= 0.99


@pytest.mark.parametrize(
    "name, scale, start, degradation",
    [("angband-red-on-navy", 12, (4, 6), "jpeg75-444"), ("nethack-cells", 10, (3, 5), "jpeg90-444"),
     ("angband-bolt-texture", 12, (4, 6), "jpeg80-444")],
)
def test_real_art_large_cells_under_jpeg_keep_every_shade(name, scale, start, degradation):
    """Issue 15: a colour of large cells was taken to be as uncertain as its pixels' spread, and the merge radius
    to fall no further than a side of 8, so these lost one real colour each, at 100 % of the cells otherwise:
    greys 32 apart (red on navy), NetHack's two whites, two greys of the bolt texture."""
    case = pixel_art.degraded(name, scale, start, degradation)
    result = pixelate_case(case)
    assert case.colours <= len(result.palette) <= case.colours + 1, (len(result.palette), case.colours)
    assert cell_accuracy(result, case) >= 0.99


@pytest.mark.parametrize("start, degradation", [((2, 4), "jpeg75-444"), ((4, 1), "jpeg80-444")])
def test_real_art_shade_whose_colour_jpeg_moved_past_two_others_goes(start, degradation):
    """Issue 15 (5): JPEG's chroma rounding beside contrasting cells moves a few cells of Trident's desert past two
    other colours of the art (a sand cell beside grass to pale green (169, 207, 166) at q75, three dark olive
    (74, 74, 36) cells to green (55, 94, 39) at q80), and a shade the file does not need was tried only as its
    two nearest heavier colours: 10 colours for the art's 9. The third nearest is the cells' own colour."""
    case = pixel_art.degraded("trident-desert", 5, start, degradation)
    result = pixelate_case(case)
    assert len(result.palette) == case.colours, (len(result.palette), case.colours)
    assert cell_accuracy(result, case) >= 0.99


@pytest.mark.parametrize("name, scale, start, at_least", [
    ("crawl-dark-floor", 4, (1, 2), 0.99), ("angband-bolt-texture", 5, (2, 1), 0.85), ("trident-ships", 6, (3, 1), 0.99),
])
def test_real_art_cells_under_4_2_0_take_the_chroma_model(name, scale, start, at_least):
    """The file's 4:2:0 known, cells from 4 px take the chroma that explains the decoded JPEG (`kernels.jpeg_chroma`):
    their medians, pulled towards the neighbours' chroma, got 0.941, 0.811 and 0.986 of these cells right."""
    case = pixel_art.degraded(name, scale, start, "jpeg75-420" if scale < 6 else "jpeg80-420")
    assert case.chroma_subsampling == (2, 2)
    result = pixelate_case(case)
    assert result.chroma_model and cell_accuracy(result, case) >= at_least


@pytest.mark.parametrize("name, scale, start, degradation", [
    pytest.param("nethack-cells", 3, (1, 2), "jpeg75-420", marks=pytest.mark.xfail(strict=True, reason=(
        "`fit_shades` drops the one light grey (237) cell for white: 9 px, 11 luma levels lighter, whose fit "
        "without it misses the file by 24 noise variances where a shade's price is 28; 11 colours of 12, with "
        "0.984 of the cells right (0.985 keeping it)"))),
    ("nethack-cells", 4, (1, 2), "jpeg75-420"),
    pytest.param("trident-terrain", 4, (1, 2), "jpeg75-420", marks=pytest.mark.xfail(strict=True, reason=(
        "the chroma leniency merges the light grey (228) and white: the file's luma scores that merge -0.07, a near "
        "tie, and the chroma leans towards it; 10 colours of 11"))),
    ("angband-flat", 3, (1, 2), "jpeg75-444"),
    pytest.param("trident-terrain", 2, (1, 0), "resample1.02 jpeg75-444", marks=pytest.mark.xfail(strict=True, reason=(
        "64 x 65 px: q75 moves the boundaries' gradients about as far as the sub-pixel lattice fit corrects (cells "
        "0.17 px off at either end, 0.007 without the JPEG; the whole-pixel fit was 0.13-0.21 off), and on this "
        "lattice the count misses: 12 colours for 11, with 0.979 of the cells right (0.977 before)"))),
])
def test_real_art_shades_the_jpeg_does_not_need_go(name, scale, start, degradation):
    """JPEG's rounding rings at edges and bleeds a neighbour's chroma into small cells, which came back as colours
    of their own (NetHack's 12 colours as 15 at 3 px, 14 at 4 px). Told the file's quantisation tables, the
    endpoint keeps only the shades the file needs (`kernels.pixel_jpeg`): on a resampled lattice too."""
    case = pixel_art.degraded(name, scale, start, degradation)
    told = pixelate_case(case)
    untold = pixelate_rgb(case.image, case.chroma_subsampling)
    assert len(told.palette) == case.colours < len(untold.palette)
    assert cell_accuracy(told, case) >= cell_accuracy(untold, case) - 0.001


@pytest.mark.parametrize("degradation", [
    "jpeg85-420",
    "resample0.98 jpeg85-420",
])
def test_real_art_shades_bled_under_chroma_subsampling_go_where_luma_agrees(degradation, monkeypatch):
    """A 4:2:0 chroma sample spans parts of several 3 px cells, so how much of a bled shade's chroma its source
    colour explains is uncertain, while luma, stored per pixel, is not: a shade goes when the file's luma prefers
    the merge and its chroma leans towards it (`kernels.pixel_jpeg`). Angband's red on navy, 11 colours at 3 px,
    came back with 15 when chroma had to be explained in full (and with no shades dropped by their cells' fit
    afterwards, which takes such shades too)."""
    case = pixel_art.degraded("angband-red-on-navy", 3, (1, 1), degradation)
    # 10: the palette merges the two greys (104 and 136), which a bled navy had stood in for before `fit_shades`
    assert abs(len(pixelate_case(case).palette) - case.colours) <= 1
    monkeypatch.setattr("kernels.pixel_jpeg._CHROMA_LENIENCY", 0.0)
    monkeypatch.setattr("kernels.pixel_jpeg._drop_unneeded", lambda fits, label, ycc, prior: (label, ycc))
    assert len(pixelate_case(case).palette) > case.colours + 2


@pytest.mark.parametrize("name, scale, degradation", [
    ("angband-red-on-navy", 3, "jpeg75-420"), ("trident-terrain", 2, "jpeg90-420"), ("angband-flat", 2, "jpeg90-420"),
])
def test_real_art_shades_fitted_apart_in_chroma_only_go_under_4_2_0(name, scale, degradation, monkeypatch):
    """Fitting small cells' shades to the file counts the rounding of its subsampled chroma as noise, though it
    falls alike on the cells beside one neighbour, so one colour could come back as shades apart in chroma only.
    Asked again with the fitted colours, the file's own coding merges them: 11, 11 and 12 colours came back as
    14, 14 and 15 without that second test."""
    case = pixel_art.degraded(name, scale, (0, 1), degradation)
    assert abs(len(pixelate_case(case).palette) - case.colours) <= 1
    calls = []

    def first_test_only(cells, *arguments):
        calls.append(cells)
        return merge_unneeded_shades(cells, *arguments) if len(calls) == 1 else cells

    monkeypatch.setattr("pipelines.image2pixel.merge_unneeded_shades", first_test_only)
    assert len(pixelate_case(case).palette) > case.colours + 2
    assert len(calls) == 2


def test_the_chroma_model_leaves_cells_under_4_px_and_other_files_alone():
    small = pixel_art.degraded("trident-ships", 3, (1, 2), "jpeg75-420")
    assert not pixelate_case(small).chroma_model
    assert torch.equal(pixelate_rgb(small.image, (2, 2)).native, pixelate_rgb(small.image).native)
    plain = pixel_art.degraded("trident-ships", 6, (3, 1), "jpeg80-444")
    assert plain.chroma_subsampling == (1, 1)
    assert not torch.equal(pixelate_rgb(plain.image, (2, 2)).native, pixelate_rgb(plain.image).native)


def colour_error(result, case: pixel_art.Case) -> float:
    """The mean RGB distance from each true cell to the result's, at the best alignment within one cell."""
    got, want = result.native[:3].permute(1, 2, 0).numpy().astype(np.float64), case.truth.astype(np.float64)
    return min(float(np.linalg.norm(want[true_cells] - got[result_cells], axis=-1).mean())
               for true_cells, result_cells in pixel_art.alignments(want.shape, got.shape))


def test_real_art_cells_under_4_px_take_their_shades_colour_from_the_file(monkeypatch):
    """A 2-3 px cell's median under 4:2:0 is mostly its neighbours' chroma (NetHack's cells at scale 2, q90, came
    out 14.5 RGB levels off on average; 7.5 refitted). Each shade the file keeps takes the colour that all its cells
    together explain the file with (`kernels.pixel_jpeg.fit_shades`): over every fixture, at scale 2 (q90) and at
    scale 3 resampled x1.02 (q80), the cells' colours are 28 % nearer the truth than their medians, no more
    colours come out, and no fewer cells are right."""
    cases = [pixel_art.degraded(name, scale, start, degradation) for name in pixel_art.NAMES
             for scale, start, degradation in ((2, (0, 1), "jpeg90-420"), (3, (1, 1), "resample1.02 jpeg80-420"))]
    refitted = [pixelate_case(case) for case in cases]
    monkeypatch.setattr("pipelines.image2pixel.fit_shades", lambda cells, *_: cells)
    medians = [pixelate_case(case) for case in cases]
    assert all(len(fitted.palette) <= len(median.palette) for fitted, median in zip(refitted, medians))
    errors = [sum(colour_error(result, case) for result, case in zip(results, cases))
              for results in (refitted, medians)]
    assert errors[0] <= 0.8 * errors[1], errors
    accuracies = [sum(cell_accuracy(result, case) for result, case in zip(results, cases))
                  for results in (refitted, medians)]
    assert accuracies[0] >= accuracies[1], accuracies


def test_auto_color_detect_finds_the_real_colour_count():
    clean = pixel_art.degraded("nethack-cells", 5, (1, 2))
    assert len(pixelate_case(clean, auto_color_detect=True).palette) == clean.colours
    noisy = pixel_art.degraded("trident-terrain", 12, (5, 3), "jpeg80-420")
    assert abs(len(pixelate_case(noisy, auto_color_detect=True).palette) - noisy.colours) <= 2
    assert len(pixelate_case(noisy, auto_color_detect=True, max_colors=4).palette) <= 4


def test_fixed_palette_is_honoured_exactly_on_degraded_real_art():
    case = pixel_art.degraded("nethack-cells", 9, (4, 7), "jpeg75-420")
    palette = ["#000000", "#476c6c", "#ff6c00"]
    result = pixelate_case(case, fixed_palette=palette)
    assert set(result.palette) <= set(palette) and result.palette_source == "fixed"


def test_measured_cell_size_and_grid_offset_are_reported():
    case = pixel_art.degraded("trident-terrain", 3, (2, 1), "resample0.98")
    result = pixelate_case(case)
    assert result.cell_size == pytest.approx([case.cell_size] * 2, abs=0.03)
    for offset, first in zip(result.grid_offset, case.first_cell):
        gap = (offset - first) % case.cell_size
        assert min(gap, case.cell_size - gap) <= 0.3
    clean = pixelate_rgb(pixel_art.degraded("trident-terrain", 4, (1, 3)).image)
    assert clean.cell_size == [4.0, 4.0] and clean.grid_offset == [3.0, 1.0]


# -- the HTTP API --------------------------------------------------------------------------------------------


def decode_data_uri(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def post(client, **body):
    return client.post(f"/run/{ENDPOINT}", json={"sync_mode": True, **body})


def test_output_matches_the_seed_schema(client):
    art = blobby_art(12, seed=7)
    response = post(client, image_url=data_uri(png_bytes(upscale(art, 5, (3, 1)))))
    assert response.status_code == 200, response.text
    body = response.json()
    fal_fields = {"pixel_scale", "palette", "num_colors", "images"}
    assert set(body) - {"provenance"} == fal_fields | {"cell_size", "grid_offset"}  # Kiln extensions
    assert body["pixel_scale"] == 5
    assert body["cell_size"] == [5.0, 5.0] and body["grid_offset"] == [2.0, 4.0]
    assert body["palette"] == hex_palette(art) and body["num_colors"] == len(body["palette"])
    full, native = (decode_data_uri(image["url"]) for image in body["images"])
    np.testing.assert_array_equal(native[..., :3], art[1:, 1:])
    np.testing.assert_array_equal(full, native.repeat(5, 0).repeat(5, 1))
    assert [(image["width"], image["height"]) for image in body["images"]] == [(55, 55), (11, 11)]
    assert all(image["content_type"] == "image/png" for image in body["images"])


def test_a_4_2_0_jpeg_request_runs_the_chroma_model(client):
    """The server's decoder reads the file's chroma subsampling and quantisation tables, and the endpoint uses
    them: the answer is what `pixelate` gives when told both, which differs here from what it gives told
    neither or only the tables."""
    big = pixel_art.load("crawl-dark-floor").repeat(4, 0).repeat(4, 1)[1:, 2:]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(big)).save(buffer, "JPEG", quality=75, subsampling=2)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    tables = Image.open(io.BytesIO(buffer.getvalue())).quantization
    quantization = np.array([tables[0], tables[1], tables[1]]).reshape(3, 8, 8)
    told, untold = pixelate_rgb(decoded, (2, 2), quantization), pixelate_rgb(decoded)
    assert not torch.equal(told.native, untold.native)
    assert not torch.equal(told.native, pixelate_rgb(decoded, (1, 1), quantization).native)
    response = post(client, image_url=data_uri(buffer.getvalue(), "image/jpeg"))
    assert response.status_code == 200, response.text
    native = decode_data_uri(response.json()["images"][1]["url"])
    np.testing.assert_array_equal(native, told.native.permute(1, 2, 0).numpy())
    provenance = response.json()["provenance"]
    assert (provenance["chroma_subsampling"], provenance["chroma_model"]) == ([2, 2], True)
    png = post(client, image_url=data_uri(png_bytes(decoded))).json()["provenance"]
    assert (png["chroma_subsampling"], png["chroma_model"]) == ([1, 1], False)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_flat_image_is_answered(client, fmt):
    """One colour all over: the grid detector raised (a 500), where the answer is that one colour at scale 1."""
    buffer = io.BytesIO()
    Image.new("RGB", (30, 22), (90, 140, 40)).save(buffer, fmt)
    response = post(client, image_url=data_uri(buffer.getvalue(), f"image/{fmt.lower()}"))
    assert response.status_code == 200, response.text
    assert response.json()["pixel_scale"] == 1 and response.json()["num_colors"] == 1


def test_defaults_are_the_seeds(client):
    defaults = Image2PixelInput(image_url="x")
    assert (defaults.max_colors, defaults.detect_method, defaults.downscale_method) == (32, "auto", "dominant")
    assert (defaults.snap_grid, defaults.alpha_threshold, defaults.dominant_color_threshold) == (True, 128, 0.05)
    assert defaults.background_mode == "corners" and defaults.background_tolerance == 0 and defaults.scale is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Image2PixelInput"]["properties"]
    assert schema["detect_method"]["enum"] == ["auto", "runs", "edge"]


def test_identical_requests_give_identical_bytes(client):
    # every 2x2 cell holds two colours twice each: ties everywhere
    rng = np.random.default_rng(0)
    image = np.zeros((16, 16, 3), np.uint8)
    image[0::2] = rng.integers(0, 256, (8, 16, 3))
    image[1::2] = image[0::2][:, ::-1]
    body = {"image_url": data_uri(png_bytes(image)), "scale": 2, "downscale_method": "mode"}
    first, second = post(client, **body).json(), post(client, **body).json()
    assert [image["url"] for image in first["images"]] == [image["url"] for image in second["images"]]
    assert first["palette"] == second["palette"]


def test_scale_one_gives_two_images_of_the_same_size(client):
    body = post(client, image_url=data_uri(png_bytes(random_art(20, 4))), scale=1).json()
    assert body["pixel_scale"] == 1
    assert [(image["width"], image["height"]) for image in body["images"]] == [(20, 20), (20, 20)]


def test_palette_alias_and_bad_palettes(client):
    image_url = data_uri(png_bytes(upscale(random_art(8, 2), 3)))
    ok = post(client, image_url=image_url, palette=["#000000", "#ffffff80"])
    assert ok.status_code == 200 and set(ok.json()["palette"]) <= {"#000000", "#ffffff"}
    bad = post(client, image_url=image_url, fixed_palette=["#fff"])
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "fixed_palette"]


def test_oversized_images_and_scales_are_422(client, monkeypatch):
    monkeypatch.setattr(Image2PixelPipeline, "max_side", 40)
    monkeypatch.setattr(Image2PixelPipeline, "max_pixels", 30 * 30)
    for size in ((41, 10), (31, 31)):
        response = post(client, image_url=data_uri(png_bytes(np.zeros(size + (3,), np.uint8))))
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "image_url"]
    too_big_scale = post(client, image_url=data_uri(png_bytes(np.zeros((20, 30, 3), np.uint8))), scale=21)
    assert too_big_scale.status_code == 422 and too_big_scale.json()["detail"][0]["loc"] == ["body", "scale"]
    assert post(client, image_url="x", detect_method="fft").status_code == 422


@pytest.mark.parametrize("scale", [3, 4, 5, 8, 11, 20])
def test_a_cells_colour_is_the_median_of_its_sampled_interior(scale):
    """`cell_colours` against its definition: per channel, the lower-middle and upper-middle of the cell's interior
    pixels (its border ring of 1 px left out) sampled every ceil((s - 2) / 8) pixels, the outer ring of those
    samples left out where they are 3 or more a side, averaged and rounded down; on a crop of a larger image, as
    the cells of a grid with an offset are."""
    rng = np.random.default_rng(scale)
    rows, columns = 5, 7
    image = torch.from_numpy(rng.integers(0, 256, (1, 4, rows * scale + 3, columns * scale + 2), dtype=np.uint8))
    image[:, 3] = 255
    cells = image[..., 2 : 2 + rows * scale, 1 : 1 + columns * scale]
    taken = list(range(1, scale - 1, -(-(scale - 2) // CELL_SAMPLES)))
    taken = taken[1:-1] if len(taken) >= 3 else taken
    expected = np.empty((4, rows, columns), np.int64)
    for row in range(rows):
        for column in range(columns):
            pixels = cells[0][:, [row * scale + y for y in taken]][:, :, [column * scale + x for x in taken]]
            ordered = np.sort(pixels.flatten(1).numpy().astype(np.int64), 1)
            expected[:, row, column] = (ordered[:, (ordered.shape[1] - 1) // 2] + ordered[:, ordered.shape[1] // 2]) // 2
    assert cell_colours(cells, scale)[0].tolist() == expected.tolist()
