"""The editing endpoints on FLUX.1 Kontext [dev] through the HTTP API, on a tiny random-weight Kontext.

Every endpoint answers with its seed's output shape; the instruction Kontext receives is the
endpoint's template or the prompt; references are encoded one by one and joined; strength starts
from the input; ignored parameters are reported; one reference gives exactly what stock diffusers'
FluxKontextPipeline gives; a missing model gives the weights error.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kernels.convert import quantize
from pipelines.image_editing_background_change import TEMPLATE as BACKGROUND_TEMPLATE
from pipelines.image_editing_color_correction import TEMPLATE as COLOR_TEMPLATE
from pipelines.image_editing_face_enhancement import TEMPLATE as FACE_TEMPLATE
from pipelines.image_editing_object_removal import TEMPLATE as REMOVAL_TEMPLATE
from pipelines.kontext_editing import reference_sizes
from server.media import decode_image
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.tiny_diffusion import TinyWeights
from testkit.tiny_flux import FLUX_KONTEXT, build_flux_store
from tests.fixtures.apps import (
    image_bytes,
    pixels,
    run,
    start_with_weights,
)

pytestmark = pytest.mark.slow  # tiny diffusion models: seconds per test

IMAGE_EDITING = {
    "fal-ai/image-editing/background-change": BACKGROUND_TEMPLATE.replace("{prompt}", "beach sunset with palm trees"),
    "fal-ai/image-editing/face-enhancement": FACE_TEMPLATE,
    "fal-ai/image-editing/color-correction": COLOR_TEMPLATE,
    "fal-ai/image-editing/object-removal": REMOVAL_TEMPLATE.replace("{prompt}", "background people"),
}
MULTI = "fal-ai/flux-pro/kontext/max/multi"
STEP1X = "fal-ai/step1x-edit"
SEEDEDIT = "fal-ai/bytedance/seededit/v3/edit-image"
LUMA = "fal-ai/luma-photon/modify"
RECRAFT = "fal-ai/recraft/v3/image-to-image"
ENDPOINTS = [*IMAGE_EDITING, MULTI, STEP1X, SEEDEDIT, LUMA, RECRAFT]

SOURCE = gradient_image(72, 40)  # the output keeps its aspect at 80x48
SOURCE_URL = data_uri(png_bytes(SOURCE))
SQUARE_URL = data_uri(png_bytes(gradient_image(32, 32)[::-1].copy()))
TALL_URL = data_uri(png_bytes(gradient_image(24, 48)))
STEPS = {"num_inference_steps": 4}
# each endpoint's smallest request, and the keys of its seed's output (plus Kiln's provenance)
MINIMAL: dict[str, tuple[dict, set[str]]] = {
    **{endpoint: ({"image_url": SOURCE_URL, **STEPS}, {"images", "seed"}) for endpoint in IMAGE_EDITING},
    MULTI: (
        {"prompt": "put the duckling on the t-shirt", "image_urls": [SOURCE_URL, SQUARE_URL]},
        {"images", "timings", "seed", "has_nsfw_concepts", "prompt"},
    ),
    STEP1X: (
        {"prompt": "make head band red", "image_url": SOURCE_URL, **STEPS},
        {"images", "seed", "has_nsfw_concepts", "prompt"},
    ),
    SEEDEDIT: ({"prompt": "give her a bowler hat", "image_url": SOURCE_URL}, {"image", "seed"}),
    LUMA: ({"prompt": "make it a painting", "image_url": SOURCE_URL}, {"images"}),
    RECRAFT: ({"prompt": "winter", "image_url": SOURCE_URL}, {"images"}),
}
FILE_KEYS = {"url", "content_type", "file_name", "file_size"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> TinyWeights:
    return build_flux_store(tmp_path_factory.mktemp("kontext"))


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_weights, registry) -> Iterator[TestClient]:
    client = start_with_weights(tmp_path_factory.mktemp("data"), tiny_weights, registry)
    yield client
    client.__exit__(None, None, None)


def edit(client: TestClient, endpoint: str, **inputs) -> dict:
    payload, _ = MINIMAL[endpoint]
    return run(client, endpoint, {"seed": 5, **payload, **inputs})


def output_images(result: dict) -> list[dict]:
    return result["images"] if "images" in result else [result["image"]]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_endpoint_answers_with_its_seeds_output_shape(client, endpoint):
    payload, keys = MINIMAL[endpoint]
    result = run(client, endpoint, payload)
    assert set(result) == keys | {"provenance"}
    [image] = output_images(result)
    assert pixels(client, image).shape == (48, 80, 3)
    if endpoint in (LUMA, RECRAFT):  # fal's File: no pixel size
        assert set(image) == FILE_KEYS
    else:
        assert (image["width"], image["height"]) == (80, 48)
    assert image["file_size"] == len(image_bytes(client, image))
    if "seed" in result:
        assert result["seed"] == result["provenance"]["seed"]
    provenance = result["provenance"]
    assert provenance["weights"][FLUX_KONTEXT]["repo"] == "kiln-test/tiny-flux-kontext-dev"
    assert "FLUX.1 Kontext [dev] stands in" in provenance["model_note"]


@pytest.mark.parametrize("endpoint", list(IMAGE_EDITING))
def test_image_editing_endpoints_send_their_template(client, endpoint):
    result = edit(client, endpoint)
    assert result["provenance"]["instruction"] == IMAGE_EDITING[endpoint]
    assert result["images"][0]["content_type"] == "image/jpeg"
    assert (result["provenance"]["num_inference_steps"], result["provenance"]["guidance_scale"]) == (4, 3.5)


def test_a_prompt_fills_the_template(client):
    result = edit(client, "fal-ai/image-editing/object-removal", prompt="the red car")
    assert result["provenance"]["instruction"] == REMOVAL_TEMPLATE.replace("{prompt}", "the red car")


def test_fal_defaults_reach_kontext(client):
    defaults = {
        "fal-ai/image-editing/color-correction": (30, 3.5),
        MULTI: (28, 3.5),
        STEP1X: (30, 4.0),
        SEEDEDIT: (28, 2.5),  # SeedEdit's 0.5 mapped onto Kontext's scale
    }
    for endpoint, (steps, guidance) in defaults.items():
        payload = {key: value for key, value in MINIMAL[endpoint][0].items() if key != "num_inference_steps"}
        provenance = run(client, endpoint, payload)["provenance"]
        assert (provenance["num_inference_steps"], provenance["guidance_scale"]) == (steps, guidance), endpoint


def test_same_seed_same_bytes_and_other_seeds_differ(client):
    first, again, other = (edit(client, STEP1X, seed=seed, output_format="png") for seed in (1, 1, 2))
    assert image_bytes(client, first["images"][0]) == image_bytes(client, again["images"][0])
    assert not np.array_equal(pixels(client, first["images"][0]), pixels(client, other["images"][0]))


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
def test_output_formats(client, output_format):
    result = edit(client, MULTI, output_format=output_format)
    assert result["images"][0]["content_type"] == f"image/{output_format}"


def test_multi_encodes_every_reference_and_each_one_matters(client):
    result = edit(client, MULTI, image_urls=[SOURCE_URL, SQUARE_URL, TALL_URL], num_images=2, output_format="png")
    assert len(result["images"]) == 2 and result["has_nsfw_concepts"] == [False, False]
    expected = reference_sizes(
        [
            decode_image(png_bytes(image), max_pixels=1 << 20)
            for image in (SOURCE, gradient_image(32, 32), gradient_image(24, 48))
        ],
        80 * 48,
    )
    assert result["provenance"]["references"] == [{"width": w, "height": h} for w, h in expected]
    heights = {h for _, h in expected}
    assert len(heights) == 1, "references share one height, laid side by side"
    two = edit(client, MULTI, image_urls=[SOURCE_URL, SQUARE_URL], output_format="png")
    other_second = edit(client, MULTI, image_urls=[SOURCE_URL, TALL_URL], output_format="png")
    assert not np.array_equal(pixels(client, two["images"][0]), pixels(client, other_second["images"][0]))


def test_reference_sizes_share_the_outputs_pixel_count():
    single = decode_image(png_bytes(gradient_image(80, 48)), max_pixels=1 << 20)
    assert reference_sizes([single], 80 * 48) == [(80, 48)]
    square = decode_image(png_bytes(gradient_image(512, 512)), max_pixels=1 << 20)
    sizes = reference_sizes([square, square, square, square], 1024 * 1024)
    assert sizes == [(512, 512)] * 4


def test_a_bad_reference_is_422_naming_its_index(client):
    response = client.post(f"/run/{MULTI}", json={**MINIMAL[MULTI][0], "image_urls": [SOURCE_URL, data_uri(b"x")]})
    assert response.status_code == 422
    assert ["body", "image_urls", 1] in [error["loc"] for error in response.json()["detail"]]


# the input's 72x40 = 2880 pixels at the requested aspect, sides rounded to 16
@pytest.mark.parametrize(("aspect_ratio", "size"), [("1:1", (48, 48)), ("9:16", (48, 64))])
def test_aspect_ratio_reframes_at_the_inputs_area(client, aspect_ratio, size):
    result = edit(client, "fal-ai/image-editing/background-change", aspect_ratio=aspect_ratio)
    image = result["images"][0]
    assert (image["width"], image["height"]) == size
    luma = edit(client, LUMA, aspect_ratio=aspect_ratio, strength=0.5)
    assert pixels(client, luma["images"][0]).shape[:2] == size[::-1]


def test_strength_starts_from_the_input(client):
    recraft = edit(client, RECRAFT, strength=0.25)["provenance"]
    assert recraft["denoising_steps"] == 7 and recraft["start"] == "first image noised to 0.25"
    luma = edit(client, LUMA, strength=0.75)["provenance"]
    assert luma["denoising_steps"] == 7 and luma["start"] == "first image noised to 0.25"
    assert edit(client, LUMA)["provenance"]["start"] == "noise"


def test_strength_that_keeps_nothing_of_the_input_is_exactly_a_start_from_noise(client):
    """Luma's strength 0 noises the input to sigma 1, which leaves only the noise: the same seed must
    then give the bytes of a start from noise, so the noise is drawn as the pipeline draws it."""
    from_noise = edit(client, LUMA)
    noised_input = edit(client, LUMA, strength=0.0)
    assert noised_input["provenance"]["denoising_steps"] == 28
    assert image_bytes(client, from_noise["images"][0]) == image_bytes(client, noised_input["images"][0])
    nearly = edit(client, LUMA, strength=0.5)
    assert image_bytes(client, nearly["images"][0]) != image_bytes(client, from_noise["images"][0])


def test_recraft_style_and_colors_are_words_in_the_instruction(client):
    result = edit(client, RECRAFT, style="digital_illustration/pixel_art", colors=[{"r": 255, "g": 0, "b": 16}])
    assert (
        result["provenance"]["instruction"] == "winter. Style: digital illustration, pixel art. Use the colors #ff0010."
    )
    assert edit(client, RECRAFT, style="any")["provenance"]["instruction"] == "winter."


def test_parameters_kontext_cannot_honour_are_reported_as_ignored(client):
    assert edit(client, RECRAFT, style_id="1234", negative_prompt="blurry")["provenance"]["ignored"] == {
        "style_id": "1234",
        "negative_prompt": "blurry",
    }
    assert edit(client, STEP1X, negative_prompt="blurry")["provenance"]["ignored"] == {"negative_prompt": "blurry"}
    assert edit(client, MULTI, safety_tolerance=5)["provenance"]["ignored"] == {"safety_tolerance": "5"}
    # fal's default tolerance is a value too, and just as ignored
    assert edit(client, "fal-ai/image-editing/face-enhancement")["provenance"]["ignored"] == {"safety_tolerance": "2"}
    assert edit(client, STEP1X)["provenance"]["ignored"] == {}


@pytest.mark.parametrize(
    ("endpoint", "inputs", "field"),
    [
        (MULTI, {"image_urls": []}, "image_urls"),
        ("fal-ai/image-editing/color-correction", {"safety_tolerance": "7"}, "safety_tolerance"),
        ("fal-ai/image-editing/color-correction", {"aspect_ratio": "5:4"}, "aspect_ratio"),
        (SEEDEDIT, {"guidance_scale": 2.0}, "guidance_scale"),
        (RECRAFT, {"style": "oil_painting"}, "style"),
        (RECRAFT, {"colors": [{"r": 300, "g": 0, "b": 0}]}, "colors"),
        (LUMA, {"aspect_ratio": "3:2"}, "aspect_ratio"),
    ],
)
def test_bad_inputs_are_422_naming_the_field(client, endpoint, inputs, field):
    response = client.post(f"/run/{endpoint}", json={**MINIMAL[endpoint][0], **inputs})
    assert response.status_code == 422, response.text
    assert any(error["loc"][:2] == ["body", field] for error in response.json()["detail"])


def as_float(image: np.ndarray) -> torch.Tensor:
    """`(1, 3, H, W)` in [0, 1] computed as the server computes it: diffusers' own PIL path divides
    in NumPy, whose last bit can differ from torch's division."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32) / 255


def test_one_reference_is_exactly_stock_kontext(tmp_path, tiny_weights, registry):
    """Kiln's reference path (encode each image alone, join the latents) is, for one image, what
    stock FluxKontextPipeline does with that image at the output size."""
    from diffusers import FluxKontextPipeline

    source = gradient_image(80, 48)
    plain_kiln = start_with_weights(tmp_path / "data", tiny_weights, registry, speedups=False)
    try:
        result = run(
            plain_kiln,
            STEP1X,
            {**MINIMAL[STEP1X][0], "image_url": data_uri(png_bytes(source)), "seed": 9, "output_format": "png"},
        )
        kiln_pixels = pixels(plain_kiln, result["images"][0])
    finally:
        plain_kiln.__exit__(None, None, None)
    pipe = FluxKontextPipeline.from_pretrained(tiny_weights.store / FLUX_KONTEXT, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompt=MINIMAL[STEP1X][0]["prompt"],
        image=as_float(source),
        height=48,
        width=80,
        max_area=80 * 48,
        _auto_resize=False,
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(9)],
        output_type="pt",
    ).images
    np.testing.assert_array_equal(kiln_pixels, quantize(images)[0].permute(1, 2, 0).numpy())


def test_without_weights_every_editing_endpoint_names_the_pull_command(tmp_path, tiny_weights, registry):
    empty = TinyWeights(store=tmp_path / "no-weights", lock=tiny_weights.lock)
    client = start_with_weights(tmp_path / "data", empty, registry)
    try:
        for endpoint in ENDPOINTS:
            refused = client.post(f"/queue/{endpoint}", json=MINIMAL[endpoint][0])
            assert refused.status_code == 501, endpoint
            assert f"`kiln weights pull {FLUX_KONTEXT}`" in refused.json()["detail"]
    finally:
        client.__exit__(None, None, None)
