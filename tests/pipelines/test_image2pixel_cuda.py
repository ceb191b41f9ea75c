"""fal-ai/image2pixel on CUDA gives what it gives on the CPU: every option family on real and degraded art.

A lent H200 found `pixelate` failing on CUDA (a spectrum compared with a CPU frequency axis) while every CPU
test passed, so this runs the endpoint's whole computation on both devices and compares the results. The CPU is
the oracle for the device, not for the art: the CPU results are checked against the art in test_image2pixel.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.pixel_downscale import DOWNSCALE_METHODS
from pipelines.image2pixel import Image2PixelInput, pixelate
from tests.fixtures import pixel_art

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

CASES = [
    (2, (1, 0), ""),
    (3, (2, 1), "resample0.98"),
    (2, (0, 1), "resample1.02 jpeg75-444"),
    (5, (3, 2), "jpeg75-420"),
    (9, (4, 4), "blur0.8"),
    (16, (0, 11), "jpeg90-420"),
]
OPTIONS = [
    {},
    {"auto_color_detect": True},
    {"max_colors": 4, "downscale_method": "median"},
    {"fixed_palette": ["#000000", "#ffffff", "#ff0000", "#2050c0"]},
    {"transparent_background": True, "background_mode": "corners", "trim_borders": True},
    {"cleanup_morph": True, "cleanup_jaggy": True, "detect_method": "runs"},
    {"snap_grid": False, "scale": 4},
    *({"downscale_method": method} for method in DOWNSCALE_METHODS),
]


def assert_same_grid(on_cuda, on_cpu, label: str = "") -> None:
    """The same grid, up to float rounding: the devices sum the fractional lattice fits in other orders."""
    first, second = on_cuda.grid, on_cpu.grid
    assert first.scale == second.scale and first.fractional == second.fractional, label
    assert np.allclose([first.offset_y, first.offset_x], [second.offset_y, second.offset_x], atol=1e-6), label
    assert np.allclose(first.cell_size, second.cell_size, atol=1e-6), label


def pixelate_on(device: str, image: np.ndarray, options: dict, case: pixel_art.Case | None = None):
    """`pixelate` on ``device``, told what the server's decoder reads of ``case``'s file when one is given."""
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    tensor = torch.from_numpy(rgba).permute(2, 0, 1).unsqueeze(0).to(device)
    if case is None:
        return pixelate(tensor, Image2PixelInput(image_url="x", **options))
    tables = None if case.jpeg_quantization is None else torch.from_numpy(np.array(case.jpeg_quantization)).to(device)
    return pixelate(tensor, Image2PixelInput(image_url="x", **options), case.chroma_subsampling, tables)


@pytest.mark.parametrize("scale, start, degradation", CASES)
def test_detection_and_cells_match_the_cpu(scale, start, degradation):
    for name in pixel_art.NAMES[:4]:
        case = pixel_art.degraded(name, scale, start, degradation)
        on_cpu, on_cuda = pixelate_on("cpu", case.image, {}), pixelate_on("cuda", case.image, {})
        assert on_cuda.native.device.type == "cuda"
        assert on_cuda.detected_by == on_cpu.detected_by, name
        assert_same_grid(on_cuda, on_cpu, name)
        same = (on_cuda.native.cpu() == on_cpu.native).all(0).float().mean().item()
        assert same >= 0.99, f"{name}: {same:.3f} of the cells agree"


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: ",".join(options) or "defaults")
def test_every_option_runs_on_cuda_as_on_the_cpu(options):
    case = pixel_art.degraded(pixel_art.NAMES[0], 6, (2, 3), "jpeg80-420")
    on_cpu, on_cuda = pixelate_on("cpu", case.image, options), pixelate_on("cuda", case.image, options)
    assert_same_grid(on_cuda, on_cpu)
    assert on_cuda.palette_source == on_cpu.palette_source
    assert on_cuda.native.shape == on_cpu.native.shape
    same = (on_cuda.native.cpu() == on_cpu.native).all(0).float().mean().item()
    assert same >= 0.99, f"{same:.3f} of the cells agree"
    if "fixed_palette" in options:
        assert set(on_cuda.palette) <= set(options["fixed_palette"])


@pytest.mark.parametrize("scale, start, degradation", [(4, (1, 2), "jpeg75-420"), (6, (2, 3), "resample0.98 jpeg85-420")])
def test_the_chroma_model_runs_on_cuda_as_on_the_cpu(scale, start, degradation):
    """A 4:2:0 JPEG's cells from 4 px take the chroma model's colours (`kernels.jpeg_chroma`): its solve on the
    device agrees with the CPU's, and twice on the device gives the same bytes (its sums are exact)."""
    for name in pixel_art.NAMES[:4]:
        case = pixel_art.degraded(name, scale, start, degradation)
        assert case.chroma_subsampling == (2, 2)
        on_cpu = pixelate_on("cpu", case.image, {}, case)
        first, second = (pixelate_on("cuda", case.image, {}, case) for _ in range(2))
        assert_same_grid(first, on_cpu, name)
        assert torch.equal(first.native, second.native), name
        same = (first.native.cpu() == on_cpu.native).all(0).float().mean().item()
        assert same >= 0.99, f"{name}: {same:.3f} of the cells agree"
