"""fal-ai/pixart-sigma through the HTTP API, on tiny random-weight models of the real classes.

The models are built offline (testkit/tiny_diffusion.py), locked in a weights.lock of their
own and loaded the way real weights are: verified against the lock, then `from_pretrained` from the
store. With random weights the pictures mean nothing, so the tests check what must hold whatever the
weights: the seed's output shape, sizes, determinism, which text reached the text encoder, that
Kiln's pipeline computes what stock diffusers computes, and the refusals.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from kernels.convert import quantize
from pipelines.contract import PipelineSettings
from pipelines.diffusion import Speedups
from pipelines.pixart_sigma import (
    IMAGE_SIZE_PRESETS,
    STYLES,
    PixArtSigmaPipeline,
    apply_style,
)
from server.cli import main as kiln
from testkit.servers import wait_completed
from tests.fixtures.benchmarks import run_on_cpu
from testkit.tiny_diffusion import PIXART, TinyWeights, build_pixart_store
from tests.fixtures.apps import (
    image_bytes,
    pixels,
    result_of,
    start_with_weights,
)

pytestmark = pytest.mark.slow  # tiny diffusion models: seconds per test

ENDPOINT = "fal-ai/pixart-sigma"
SMALL = {"width": 48, "height": 40}  # generated in a 256-pixel bin, returned at this size
FAST = {"prompt": "a photo of a cat sitting on a red chair", "num_inference_steps": 2, "seed": 7}
OUTPUT_KEYS = {"images", "timings", "seed", "has_nsfw_concepts", "prompt", "provenance"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> TinyWeights:
    return build_pixart_store(tmp_path_factory.mktemp("pixart"))


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_weights, registry) -> Iterator[TestClient]:
    """One server for the module, so the pipeline is set up once and stays warm, as in production."""
    client = start_with_weights(tmp_path_factory.mktemp("data"), tiny_weights, registry)
    yield client
    client.__exit__(None, None, None)


def submit(client: TestClient, **inputs) -> dict:
    """Queues FAST updated with `inputs`; a None leaves the field out, so fal's default applies."""
    payload = {field: value for field, value in {**FAST, **inputs}.items() if value is not None}
    response = client.post(f"/queue/{ENDPOINT}", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def generate(client: TestClient, **inputs) -> dict:
    return result_of(client, submit(client, **inputs))


# -- the seed's output ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(IMAGE_SIZE_PRESETS))
def test_each_size_preset_gives_fal_output_at_that_size(client, preset):
    result = generate(client, image_size=preset, prompt="pixel art of a small blue bird")
    width, height = IMAGE_SIZE_PRESETS[preset]
    assert set(result) == OUTPUT_KEYS
    [image] = result["images"]
    assert (image["width"], image["height"], image["content_type"]) == (width, height, "image/png")
    assert pixels(client, image).shape == (height, width, 3)
    assert image["file_size"] == len(image_bytes(client, image))
    assert result["seed"] == 7 and result["has_nsfw_concepts"] == [False]
    assert result["prompt"] == "pixel art of a small blue bird"
    assert result["timings"]["inference"] > 0


def test_custom_size_and_fal_defaults(client):
    result = generate(client, image_size={"width": 200, "height": 120}, num_inference_steps=None)
    assert pixels(client, result["images"][0]).shape == (120, 200, 3)
    provenance = result["provenance"]
    assert provenance["num_inference_steps"] == 35 and provenance["guidance_scale"] == 4.5
    assert provenance["scheduler"] == {"name": "DPM-SOLVER", "class": "DPMSolverMultistepScheduler"}
    assert provenance["weights"][PIXART]["repo"] == "kiln-test/tiny-pixart-sigma"
    assert len(provenance["weights"][PIXART]["digest"]) == 64
    assert provenance["seed"] == 7 and provenance["libraries"]["diffusers"]


def test_a_missing_seed_is_drawn_and_reported(client):
    result = generate(client, seed=None, image_size=SMALL)
    assert isinstance(result["seed"], int) and result["provenance"]["seed"] == result["seed"]


def test_progress_is_logged_per_step(client):
    queued = submit(client, num_inference_steps=3, image_size=SMALL)
    wait_completed(client, queued["status_url"], timeout=60)
    logs = [line["message"] for line in client.get(queued["status_url"] + "?logs=1").json()["logs"]]
    assert [message for message in logs if message.startswith("step")] == ["step 1/3", "step 2/3", "step 3/3"]


def test_sync_mode_returns_the_image_inline(client):
    result = generate(client, sync_mode=True, image_size=SMALL)
    assert result["images"][0]["url"].startswith("data:image/png;base64,")


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["DPM-SOLVER", "SA-SOLVER"])
def test_same_seed_same_bytes_and_other_seeds_differ(client, scheduler):
    first = generate(client, scheduler=scheduler, image_size=SMALL)
    again = generate(client, scheduler=scheduler, image_size=SMALL)
    other = generate(client, scheduler=scheduler, image_size=SMALL, seed=8)
    assert image_bytes(client, first["images"][0]) == image_bytes(client, again["images"][0])
    assert not np.array_equal(pixels(client, first["images"][0]), pixels(client, other["images"][0]))
    assert first["provenance"]["scheduler"]["name"] == scheduler


def test_the_two_schedulers_differ(client):
    dpm = generate(client, scheduler="DPM-SOLVER", image_size=SMALL, num_inference_steps=3)
    sa = generate(client, scheduler="SA-SOLVER", image_size=SMALL, num_inference_steps=3)
    assert sa["provenance"]["scheduler"]["class"] == "SASolverScheduler"
    assert not np.array_equal(pixels(client, dpm["images"][0]), pixels(client, sa["images"][0]))


def test_num_images_gives_that_many_images_seeded_seed_plus_index(client):
    result = generate(client, num_images=3, image_size=SMALL)
    images = [pixels(client, image) for image in result["images"]]
    assert len(images) == 3 and result["has_nsfw_concepts"] == [False] * 3
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    second_alone = generate(client, seed=8, image_size=SMALL)
    np.testing.assert_allclose(images[1], pixels(client, second_alone["images"][0]), atol=1)


# -- styles --------------------------------------------------------------------------------------


def test_every_style_reaches_the_text_encoder(client):
    """Each style's template and negative text is what gets encoded: the provenance says which text,
    and the image differs from the unstyled one made with the same seed."""
    plain = pixels(client, generate(client, image_size=SMALL, negative_prompt="blurry")["images"][0])
    for style in STYLES:
        result = generate(client, image_size=SMALL, negative_prompt="blurry", style=style)
        positive, negative = apply_style(style, FAST["prompt"], "blurry")
        assert result["provenance"]["styled_prompt"] == positive
        assert result["provenance"]["negative_prompt"] == negative
        assert result["prompt"] == FAST["prompt"]
        styled = pixels(client, result["images"][0])
        assert np.array_equal(styled, plain) == (style == "(No style)"), style


def test_styles_are_the_pixart_apps_templates():
    assert len(STYLES) == 10
    assert apply_style("Anime", "a castle", "ugly") == (
        "anime artwork a castle . anime style, key visual, vibrant, studio anime,  highly detailed",
        "photo, deformed, black and white, realism, disfigured, low contrastugly",
    )
    assert apply_style("(No style)", "a castle", "ugly") == ("a castle", "ugly")


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"style": "Watercolor"}, "style"),
        ({"scheduler": "EULER"}, "scheduler"),
        ({"image_size": {"width": 0, "height": 512}}, "image_size"),
        ({"image_size": "huge"}, "image_size"),
        ({"num_images": 0}, "num_images"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
    ],
)
def test_bad_inputs_are_422_naming_the_field(client, inputs, field):
    response = client.post(f"/queue/{ENDPOINT}", json={**FAST, **inputs})
    assert response.status_code == 422
    assert {tuple(error["loc"][:2]) for error in response.json()["detail"]} == {("body", field)}


# -- Kiln's pipeline against stock diffusers, and the speed-ups switch ---------------------------


def stock_diffusers(
    folder: Path, *, prompt: str, negative_prompt: str, steps: int, seed: int, size: dict
) -> np.ndarray:
    """What diffusers' own PixArtSigmaPipeline makes from the same folder, with fal's arguments."""
    from diffusers import PixArtSigmaPipeline as StockPipeline

    pipe = StockPipeline.from_pretrained(folder, dtype=torch.float32, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=4.5,
        width=size["width"],
        height=size["height"],
        generator=[torch.Generator().manual_seed(seed)],
        output_type="pt",
    ).images
    return quantize(images)[0].permute(1, 2, 0).numpy()


def test_kiln_without_speedups_makes_exactly_what_stock_diffusers_makes(
    tmp_path, tiny_weights, registry, client
):
    # the module's server runs with the switch at its default, `on`: fused QKV, same maths
    fast = generate(client, image_size=SMALL, negative_prompt="blurry, ugly")
    assert fast["provenance"]["speedups"]["fused_qkv"] is True
    stock_kiln = start_with_weights(tmp_path / "data", tiny_weights, registry, speedups=False)
    try:
        plain = generate(stock_kiln, image_size=SMALL, negative_prompt="blurry, ugly")
        plain_pixels = pixels(stock_kiln, plain["images"][0])
    finally:
        stock_kiln.__exit__(None, None, None)
    assert plain["provenance"]["speedups"] == {"fused_qkv": False, "attention_backend": "native", "compiled": False}
    expected = stock_diffusers(
        tiny_weights.store / PIXART, prompt=FAST["prompt"], negative_prompt="blurry, ugly", steps=2, seed=7, size=SMALL
    )
    np.testing.assert_array_equal(plain_pixels, expected)
    difference = np.abs(pixels(client, fast["images"][0]).astype(int) - expected.astype(int))
    assert difference.max() <= 2


def test_speedups_switch_and_text_embedding_cache(tiny_weights):
    cpu = torch.device("cpu")
    assert Speedups.for_device(cpu, enabled=False) == Speedups()
    assert Speedups.for_device(cpu, enabled=True) == Speedups(fuse_qkv=True, cache_text_embeddings=True)
    cuda = Speedups.for_device(torch.device("cuda", 0), enabled=True)
    assert cuda.compile and cuda.fuse_qkv and cuda.attention_backends[-1] == "_native_cudnn"

    from server.weights import WeightsLock, WeightsStore

    store = WeightsStore(tiny_weights.store, WeightsLock.load(tiny_weights.lock))
    for switch, fused, hits in ((True, True, 1), (False, False, 0)):
        pipeline = PixArtSigmaPipeline()
        pipeline.setup(cpu, store, PipelineSettings(speedups=switch))
        attention = [module for module in pipeline.pipe.transformer.modules() if hasattr(module, "fused_projections")]
        assert attention and all(module.fused_projections == fused for module in attention)
        # the cache belongs to the loaded model, shared with the module's server: count from here, on a new text
        before = pipeline.text_embeddings.hits
        first = pipeline.encode_text(f"ugly, blurry, {switch}")
        second = pipeline.encode_text(f"ugly, blurry, {switch}")
        assert pipeline.text_embeddings.hits - before == hits
        torch.testing.assert_close(first, second, rtol=0, atol=0)


# -- safety checker, out of memory, cancel -------------------------------------------------------


def test_flagged_images_are_black_and_reported(tmp_path, registry):
    flagging = build_pixart_store(tmp_path / "flagging", checker_flags_everything=True)
    client = start_with_weights(tmp_path / "data", flagging, registry)
    try:
        checked = generate(client, image_size=SMALL, num_images=2)
        unchecked = generate(client, image_size=SMALL, enable_safety_checker=False)
        assert checked["has_nsfw_concepts"] == [True, True]
        for image in checked["images"]:
            assert pixels(client, image).shape == (40, 48, 3) and not pixels(client, image).any()
        assert unchecked["has_nsfw_concepts"] == [False] and pixels(client, unchecked["images"][0]).any()
    finally:
        client.__exit__(None, None, None)


def test_out_of_memory_fails_only_that_request(client, monkeypatch):
    from diffusers import PixArtTransformer2DModel

    real_forward = PixArtTransformer2DModel.forward
    failing = threading.Event()
    failing.set()

    def forward(self, *args, **kwargs):
        if failing.is_set():
            failing.clear()
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(PixArtTransformer2DModel, "forward", forward)
    oom = submit(client, image_size=SMALL)
    status = wait_completed(client, oom["status_url"], timeout=60)
    assert status["error_type"] == "out_of_memory"
    assert client.get(oom["response_url"]).status_code == 413
    assert generate(client, image_size=SMALL)["images"]


def test_cancel_stops_at_the_next_step(client):
    queued = submit(client, num_inference_steps=100, image_size=SMALL)
    for _ in range(2000):
        logs = client.get(queued["status_url"] + "?logs=1").json()["logs"] or []
        if any(line["message"].startswith("step") for line in logs):
            break
        time.sleep(0.01)
    assert client.put(queued["cancel_url"]).status_code == 202
    assert wait_completed(client, queued["status_url"], timeout=60)["error_type"] == "client_cancelled"
    logs = client.get(queued["status_url"] + "?logs=1").json()["logs"]
    assert len([line for line in logs if line["message"].startswith("step")]) < 100


# -- weights that are missing or do not match the lock ------------------------------------------


def test_without_weights_the_endpoint_names_the_pull_command_and_the_rest_keeps_working(
    tmp_path, tiny_weights, registry
):
    empty = TinyWeights(store=tmp_path / "no-weights", lock=tiny_weights.lock)
    client = start_with_weights(tmp_path / "data", empty, registry)
    try:
        refused = client.post(f"/queue/{ENDPOINT}", json=FAST)
        assert refused.status_code == 501
        assert f"`kiln weights pull {PIXART}`" in refused.json()["detail"]
        assert f"kiln weights pull {PIXART}" in client.get("/health").json()["endpoints"][ENDPOINT]
        steps = client.post("/queue/kiln-test/steps", json={"steps": 1}).json()
        assert wait_completed(client, steps["status_url"]).get("error") is None
    finally:
        client.__exit__(None, None, None)


def test_weights_verified_by_the_cli_load_and_a_changed_byte_is_refused(tmp_path, tiny_weights, registry):
    weights = TinyWeights(store=tmp_path / "weights", lock=tiny_weights.lock)
    shutil.copytree(tiny_weights.store, weights.store)
    arguments = ["weights", "verify", "--weights-dir", str(weights.store), "--weights-lock", str(weights.lock)]
    with pytest.raises(SystemExit) as verified:
        kiln(arguments)
    assert verified.value.code == 0

    shard = weights.store / PIXART / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))

    client = start_with_weights(tmp_path / "data", weights, registry)
    try:
        queued = client.post(f"/queue/{ENDPOINT}", json=FAST)
        if queued.status_code == 200:  # accepted before the file was rehashed: loading refuses it
            status = wait_completed(client, queued.json()["status_url"], timeout=60)
            assert status["error_type"] == "weights_unavailable"
            detail = client.get(queued.json()["response_url"]).json()["detail"]
        else:
            detail = queued.json()["detail"]
        assert "transformer/diffusion_pytorch_model.safetensors (sha256 mismatch)" in detail
        assert f"`kiln weights pull {PIXART}`" in detail
        # now that the mismatch is known, the endpoint refuses at submit
        again = client.post(f"/queue/{ENDPOINT}", json=FAST)
        assert again.status_code == 501 and "sha256 mismatch" in again.json()["detail"]
    finally:
        client.__exit__(None, None, None)
    with pytest.raises(SystemExit) as reverified:
        kiln(arguments)
    assert reverified.value.code == 1


def test_the_gpu_benchmark_says_it_needs_cuda_and_measures_nothing_on_a_cpu(tmp_path):
    """Run as a user runs it, with CUDA hidden: a clear message, exit 0, nothing written."""
    benchmark = run_on_cpu("bench.diffusion", "--work-dir", str(tmp_path), timeout=120)
    assert "needs CUDA" in benchmark.stderr
    assert not any(tmp_path.iterdir())
