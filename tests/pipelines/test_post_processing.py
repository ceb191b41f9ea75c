"""fal-ai/post-processing and fal-ai/post-processing/sharpen through the HTTP API (issue 3).

Expected images are computed here by calling the kernels directly, with the request's parameters, on
the input decoded as the server decodes it, then quantised as the server quantises. So a test fails
if the API applies another effect or mode, passes a parameter to the wrong argument, applies the
effects in another order, or batching changes a result.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.blur import gaussian_blur, kuwahara_blur
from kernels.chromatic import shift_channels
from kernels.color import correct_color
from kernels.convert import quantize
from kernels.desaturate import desaturate
from kernels.dissolve import dissolve, resize_to
from kernels.dodge_burn import dodge_burn
from kernels.glow import glow
from kernels.grain import add_film_grain
from kernels.parabolize import parabolize
from kernels.sharpen import sharpen_basic, sharpen_cas, sharpen_smart
from kernels.solarize import solarize
from kernels.tint import tint
from kernels.vignette import apply_vignette
from pipelines.contract import RawImage
from pipelines.post_processing import (
    EFFECTS,
    Item,
    PostProcessingInput,
    PostProcessingPipeline,
    apply_effects,
)
from server.media import decode_image
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from tests.fixtures.apps import image_bytes, occupy_worker, result_of, submit

POST_PROCESSING = "fal-ai/post-processing"
SHARPEN = "fal-ai/post-processing/sharpen"
ENDPOINTS = (POST_PROCESSING, SHARPEN)
IMAGE_FIELDS = {"url", "content_type", "file_name", "file_size", "width", "height"}


def textured_image(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A gradient with noise, so that blurs and sharpens change every region; with 4 channels a random alpha."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-48, 49, (height, width, 3))
    rgb = np.clip(gradient_image(width, height).astype(np.int16) + noise, 0, 255)
    planes = [rgb, rng.integers(0, 256, (height, width, 1))] if channels == 4 else [rgb]
    return np.concatenate(planes, axis=-1).astype(np.uint8)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """`(1, C, H, W)` float32 in [0, 1], decoded from PNG the way the server decodes an input."""
    return decode_image(png_bytes(pixels), max_pixels=1 << 24).to_float("cpu").unsqueeze(0)


# Not square, so a swapped width and height shows; RGBA with a varied alpha plane.
SOURCE = textured_image(40, 24, channels=4)
SOURCE_URL = data_uri(png_bytes(SOURCE))
# Another size than SOURCE, so dissolve has to resize it.
DISSOLVE_SOURCE = textured_image(20, 30, seed=1)
DISSOLVE_URL = data_uri(png_bytes(DISSOLVE_SOURCE))
NOT_AN_IMAGE_URL = data_uri(b"these bytes are not an image")


def dissolve_into_source(rgb: torch.Tensor, factor: float) -> torch.Tensor:
    other = resize_to(as_tensor(DISSOLVE_SOURCE)[:, :3], tuple(rgb.shape[-2:]))
    return dissolve(rgb, other, factor)


@dataclasses.dataclass(frozen=True)
class EffectCase:
    """Request fields that enable one effect, and the kernel call on `(B, 3, H, W)` RGB they must mean."""

    case_id: str
    effect: str
    fields: dict
    kernel: Callable[[torch.Tensor], torch.Tensor]


# The sharpen endpoint's fields; the full chain takes the same fields plus `enable_sharpen`.
SHARPEN_CASES = (
    EffectCase(
        "sharpen-basic",
        "sharpen",
        {"sharpen_mode": "basic", "sharpen_radius": 2, "sharpen_alpha": 2.5},
        lambda rgb: sharpen_basic(rgb, 2, 2.5),
    ),
    EffectCase(
        "sharpen-smart",
        "sharpen",
        {
            "sharpen_mode": "smart",
            "noise_radius": 3,
            "preserve_edges": 0.5,
            "smart_sharpen_strength": 8.0,
            "smart_sharpen_ratio": 0.7,
        },
        lambda rgb: sharpen_smart(rgb, 3, 0.5, 8.0, 0.7),
    ),
    EffectCase("sharpen-cas", "sharpen", {"sharpen_mode": "cas", "cas_amount": 0.6}, lambda rgb: sharpen_cas(rgb, 0.6)),
)


def enabled_sharpen(case: EffectCase) -> EffectCase:
    return dataclasses.replace(case, fields={"enable_sharpen": True, **case.fields})


# One case per effect, in the order the module documents, each in a mode other than the default.
IN_DOCUMENTED_ORDER = (
    EffectCase(
        "grain-kodak",
        "grain",
        {"enable_grain": True, "grain_style": "kodak", "grain_intensity": 0.6, "grain_scale": 4.0, "seed": 11},
        lambda rgb: add_film_grain(rgb, 0.6, 4.0, "kodak", [11]),
    ),
    EffectCase(
        "color-correction",
        "color_correction",
        {
            "enable_color_correction": True,
            "temperature": 35.0,
            "brightness": -12.0,
            "contrast": 25.0,
            "saturation": -40.0,
            "gamma": 1.3,
        },
        lambda rgb: correct_color(rgb, 35.0, -12.0, 25.0, -40.0, 1.3),
    ),
    EffectCase(
        "chromatic",
        "chromatic",
        {
            "enable_chromatic": True,
            "red_shift": 3,
            "red_direction": "vertical",
            "green_shift": -2,
            "blue_shift": 4,
            "blue_direction": "vertical",
        },
        lambda rgb: shift_channels(rgb, 3, "vertical", -2, "horizontal", 4, "vertical"),
    ),
    EffectCase(
        "blur-kuwahara",
        "blur",
        {"enable_blur": True, "blur_type": "kuwahara", "blur_radius": 2},
        lambda rgb: kuwahara_blur(rgb, 2),
    ),
    EffectCase(
        "vignette", "vignette", {"enable_vignette": True, "vignette_strength": 1.5}, lambda rgb: apply_vignette(rgb, 1.5)
    ),
    EffectCase(
        "parabolize",
        "parabolize",
        {"enable_parabolize": True, "parabolize_coeff": -1.5, "vertex_x": 0.3, "vertex_y": 0.8},
        lambda rgb: parabolize(rgb, -1.5, 0.3, 0.8),
    ),
    EffectCase(
        "tint-teal",
        "tint",
        {"enable_tint": True, "tint_mode": "teal", "tint_strength": 0.6},
        lambda rgb: tint(rgb, 0.6, "teal"),
    ),
    EffectCase(
        "dissolve",
        "dissolve",
        {"enable_dissolve": True, "dissolve_image_url": DISSOLVE_URL, "dissolve_factor": 0.3},
        lambda rgb: dissolve_into_source(rgb, 0.3),
    ),
    EffectCase(
        "dodge-burn-color-burn",
        "dodge_burn",
        {"enable_dodge_burn": True, "dodge_burn_mode": "color_burn", "dodge_burn_intensity": 0.7},
        lambda rgb: dodge_burn(rgb, 0.7, "color_burn"),
    ),
    EffectCase(
        "glow", "glow", {"enable_glow": True, "glow_intensity": 1.5, "glow_radius": 3}, lambda rgb: glow(rgb, 1.5, 3)
    ),
    enabled_sharpen(SHARPEN_CASES[1]),
    EffectCase(
        "solarize", "solarize", {"enable_solarize": True, "solarize_threshold": 0.3}, lambda rgb: solarize(rgb, 0.3)
    ),
    EffectCase(
        "desaturate-average",
        "desaturate",
        {"enable_desaturate": True, "desaturate_method": "average", "desaturate_factor": 0.6},
        lambda rgb: desaturate(rgb, 0.6, "average"),
    ),
)

OTHER_MODES = (
    EffectCase(
        "grain-newspaper",
        "grain",
        {"enable_grain": True, "grain_style": "newspaper", "grain_intensity": 0.3, "grain_scale": 20.0, "seed": 5},
        lambda rgb: add_film_grain(rgb, 0.3, 20.0, "newspaper", [5]),
    ),
    EffectCase(
        "blur-gaussian",
        "blur",
        {"enable_blur": True, "blur_type": "gaussian", "blur_radius": 2, "blur_sigma": 1.5},
        lambda rgb: gaussian_blur(rgb, 2, 1.5),
    ),
    EffectCase(
        "tint-lavender",
        "tint",
        {"enable_tint": True, "tint_mode": "lavender", "tint_strength": 1.0},
        lambda rgb: tint(rgb, 1.0, "lavender"),
    ),
    EffectCase(
        "dodge-burn-burn-and-dodge",
        "dodge_burn",
        {"enable_dodge_burn": True, "dodge_burn_mode": "burn_and_dodge", "dodge_burn_intensity": 0.4},
        lambda rgb: dodge_burn(rgb, 0.4, "burn_and_dodge"),
    ),
    enabled_sharpen(SHARPEN_CASES[0]),
    enabled_sharpen(SHARPEN_CASES[2]),
    EffectCase(
        "desaturate-rec601",
        "desaturate",
        {"enable_desaturate": True, "desaturate_method": "luminance (Rec.601)", "desaturate_factor": 0.8},
        lambda rgb: desaturate(rgb, 0.8, "luminance (Rec.601)"),
    ),
)

ALL_EFFECTS_FIELDS = {key: value for case in IN_DOCUMENTED_ORDER for key, value in case.fields.items()}


def case_named(case_id: str) -> EffectCase:
    return next(case for case in IN_DOCUMENTED_ORDER + OTHER_MODES if case.case_id == case_id)


def expected_pixels(source: np.ndarray, *kernels: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """`kernels` applied in turn to the RGB of `source`, alpha carried through, as `(H, W, C)` uint8."""
    image = as_tensor(source)
    rgb = image[:, :3]
    for kernel in kernels:
        rgb = kernel(rgb)
    return quantize(torch.cat([rgb, image[:, 3:]], dim=1))[0].permute(1, 2, 0).numpy()


def run(client, endpoint: str, **fields) -> dict:
    """The sync API's answer to one request on SOURCE (unless `fields` names another image)."""
    response = client.post(f"/run/{endpoint}", json={"image_url": SOURCE_URL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def run_queued(client, endpoint: str, **fields) -> dict:
    return result_of(client, submit(client, {"image_url": SOURCE_URL, **fields}, path=f"/queue/{endpoint}"))


def decoded(client, result: dict) -> Image.Image:
    [image] = result["images"]
    return Image.open(io.BytesIO(image_bytes(client, image)))


def pixels(client, result: dict) -> np.ndarray:
    return np.asarray(decoded(client, result))


# -- 1. output shape --------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_output_has_the_seed_shape_with_a_downloadable_png(client, endpoint):
    for result in (run(client, endpoint), run_queued(client, endpoint)):
        assert set(result) == {"images", "provenance"}
        [image] = result["images"]
        assert set(image) == IMAGE_FIELDS
        assert image["content_type"] == "image/png" and image["file_name"].endswith(".png")
        assert urlsplit(image["url"]).scheme == "http"
        assert (image["width"], image["height"]) == (40, 24)
        data = image_bytes(client, image)
        assert len(data) == image["file_size"]
        png = Image.open(io.BytesIO(data))
        assert png.format == "PNG" and png.size == (40, 24)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_sync_mode_returns_the_same_png_inline(client, endpoint):
    inline = run(client, endpoint, sync_mode=True)
    [image] = inline["images"]
    assert image["url"].startswith("data:image/png;base64,")
    assert (image["width"], image["height"]) == (40, 24)
    assert len(image_bytes(client, image)) == image["file_size"]
    np.testing.assert_array_equal(pixels(client, inline), pixels(client, run(client, endpoint)))


# -- 2. each effect alone is exactly its kernel -----------------------------------------------------


@pytest.mark.parametrize("case", IN_DOCUMENTED_ORDER + OTHER_MODES, ids=lambda case: case.case_id)
def test_each_effect_alone_applies_its_kernel_with_the_request_parameters(client, case):
    result = run(client, POST_PROCESSING, **case.fields)
    assert result["provenance"]["effects"] == [case.effect]
    output = pixels(client, result)
    assert not np.array_equal(output, SOURCE), "the effect left the image unchanged"
    np.testing.assert_array_equal(output, expected_pixels(SOURCE, case.kernel))


@pytest.mark.parametrize("case", SHARPEN_CASES, ids=lambda case: case.case_id)
def test_sharpen_endpoint_applies_the_sharpen_kernel_of_its_mode(client, case):
    result = run(client, SHARPEN, **case.fields)
    assert result["provenance"]["effects"] == ["sharpen"]
    output = pixels(client, result)
    assert not np.array_equal(output, SOURCE), "sharpen left the image unchanged"
    np.testing.assert_array_equal(output, expected_pixels(SOURCE, case.kernel))


def test_no_effect_enabled_returns_the_input_pixels(client):
    result = run(client, POST_PROCESSING)
    assert result["provenance"]["effects"] == []
    np.testing.assert_array_equal(pixels(client, result), SOURCE)


# -- 3. the fixed order -----------------------------------------------------------------------------


def test_all_effects_apply_in_the_documented_order(client):
    result = run(client, POST_PROCESSING, **ALL_EFFECTS_FIELDS)
    assert result["provenance"]["effects"] == [case.effect for case in IN_DOCUMENTED_ORDER]
    expected = expected_pixels(SOURCE, *(case.kernel for case in IN_DOCUMENTED_ORDER))
    np.testing.assert_array_equal(pixels(client, result), expected)


def test_tint_applies_before_solarize_not_after(client):
    tint_case, solarize_case = case_named("tint-teal"), case_named("solarize")
    documented = expected_pixels(SOURCE, tint_case.kernel, solarize_case.kernel)
    reversed_order = expected_pixels(SOURCE, solarize_case.kernel, tint_case.kernel)
    assert not np.array_equal(documented, reversed_order), "the pair must not commute on this image"
    result = run(client, POST_PROCESSING, **solarize_case.fields, **tint_case.fields)
    np.testing.assert_array_equal(pixels(client, result), documented)


# -- 4. alpha and input modes -----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, fields", [(POST_PROCESSING, ALL_EFFECTS_FIELDS), (SHARPEN, {})], ids=ENDPOINTS)
def test_alpha_plane_passes_through_unchanged(client, endpoint, fields):
    output = decoded(client, run(client, endpoint, **fields))
    assert output.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(output)[..., 3], SOURCE[..., 3])


def input_in_mode(mode: str) -> tuple[bytes, np.ndarray]:
    """A PNG in `mode`, and the 8-bit RGB or RGBA pixels it means."""
    rgba = Image.fromarray(textured_image(40, 24, channels=4, seed=2))
    if mode == "I;16":
        grey = np.asarray(rgba.convert("L"))
        # v * 257 spans the 16-bit range exactly as v spans the 8-bit one
        return png_bytes(grey.astype(np.uint16) * 257), np.asarray(rgba.convert("L").convert("RGB"))
    if mode == "P+transparency":
        image = rgba.convert("RGB").quantize(16)
        image.info["transparency"] = 3
    elif mode == "P":
        image = rgba.convert("RGB").quantize(16)
    else:
        image = rgba.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    meant = image.convert("RGBA" if mode in ("LA", "P+transparency") else "RGB")
    return buffer.getvalue(), np.asarray(meant)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P+transparency", "I;16"])
def test_grey_palette_and_16_bit_inputs_give_the_result_of_their_8_bit_colour_image(client, mode):
    data, meant = input_in_mode(mode)
    assert Image.open(io.BytesIO(data)).mode == mode.partition("+")[0]
    effects = {**case_named("tint-teal").fields, **case_named("glow").fields}
    output = decoded(client, run(client, POST_PROCESSING, image_url=data_uri(data), **effects))
    assert output.mode == ("RGBA" if meant.shape[-1] == 4 else "RGB")
    assert output.size == (40, 24)
    equivalent = run(client, POST_PROCESSING, image_url=data_uri(png_bytes(meant)), **effects)
    np.testing.assert_array_equal(np.asarray(output), pixels(client, equivalent))


# -- 5. grain determinism ---------------------------------------------------------------------------

GRAIN = {"enable_grain": True, "grain_intensity": 0.5, "sync_mode": True}


def png_url(result: dict) -> str:
    [image] = result["images"]
    return image["url"]


def test_grain_seed_fixes_the_bytes(client):
    first = run(client, POST_PROCESSING, seed=42, **GRAIN)
    assert first["provenance"]["seed"] == 42
    assert png_url(run(client, POST_PROCESSING, seed=42, **GRAIN)) == png_url(first)
    assert png_url(run(client, POST_PROCESSING, seed=43, **GRAIN)) != png_url(first)


def test_missing_grain_seed_is_drawn_reported_and_replayable(client):
    drawn = run_queued(client, POST_PROCESSING, **GRAIN)
    seed = drawn["provenance"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert png_url(run(client, POST_PROCESSING, seed=seed, **GRAIN)) == png_url(drawn)
    assert run(client, POST_PROCESSING, **GRAIN)["provenance"]["seed"] != seed


# -- 6. batching ------------------------------------------------------------------------------------

# Same size and channels, different contents and parameters; effects and their modes enabled in
# overlapping subsets, so the chain runs some effects on the whole batch and some on parts of it.
OTHER_SOURCE_URL = data_uri(png_bytes(textured_image(40, 24, channels=4, seed=3)))
BATCHES = {
    POST_PROCESSING: [
        {"enable_grain": True, "grain_style": "kodak", "seed": 1, "enable_tint": True, "tint_mode": "teal"},
        {"enable_grain": True, "grain_style": "kodak", "seed": 2, "grain_intensity": 0.2, "enable_blur": True},
        {
            "image_url": OTHER_SOURCE_URL,
            "enable_grain": True,
            "seed": 3,
            "enable_blur": True,
            "blur_sigma": 2.0,
            "enable_sharpen": True,
            "sharpen_mode": "cas",
        },
        {
            "enable_tint": True,
            "tint_strength": 0.4,
            "enable_dissolve": True,
            "dissolve_image_url": DISSOLVE_URL,
            "enable_sharpen": True,
            "sharpen_mode": "cas",
            "cas_amount": 0.2,
        },
        {"image_url": OTHER_SOURCE_URL, "enable_color_correction": True, "contrast": 30.0, "enable_solarize": True},
        {},
    ],
    SHARPEN: [
        {"sharpen_mode": "basic"},
        {"sharpen_mode": "basic", "sharpen_alpha": 3.0, "image_url": OTHER_SOURCE_URL},
        {"sharpen_mode": "cas", "cas_amount": 0.3},
        {"sharpen_mode": "smart", "noise_radius": 3},
    ],
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_requests_waiting_together_run_as_one_batch_with_the_bytes_of_each_alone(client, endpoint):
    requests = BATCHES[endpoint]
    blocker = occupy_worker(client)
    queued = [
        submit(client, {"image_url": SOURCE_URL, "sync_mode": True, **fields}, path=f"/queue/{endpoint}")
        for fields in requests
    ]
    client.put(blocker["cancel_url"])
    for waiting in queued:
        wait_completed(client, waiting["status_url"])
    together = [result_of(client, waiting) for waiting in queued]
    assert [result["provenance"]["batch_size"] for result in together] == [len(requests)] * len(requests)
    for fields, batched in zip(requests, together):
        alone = run(client, endpoint, sync_mode=True, **fields)
        assert alone["provenance"]["batch_size"] == 1
        assert png_url(batched) == png_url(alone), f"{fields} differs in the batch"


# -- 7. invalid input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, fields, field",
    [
        (POST_PROCESSING, {"enable_dissolve": True}, "dissolve_image_url"),
        (POST_PROCESSING, {"grain_intensity": 2}, "grain_intensity"),
        (POST_PROCESSING, {"blur_radius": 99}, "blur_radius"),
        (POST_PROCESSING, {"blur_radius": 2.5}, "blur_radius"),
        (POST_PROCESSING, {"sharpen_radius": 0}, "sharpen_radius"),
        (POST_PROCESSING, {"tint_strength": 0.05}, "tint_strength"),
        (POST_PROCESSING, {"gamma": 3.0}, "gamma"),
        (POST_PROCESSING, {"red_shift": 21}, "red_shift"),
        (POST_PROCESSING, {"seed": -1}, "seed"),
        (POST_PROCESSING, {"grain_style": "vhs"}, "grain_style"),
        (POST_PROCESSING, {"blur_type": "box"}, "blur_type"),
        (POST_PROCESSING, {"green_direction": "diagonal"}, "green_direction"),
        (POST_PROCESSING, {"tint_mode": "pink"}, "tint_mode"),
        (POST_PROCESSING, {"dodge_burn_mode": "overlay"}, "dodge_burn_mode"),
        (POST_PROCESSING, {"desaturate_method": "luminance"}, "desaturate_method"),
        (POST_PROCESSING, {"sharpen_mode": "unsharp"}, "sharpen_mode"),
        (SHARPEN, {"sharpen_mode": "unsharp"}, "sharpen_mode"),
        (SHARPEN, {"sharpen_radius": 16}, "sharpen_radius"),
        (SHARPEN, {"cas_amount": 1.5}, "cas_amount"),
    ],
)
def test_invalid_input_is_422_naming_the_field(client, endpoint, fields, field):
    assert_422_naming(client, endpoint, {"image_url": SOURCE_URL, **fields}, field)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_missing_image_url_is_422(client, endpoint):
    assert_422_naming(client, endpoint, {}, "image_url")


def assert_422_naming(client, endpoint: str, body: dict, field: str) -> None:
    """Both APIs reject `body` at submit with FastAPI's 422 body, naming `field` and nothing else."""
    for api in ("run", "queue"):
        response = client.post(f"/{api}/{endpoint}", json=body)
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]


@pytest.mark.parametrize(
    "endpoint, fields, field",
    [
        (POST_PROCESSING, {"image_url": NOT_AN_IMAGE_URL}, "image_url"),
        (POST_PROCESSING, {"enable_dissolve": True, "dissolve_image_url": NOT_AN_IMAGE_URL}, "dissolve_image_url"),
        (SHARPEN, {"image_url": NOT_AN_IMAGE_URL}, "image_url"),
    ],
)
def test_undecodable_image_is_422_naming_the_field(client, endpoint, fields, field):
    sync = client.post(f"/run/{endpoint}", json={"image_url": SOURCE_URL, **fields})
    queued = submit(client, {"image_url": SOURCE_URL, **fields}, path=f"/queue/{endpoint}")
    wait_completed(client, queued["status_url"])
    for response in (sync, client.get(queued["response_url"])):
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", field] and error["type"] == "image_load_error"


# -- 8. CPU and CUDA agree --------------------------------------------------------------------------


@pytest.mark.gpu
def test_all_effects_on_cuda_match_the_cpu_within_two_levels():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    source = png_bytes(textured_image(256, 256, channels=4, seed=4))
    inputs = PostProcessingInput(image_url=data_uri(source), **ALL_EFFECTS_FIELDS)
    dissolve_image = decode_image(png_bytes(DISSOLVE_SOURCE), max_pixels=1 << 24)
    item = Item(inputs, decode_image(source, max_pixels=1 << 24), dissolve_image)

    def all_effects_on(device: str) -> torch.Tensor:
        images = item.image.to_float(device).unsqueeze(0)
        return quantize(apply_effects(images, [item], EFFECTS)).cpu().to(torch.int16)

    on_cpu, on_cuda = all_effects_on("cpu"), all_effects_on("cuda")
    assert on_cpu[:, 3].equal(on_cuda[:, 3]), "alpha must pass through untouched"
    assert (on_cpu - on_cuda).abs().max().item() <= 2


@pytest.mark.parametrize(
    ("device", "side", "limit"),
    [("cpu", 64, 8), ("cpu", 128, 2), ("cpu", 1024, 1), ("cuda", 1024, PostProcessingPipeline.max_batch_size)],
)
def test_batches_hold_a_pixel_budget_on_the_cpu_and_the_full_batch_on_a_gpu(device, side, limit):
    """Regression: on the CPU, batches of eight 1024x1024 images ran 3x slower per image than alone."""
    pipeline = PostProcessingPipeline()
    pipeline.device = torch.device(device)
    image = RawImage(torch.zeros(3, side, side, dtype=torch.uint8), 255)
    assert pipeline.batch_limit(Item(PostProcessingInput(image_url="unused"), image)) == limit
