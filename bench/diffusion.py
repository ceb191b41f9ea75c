"""Diffusion speed on a GPU: Kiln's diffusion endpoints vs stock diffusers, full-size, random weights.

The PixArt-Sigma XL 1024 architecture (transformer, T5 v1.1 XXL encoder, SDXL VAE) and fal's safety
checker (ViT-base) are built at full size with random weights: speed does not depend on the values.
They are saved as a weights store with its own lock, and Kiln serves them as it serves real weights
(verification, `from_pretrained`, the worker pool, speed-ups on), at fal's defaults: 1024x1024,
35 DPM-Solver steps, guidance 4.5, safety checker on. Stock diffusers runs the same folder with its
default settings and the same request arguments, in the same process after Kiln has stopped.

Reported per pipeline: seconds per image (Kiln: the worker's `predict` time; stock: the call, both
from prompt to image tensor), seconds per denoising step (from the difference between 35 and 5
steps), peak GPU memory, Kiln's speed-up over stock, and the share of the GPU's dense bf16 peak
reached in the denoising loop (transformer FLOPs per step counted with torch's FLOP counter, over
the measured step time). Every prompt differs, so Kiln's text-embedding cache saves only what it
would in service: the repeated negative prompt.

FLUX (`--model flux`): the FLUX.1 [dev] architecture (12B transformer, CLIP-L, T5 v1.1 XXL, the
16-channel VAE), saved once and locked under both the FLUX.1 [dev] and Kontext [dev] names (same
architecture). fal-ai/flux/dev/image-to-image runs at fal's defaults (1024x1024 input, 40 steps at
strength 0.95, i.e. 38 transformer passes, guidance 3.5) at each `acceleration` level, against stock
`FluxImg2ImgPipeline` with the same arguments; Kontext runs through fal-ai/step1x-edit (one 1024x1024
reference, 28 steps, guidance 3.5) against stock `FluxKontextPipeline`. Steps per second come from
40 vs 10 steps (38 vs 9 passes) and 28 vs 7. With the first-block cache (`high`) some passes are
skipped, so its share of the bf16 peak is an effective figure against the nominal passes.

    python -m bench.diffusion [--model pixart|flux|all] [--repeats 3] [--work-dir DIR]

Needs a CUDA GPU; PixArt needs about 25 GB of disk and GPU memory, FLUX about 35 GB of disk and 60 GB
of GPU memory (the bf16 pipeline plus the one FP8 transformer `regular` and `high` share; see the
memory plan, `python -m bench.gpu_smoke --only memory_plan`). On a machine without CUDA it says so
and exits without measuring anything.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.common import write_result
from testkit.architectures import (
    clip_text_encoder,
    flux_transformer,
    flux_vae,
    pixart_sigma_transformer,
    sdxl_vae,
    t5_encoder,
)
from testkit.tiny_diffusion import (
    PIXART,
    SAFETY_CHECKER,
    lock_entry,
    save_pipeline_keeping_tokenizer,
    train_t5_tokenizer,
    write_lock,
)

logger = logging.getLogger("bench.diffusion")

ENDPOINT = "fal-ai/pixart-sigma"
STEPS = 35
FEW_STEPS = 5
SIZE = 1024
# dense bf16 tensor-core peaks (no sparsity), by device-name substring, most specific first
BF16_PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12), ("L40S", 362e12))
PROMPTS = [
    f"a photograph of {subject}, highly detailed, golden hour"
    for subject in ("a lighthouse", "two pirate ships in a cup of coffee", "a red fox", "a mountain lake", "a robot")
]


def bf16_peak(device_name: str) -> float | None:
    return next((flops for name, flops in BF16_PEAK_FLOPS if name in device_name), None)


def save_random_checker(store: Path) -> None:
    """fal's safety checker architecture (ViT-base, normal/nsfw) with random weights, bf16."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    checker = ViTForImageClassification(ViTConfig(id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1}))
    checker.to(torch.bfloat16).save_pretrained(store / SAFETY_CHECKER, safe_serialization=True)
    ViTImageProcessor().save_pretrained(store / SAFETY_CHECKER)


@contextlib.contextmanager
def bf16_on_gpu():
    """New modules are made in bf16 on the GPU: full-size models are never materialised in fp32 on the CPU."""
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            yield
        finally:
            torch.set_default_dtype(torch.float32)


def build_store(root: Path) -> tuple[Path, Path]:
    """Random full-size PixArt-Sigma XL 1024 and safety checker in diffusers layout, bf16, with a lock."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from transformers import T5Tokenizer

    store = root / "weights"
    folder = store / PIXART
    train_t5_tokenizer(folder / "tokenizer")
    with bf16_on_gpu():
        pipeline = PixArtSigmaPipeline(
            tokenizer=T5Tokenizer.from_pretrained(folder / "tokenizer"),
            text_encoder=t5_encoder(),
            vae=sdxl_vae(),
            transformer=pixart_sigma_transformer(),
            scheduler=DPMSolverMultistepScheduler(),
        )
    save_pipeline_keeping_tokenizer(pipeline, folder)
    save_random_checker(store)
    del pipeline
    lock = root / "weights.lock"
    write_lock(
        lock,
        {
            PIXART: lock_entry(folder, repo="bench/random-pixart-sigma-xl-2-1024"),
            SAFETY_CHECKER: lock_entry(store / SAFETY_CHECKER, repo="bench/random-nsfw-vit"),
        },
    )
    return store, lock


def measure(
    label: str, seconds: Callable[[int], float], repeats: int, steps: int, few_steps: int, difference: int
) -> dict[str, float]:
    """Runs `seconds(steps)` and `seconds(few_steps)` once each to warm up (set-up, loading, compilation),
    then `repeats` times each; the peak memory is that of the full runs. `difference`: how many more
    transformer passes a `steps` run makes than a `few_steps` one."""
    start = time.perf_counter()
    seconds(steps)
    logger.info("%s warm after %.1fs", label, time.perf_counter() - start)
    seconds(few_steps)
    torch.cuda.reset_peak_memory_stats()
    full = [seconds(steps) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated()
    few = [seconds(few_steps) for _ in range(repeats)]
    median = statistics.median(full)
    return {
        "seconds_per_image": round(median, 4),
        "seconds_per_step": round((median - statistics.median(few)) / difference, 5),
        "peak_memory_gb": round(peak / 1e9, 2),
        "runs": [round(value, 4) for value in full],
    }


def kiln_predict_seconds(client, endpoint: str, body: dict) -> float:
    """One request through the HTTP API and the worker pool; the worker's `predict` time."""
    from testkit.servers import wait_completed

    queued = client.post(f"/queue/{endpoint}", json=body).json()
    status = wait_completed(client, queued["status_url"], timeout=3600)
    if status.get("error"):
        raise RuntimeError(f"Kiln failed on {endpoint}: {status['error']}")
    return client.get(queued["response_url"]).json()["provenance"]["timings"]["predict"]


def stock_seconds(pipe, prompts: Iterator[str], **arguments) -> Callable[[int], float]:
    """Times one stock pipeline call at a step count, from prompt to image tensor, each with the next prompt."""

    def seconds(steps: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(
            prompt=next(prompts),
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            **arguments,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return seconds


def measure_kiln(store: Path, lock: Path, data_dir: Path, repeats: int) -> dict[str, float]:
    """Kiln as served: requests through the HTTP API and the worker pool, timed by the worker."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import Settings
    from server.registry import Registry

    settings = Settings(data_dir=data_dir, weights_dir=store, weights_lock=lock, device="cuda")
    prompts = iter(PROMPTS * (repeats + 4))
    with TestClient(create_app(settings, Registry.discover(Settings.pipeline_modules))) as client:

        def predict_seconds(steps: int) -> float:
            body = {"prompt": next(prompts), "num_inference_steps": steps, "seed": 0, "image_size": "square_hd"}
            return kiln_predict_seconds(client, ENDPOINT, body)

        return measure("Kiln", predict_seconds, repeats, STEPS, FEW_STEPS, STEPS - FEW_STEPS)


def measure_stock(store: Path, repeats: int) -> tuple[dict[str, float], float]:
    """diffusers' PixArtSigmaPipeline as it ships, bf16 on the GPU; also counts the transformer's FLOPs."""
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(store / PIXART, dtype=torch.bfloat16, use_safetensors=True).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    prompts = iter(PROMPTS * (repeats + 4))
    seconds = stock_seconds(pipe, prompts, negative_prompt="", guidance_scale=4.5, width=SIZE, height=SIZE)
    return measure("stock", seconds, repeats, STEPS, FEW_STEPS, STEPS - FEW_STEPS), transformer_flops_per_step(pipe)


def transformer_flops_per_step(pipe) -> float:
    """FLOPs of one denoising step at 1024x1024: the transformer on the CFG batch of 2, 300 T5 tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    transformer = pipe.transformer
    latent = SIZE // pipe.vae_scale_factor
    inputs = {
        "hidden_states": torch.randn(2, 4, latent, latent, device="cuda", dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(2, 300, 4096, device="cuda", dtype=torch.bfloat16),
        "encoder_attention_mask": torch.ones(2, 300, device="cuda", dtype=torch.bfloat16),
        "timestep": torch.tensor([999, 999], device="cuda"),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        transformer(**inputs, return_dict=False)
    return float(counter.get_total_flops())


# -- FLUX.1 [dev] image-to-image and FLUX.1 Kontext [dev] ------------------------------------------

FLUX_ENDPOINT = "fal-ai/flux/dev/image-to-image"
# Kontext [dev] with one reference, as the editing endpoints run it; this one takes a step count
KONTEXT_ENDPOINT = "fal-ai/step1x-edit"
FLUX_STEPS, FLUX_FEW_STEPS, FLUX_STRENGTH = 40, 10, 0.95  # fal's defaults; 38 and 9 transformer passes
FLUX_PASSES_DIFFERENCE = int(FLUX_STEPS * FLUX_STRENGTH) - int(FLUX_FEW_STEPS * FLUX_STRENGTH)
KONTEXT_STEPS, KONTEXT_FEW_STEPS, KONTEXT_GUIDANCE = 28, 7, 3.5
ACCELERATION_LEVELS = ("none", "regular", "high")


def build_flux_store(root: Path) -> tuple[Path, Path]:
    """Random full-size FLUX.1 [dev] (12B transformer, CLIP-L, T5 v1.1 XXL, the 16-channel VAE) in the
    diffusers layout, bf16, under both lock names: the Kontext [dev] architecture is the same, so its
    folder hard-links the same files and only model_index.json names the other pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5Tokenizer

    from testkit.tiny_flux import (
        FLUX_DEV,
        FLUX_KONTEXT,
        SCHEDULER_CONFIG,
        clip_tokenizer,
    )

    store = root / "weights"
    folder = store / FLUX_DEV
    train_t5_tokenizer(folder / "tokenizer_2")
    with bf16_on_gpu():
        pipeline = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
            vae=flux_vae(),
            text_encoder=clip_text_encoder(),
            tokenizer=clip_tokenizer(),
            text_encoder_2=t5_encoder(),
            tokenizer_2=T5Tokenizer.from_pretrained(folder / "tokenizer_2"),
            transformer=flux_transformer(),
        )
    pipeline.save_pretrained(folder, safe_serialization=True)
    del pipeline
    kontext = store / FLUX_KONTEXT
    for path in folder.rglob("*"):
        if path.is_file() and path.name != "model_index.json":
            (kontext / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, kontext / path.relative_to(folder))
    index = json.loads((folder / "model_index.json").read_text())
    (kontext / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxKontextPipeline"}, indent=2))
    save_random_checker(store)
    lock = root / "weights.lock"
    write_lock(
        lock,
        {
            FLUX_DEV: lock_entry(folder, repo="bench/random-flux-1-dev"),
            FLUX_KONTEXT: lock_entry(kontext, repo="bench/random-flux-1-kontext-dev"),
            SAFETY_CHECKER: lock_entry(store / SAFETY_CHECKER, repo="bench/random-nsfw-vit"),
        },
    )
    return store, lock


def random_image_uri(size: int = SIZE) -> str:
    """A noise PNG as a data URI (the input's content does not change the work)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def measure_kiln_flux(store: Path, lock: Path, data_dir: Path, repeats: int) -> dict[str, dict]:
    """Kiln's image-to-image at each acceleration level and Kontext editing, fal's defaults, 1024²."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import Settings
    from server.registry import Registry

    settings = Settings(data_dir=data_dir, weights_dir=store, weights_lock=lock, device="cuda")
    prompts = iter(PROMPTS * (len(ACCELERATION_LEVELS) + 1) * (2 * repeats + 2))
    image = random_image_uri()
    results = {}
    with TestClient(create_app(settings, Registry.discover(Settings.pipeline_modules))) as client:

        def img2img(level: str, steps: int) -> float:
            body = {"image_url": image, "prompt": next(prompts), "num_inference_steps": steps, "seed": 0}
            return kiln_predict_seconds(client, FLUX_ENDPOINT, {**body, "acceleration": level})

        for level in ACCELERATION_LEVELS:
            seconds = functools.partial(img2img, level)
            label = f"Kiln image-to-image {level}"
            results[f"image_to_image_{level}"] = measure(
                label, seconds, repeats, FLUX_STEPS, FLUX_FEW_STEPS, FLUX_PASSES_DIFFERENCE
            )

    # a fresh server, so FLUX.1 [dev] and its accelerated copies are not in memory beside Kontext
    with TestClient(create_app(settings, Registry.discover(Settings.pipeline_modules))) as client:

        def kontext(steps: int) -> float:
            body = {"image_url": image, "prompt": next(prompts), "num_inference_steps": steps, "seed": 0}
            return kiln_predict_seconds(client, KONTEXT_ENDPOINT, {**body, "guidance_scale": KONTEXT_GUIDANCE})

        difference = KONTEXT_STEPS - KONTEXT_FEW_STEPS
        results["kontext"] = measure("Kiln Kontext", kontext, repeats, KONTEXT_STEPS, KONTEXT_FEW_STEPS, difference)
    return results


def measure_stock_flux(store: Path, repeats: int) -> tuple[dict[str, dict], dict[str, float]]:
    """diffusers' FluxImg2ImgPipeline and FluxKontextPipeline as they ship, bf16 on the GPU, called with
    the same request arguments; also the transformer's FLOPs per step for each."""
    from diffusers import FluxImg2ImgPipeline, FluxKontextPipeline
    from PIL import Image

    from testkit.tiny_flux import FLUX_DEV, FLUX_KONTEXT

    image = Image.new("RGB", (SIZE, SIZE), (128, 96, 64))
    prompts = iter(PROMPTS * (4 * repeats + 4))
    results, flops = {}, {}
    runs = (
        (
            FluxImg2ImgPipeline,
            FLUX_DEV,
            "image_to_image",
            {"strength": FLUX_STRENGTH, "height": SIZE, "width": SIZE},
            (FLUX_STEPS, FLUX_FEW_STEPS),
            FLUX_PASSES_DIFFERENCE,
            1,
        ),
        (
            FluxKontextPipeline,
            FLUX_KONTEXT,
            "kontext",
            {},
            (KONTEXT_STEPS, KONTEXT_FEW_STEPS),
            KONTEXT_STEPS - KONTEXT_FEW_STEPS,
            2,
        ),
    )
    for pipeline_class, model, name, arguments, (steps, few_steps), difference, image_sequences in runs:
        pipe = pipeline_class.from_pretrained(store / model, dtype=torch.bfloat16, use_safetensors=True).to("cuda")
        pipe.set_progress_bar_config(disable=True)

        seconds = stock_seconds(pipe, prompts, image=image, guidance_scale=3.5, **arguments)
        results[name] = measure(f"stock {name}", seconds, repeats, steps, few_steps, difference)
        flops[name] = flux_flops_per_step(pipe.transformer, image_sequences)
        pipe = None  # freed before the next pipeline loads
        gc.collect()
        torch.cuda.empty_cache()
    return results, flops


def flux_flops_per_step(transformer, image_sequences: int) -> float:
    """FLOPs of one FLUX transformer pass at 1024x1024: 4096 image tokens per image sequence (the one
    generated, plus Kontext's reference), 512 T5 tokens, batch 1 (guidance is distilled: one pass)."""
    from torch.utils.flop_counter import FlopCounterMode

    tokens = (SIZE // 16) ** 2 * image_sequences
    options = {"device": "cuda", "dtype": torch.bfloat16}
    image_ids = torch.zeros(tokens, 3, **options)
    inputs = {
        "hidden_states": torch.randn(1, tokens, 64, **options),
        "encoder_hidden_states": torch.randn(1, 512, 4096, **options),
        "pooled_projections": torch.randn(1, 768, **options),
        "timestep": torch.tensor([1.0], **options),
        "guidance": torch.tensor([3.5], **options),
        "txt_ids": torch.zeros(512, 3, **options),
        "img_ids": image_ids,
    }
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        transformer(**inputs, return_dict=False)
    return float(counter.get_total_flops())


def share_of_peak(flops_per_step: float, result: dict, peak: float | None) -> float | None:
    """Transformer FLOPs per nominal step over the measured step time, as a share of the bf16 peak.
    With the first-block cache some passes are skipped, so the share it shows is an effective one."""
    if not peak or result["seconds_per_step"] <= 0:
        return None
    return round(flops_per_step / result["seconds_per_step"] / peak, 3)


def bench_flux(root: Path, repeats: int) -> list[Path]:
    start = time.perf_counter()
    store, lock = build_flux_store(root)
    logger.info("random full-size FLUX weights written in %.0fs", time.perf_counter() - start)
    kiln = measure_kiln_flux(store, lock, root / "data", repeats)
    gc.collect()
    torch.cuda.empty_cache()
    stock, flops = measure_stock_flux(store, repeats)
    peak = bf16_peak(torch.cuda.get_device_name(0))
    image_to_image = {
        "model": "FLUX.1 [dev] architecture, random weights",
        "settings": {"size": f"{SIZE}x{SIZE}", "steps": FLUX_STEPS, "strength": FLUX_STRENGTH, "guidance_scale": 3.5},
        "stock_diffusers": {
            **stock["image_to_image"],
            "share_of_bf16_peak_in_loop": share_of_peak(flops["image_to_image"], stock["image_to_image"], peak),
        },
        "transformer_tflop_per_step": round(flops["image_to_image"] / 1e12, 2),
        "bf16_peak_tflops_assumed": peak and peak / 1e12,
    }
    for level in ACCELERATION_LEVELS:
        result = kiln[f"image_to_image_{level}"]
        image_to_image[f"kiln_{level}"] = {
            **result,
            "share_of_bf16_peak_in_loop": share_of_peak(flops["image_to_image"], result, peak),
            "speedup_over_stock": round(stock["image_to_image"]["seconds_per_image"] / result["seconds_per_image"], 3),
        }
    kontext = {
        "model": "FLUX.1 Kontext [dev] architecture, random weights",
        "settings": {
            "size": f"{SIZE}x{SIZE} plus a {SIZE}x{SIZE} reference",
            "steps": KONTEXT_STEPS,
            "guidance_scale": KONTEXT_GUIDANCE,
        },
        "kiln": {
            **kiln["kontext"],
            "share_of_bf16_peak_in_loop": share_of_peak(flops["kontext"], kiln["kontext"], peak),
        },
        "stock_diffusers": {
            **stock["kontext"],
            "share_of_bf16_peak_in_loop": share_of_peak(flops["kontext"], stock["kontext"], peak),
        },
        "speedup_over_stock": round(stock["kontext"]["seconds_per_image"] / kiln["kontext"]["seconds_per_image"], 3),
        "transformer_tflop_per_step": round(flops["kontext"] / 1e12, 2),
        "bf16_peak_tflops_assumed": peak and peak / 1e12,
    }
    return [write_result("diffusion-flux-image-to-image", image_to_image), write_result("diffusion-kontext", kontext)]


def bench_pixart(root: Path, repeats: int) -> list[Path]:
    start = time.perf_counter()
    store, lock = build_store(root)
    logger.info("random full-size weights written in %.0fs", time.perf_counter() - start)
    kiln = measure_kiln(store, lock, root / "data", repeats)
    gc.collect()
    torch.cuda.empty_cache()
    stock, flops_per_step = measure_stock(store, repeats)

    peak = bf16_peak(torch.cuda.get_device_name(0))
    for result in (kiln, stock):
        result["share_of_bf16_peak_in_loop"] = share_of_peak(flops_per_step, result, peak)
    numbers = {
        "model": "PixArt-Sigma XL 1024 architecture, random weights",
        "settings": {"size": f"{SIZE}x{SIZE}", "steps": STEPS, "scheduler": "DPM-SOLVER", "guidance_scale": 4.5},
        "kiln": kiln,
        "stock_diffusers": stock,
        "speedup_over_stock": round(stock["seconds_per_image"] / kiln["seconds_per_image"], 3),
        "transformer_tflop_per_step": round(flops_per_step / 1e12, 2),
        "bf16_peak_tflops_assumed": peak and peak / 1e12,
    }
    return [write_result("diffusion", numbers)]


BENCHES = {"pixart": bench_pixart, "flux": bench_flux}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="measured requests per setting (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, help="where to write the random weights (default: a temporary folder)")
    parser.add_argument(
        "--model", choices=[*BENCHES, "all"], default="all", help="which models to measure (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not torch.cuda.is_available():
        print(
            "bench.diffusion measures GPU speed and needs CUDA; none is available here, nothing was measured.",
            file=sys.stderr,
        )
        return 0

    for name in BENCHES if args.model == "all" else [args.model]:
        # one model's random weights on disk at a time
        with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
            for path in BENCHES[name](Path(work), args.repeats):
                print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
