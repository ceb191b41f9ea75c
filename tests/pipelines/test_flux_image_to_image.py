"""fal-ai/flux/dev/image-to-image through the HTTP API, on a tiny random-weight FLUX.1 [dev].

The model is built offline (testkit/tiny_flux.py), locked and loaded as real weights are.
With random weights the pictures mean nothing, so the tests check what holds whatever the weights:
the seed's output shape, sizes, determinism, that Kiln computes what stock diffusers computes with
fal's settings, the acceleration levels and the refusals.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from kernels.convert import quantize
from pipelines.flux import output_size
from pipelines.flux_image_to_image import MAX_AREA
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import wait_completed
from testkit.tiny_diffusion import TinyWeights
from testkit.tiny_flux import FLUX_DEV, build_flux_store
from tests.fixtures.apps import (
    image_bytes,
    pixels,
    result_of,
    run,
    start_with_weights,
    submit,
)

pytestmark = pytest.mark.slow  # tiny diffusion models: seconds per test

ENDPOINT = "fal-ai/flux/dev/image-to-image"
OUTPUT_KEYS = {"images", "timings", "seed", "has_nsfw_concepts", "prompt", "provenance"}
# 72x40 is not a multiple of 16 either way: the output keeps its aspect at 80x48
SOURCE = gradient_image(72, 40)
SOURCE_URL = data_uri(png_bytes(SOURCE))
FAST = {"image_url": SOURCE_URL, "prompt": "a cat dressed as a wizard", "num_inference_steps": 4, "seed": 7}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> TinyWeights:
    return build_flux_store(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_weights, registry) -> Iterator[TestClient]:
    """One server for the module, so the pipeline is set up once and stays warm, as in production."""
    client = start_with_weights(tmp_path_factory.mktemp("data"), tiny_weights, registry)
    yield client
    client.__exit__(None, None, None)


def generate(client: TestClient, **inputs) -> dict:
    """FAST updated with `inputs`; a None leaves the field out, so fal's default applies."""
    payload = {field: value for field, value in {**FAST, **inputs}.items() if value is not None}
    return run(client, ENDPOINT, payload)


def test_fal_output_with_fal_defaults_at_the_inputs_aspect(client):
    result = generate(client, num_inference_steps=None, seed=None)
    assert set(result) == OUTPUT_KEYS
    [image] = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (80, 48, "image/jpeg")
    decoded = Image.open(io.BytesIO(image_bytes(client, image)))
    assert decoded.format == "JPEG" and decoded.size == (80, 48)
    assert result["prompt"] == FAST["prompt"] and result["has_nsfw_concepts"] == [False]
    assert isinstance(result["seed"], int) and result["timings"]["inference"] > 0
    provenance = result["provenance"]
    assert provenance["seed"] == result["seed"]
    assert (provenance["num_inference_steps"], provenance["strength"], provenance["guidance_scale"]) == (40, 0.95, 3.5)
    assert provenance["denoising_steps"] == 38
    assert provenance["weights"][FLUX_DEV]["repo"] == "kiln-test/tiny-flux-dev"
    assert provenance["acceleration"]["level"] == "none"


def test_output_sizes_round_to_16_and_stay_within_two_megapixels():
    assert output_size(72, 40, max_area=MAX_AREA) == (80, 48)
    assert output_size(1024, 1024, max_area=MAX_AREA) == (1024, 1024)
    width, height = output_size(4000, 3000, max_area=MAX_AREA)
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 4 / 3) < 0.02 and width * height <= MAX_AREA * 1.02


def test_png_output(client):
    [image] = generate(client, output_format="png")["images"]
    assert image["content_type"] == "image/png"
    assert Image.open(io.BytesIO(image_bytes(client, image))).format == "PNG"


def test_progress_is_logged_per_denoising_step(client):
    queued = submit(client, {**FAST, "num_inference_steps": 10, "strength": 0.5}, path=f"/queue/{ENDPOINT}")
    result_of(client, queued)
    logs = [line["message"] for line in client.get(queued["status_url"] + "?logs=1").json()["logs"]]
    assert [line for line in logs if line.startswith("step")] == [f"step {i}/5" for i in range(1, 6)]


def test_same_seed_same_bytes_and_other_seeds_differ(client):
    first, again, other = (generate(client, seed=seed, output_format="png") for seed in (3, 3, 4))
    assert image_bytes(client, first["images"][0]) == image_bytes(client, again["images"][0])
    assert not np.array_equal(pixels(client, first["images"][0]), pixels(client, other["images"][0]))


def test_num_images_gives_that_many_images_seeded_seed_plus_index(client):
    batch = generate(client, num_images=3, seed=10, output_format="png")
    assert len(batch["images"]) == 3 and batch["has_nsfw_concepts"] == [False] * 3
    images = [pixels(client, image) for image in batch["images"]]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    alone = generate(client, seed=10, output_format="png")
    np.testing.assert_array_equal(pixels(client, alone["images"][0]), images[0])


@pytest.mark.parametrize("level", ["none", "regular", "high"])
def test_every_acceleration_level_runs_and_says_what_it_applied(client, level):
    result = generate(client, acceleration=level, num_inference_steps=8, output_format="png")
    assert pixels(client, result["images"][0]).shape == (48, 80, 3)
    applied = result["provenance"]["acceleration"]
    assert applied["level"] == level
    # no FP8 on a CPU: it says why instead
    assert applied["fp8"] is False
    assert (applied["fp8_unavailable"] is not None) == (level != "none")
    assert (applied["first_block_cache"] is not None) == (level == "high")


def test_on_the_cpu_regular_is_none_and_high_is_the_cached_none(client):
    none, regular, high = (
        generate(client, acceleration=level, num_inference_steps=8, output_format="png")
        for level in ("none", "regular", "high")
    )
    assert image_bytes(client, none["images"][0]) == image_bytes(client, regular["images"][0])
    # the cache reuses residuals, so it may drift, but only slightly on 8 steps
    difference = np.abs(pixels(client, high["images"][0]).astype(int) - pixels(client, none["images"][0]).astype(int))
    assert difference.mean() < 8


def stock_diffusers(folder, *, image: np.ndarray, prompt: str, steps: int, strength: float, seed: int) -> np.ndarray:
    """The stock FluxImg2ImgPipeline with fal's settings passed by hand."""
    from diffusers import FluxImg2ImgPipeline

    pipe = FluxImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    height, width = image.shape[:2]
    images = pipe(
        prompt=prompt,
        # as the server computes it: diffusers' PIL path divides in NumPy, whose last bit can differ
        image=torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32) / 255,
        height=height,
        width=width,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=3.5,
        generator=[torch.Generator().manual_seed(seed)],
        output_type="pt",
    ).images
    return quantize(images)[0].permute(1, 2, 0).numpy()


def test_kiln_without_speedups_makes_exactly_what_stock_diffusers_makes(tmp_path, tiny_weights, registry):
    source = gradient_image(80, 48)  # already a multiple of 16: no resize on either side
    inputs = {"image_url": data_uri(png_bytes(source)), "output_format": "png", "strength": 0.8}
    plain_kiln = start_with_weights(tmp_path / "data", tiny_weights, registry, speedups=False)
    try:
        plain = run(plain_kiln, ENDPOINT, {**FAST, **inputs})
        kiln_pixels = pixels(plain_kiln, plain["images"][0])
    finally:
        plain_kiln.__exit__(None, None, None)
    expected = stock_diffusers(
        tiny_weights.store / FLUX_DEV, image=source, prompt=FAST["prompt"], steps=4, strength=0.8, seed=7
    )
    np.testing.assert_array_equal(kiln_pixels, expected)


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"acceleration": "turbo"}, "acceleration"),
        ({"output_format": "webp"}, "output_format"),
        ({"num_images": 5}, "num_images"),
        ({"image_url": data_uri(b"not an image")}, "image_url"),
    ],
)
def test_bad_inputs_are_422_naming_the_field(client, inputs, field):
    response = client.post(f"/run/{ENDPOINT}", json={**FAST, **inputs})
    assert response.status_code == 422, response.text
    assert ["body", field] in [error["loc"] for error in response.json()["detail"]]


def test_without_weights_the_endpoint_names_the_pull_command(tmp_path, tiny_weights, registry):
    empty = TinyWeights(store=tmp_path / "no-weights", lock=tiny_weights.lock)
    client = start_with_weights(tmp_path / "data", empty, registry)
    try:
        refused = client.post(f"/queue/{ENDPOINT}", json=FAST)
        assert refused.status_code == 501
        assert f"`kiln weights pull {FLUX_DEV}`" in refused.json()["detail"]
        steps = client.post("/queue/kiln-test/steps", json={"steps": 1}).json()
        assert wait_completed(client, steps["status_url"]).get("error") is None
    finally:
        client.__exit__(None, None, None)


def test_the_denoising_steps_are_the_ones_diffusers_runs():
    """Kiln floored n x strength where diffusers rounds up: provenance under-reported a step and
    requests diffusers runs (1 step at strength 0.5) were refused with 422. The oracle is diffusers'
    own `get_timesteps` on a real scheduler."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline

    from pipelines.flux_image_to_image import img2img_steps

    scheduler = FlowMatchEulerDiscreteScheduler()
    for steps in (1, 2, 7, 10, 28, 40, 50):
        scheduler.set_timesteps(steps)
        for strength in (0.01, 0.05, 0.3, 0.33, 0.5, 0.55, 0.95, 1.0):
            _, expected = FluxImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), steps, strength, "cpu")
            assert img2img_steps(steps, strength) == expected, (steps, strength)
    assert min(img2img_steps(steps, 0.01) for steps in range(1, 51)) == 1  # no valid request runs 0 steps
