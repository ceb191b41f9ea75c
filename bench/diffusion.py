"""Diffusion speed on a GPU: Kiln's fal-ai/pixart-sigma vs stock diffusers, full-size, random weights.

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

    python -m bench.diffusion [--repeats 3] [--work-dir DIR]

Needs a CUDA GPU, about 25 GB of disk and 25 GB of GPU memory; on a machine without CUDA it says so
and exits without measuring anything.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import write_result
from tests.fixtures.tiny_diffusion import PIXART, SAFETY_CHECKER, lock_entry, train_t5_tokenizer, write_lock

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


def build_store(root: Path) -> tuple[Path, Path]:
    """Random full-size PixArt-Sigma XL 1024 and safety checker in diffusers layout, bf16, with a lock."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import (
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    store = root / "weights"
    folder = store / PIXART
    train_t5_tokenizer(folder / "tokenizer")
    tokenizer_files = {path.name: path.read_bytes() for path in (folder / "tokenizer").iterdir()}
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            pipeline = PixArtSigmaPipeline(
                tokenizer=T5Tokenizer.from_pretrained(folder / "tokenizer"),
                text_encoder=T5EncoderModel(
                    T5Config(
                        vocab_size=32128,
                        d_model=4096,
                        d_ff=10240,
                        d_kv=64,
                        num_heads=64,
                        num_layers=24,
                        feed_forward_proj="gated-gelu",
                        relative_attention_num_buckets=32,
                    )
                ),
                vae=AutoencoderKL(
                    block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4,
                    latent_channels=4,
                    layers_per_block=2,
                    sample_size=1024,
                    scaling_factor=0.13025,
                ),
                transformer=PixArtTransformer2DModel(
                    sample_size=128,
                    num_layers=28,
                    patch_size=2,
                    attention_head_dim=72,
                    num_attention_heads=16,
                    caption_channels=4096,
                    cross_attention_dim=1152,
                    in_channels=4,
                    out_channels=8,
                    attention_bias=True,
                    activation_fn="gelu-approximate",
                    num_embeds_ada_norm=1000,
                    norm_type="ada_norm_single",
                    norm_elementwise_affine=False,
                    norm_eps=1e-6,
                    interpolation_scale=2,
                    use_additional_conditions=False,
                ),
                scheduler=DPMSolverMultistepScheduler(),
            )
            checker = ViTForImageClassification(
                ViTConfig(id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
            )
        finally:
            torch.set_default_dtype(torch.float32)
    pipeline.save_pretrained(folder, safe_serialization=True)
    for path in (folder / "tokenizer").iterdir():
        path.unlink()
    for name, data in tokenizer_files.items():
        (folder / "tokenizer" / name).write_bytes(data)
    checker.save_pretrained(store / SAFETY_CHECKER, safe_serialization=True)
    ViTImageProcessor().save_pretrained(store / SAFETY_CHECKER)
    del pipeline, checker
    lock = root / "weights.lock"
    write_lock(
        lock,
        {
            PIXART: lock_entry(folder, repo="bench/random-pixart-sigma-xl-2-1024", endpoints=[ENDPOINT]),
            SAFETY_CHECKER: lock_entry(store / SAFETY_CHECKER, repo="bench/random-nsfw-vit", endpoints=[ENDPOINT]),
        },
    )
    return store, lock


def measure_kiln(store: Path, lock: Path, data_dir: Path, repeats: int) -> dict[str, float]:
    """Kiln as served: requests through the HTTP API and the worker pool, timed by the worker."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import Settings
    from server.registry import Registry
    from tests.server.conftest import wait_completed

    settings = Settings(data_dir=data_dir, weights_dir=store, weights_lock=lock, device="cuda")
    prompts = iter(PROMPTS * (repeats + 4))

    def predict_seconds(client: TestClient, steps: int) -> float:
        body = {"prompt": next(prompts), "num_inference_steps": steps, "seed": 0, "image_size": "square_hd"}
        queued = client.post(f"/queue/{ENDPOINT}", json=body).json()
        status = wait_completed(client, queued["status_url"], timeout=3600)
        if status.get("error"):
            raise RuntimeError(f"Kiln failed: {status['error']}")
        return client.get(queued["response_url"]).json()["provenance"]["timings"]["predict"]

    with TestClient(create_app(settings, Registry.load())) as client:
        start = time.perf_counter()
        predict_seconds(client, STEPS)  # set-up (verification, loading) and compilation
        logger.info("Kiln warm after %.1fs", time.perf_counter() - start)
        predict_seconds(client, FEW_STEPS)
        torch.cuda.reset_peak_memory_stats()
        full = [predict_seconds(client, STEPS) for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated()
        few = [predict_seconds(client, FEW_STEPS) for _ in range(repeats)]
    return summary(full, few, peak)


def measure_stock(store: Path, repeats: int) -> tuple[dict[str, float], float]:
    """diffusers' PixArtSigmaPipeline as it ships, bf16 on the GPU; also counts the transformer's FLOPs."""
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(store / PIXART, dtype=torch.bfloat16, use_safetensors=True).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    prompts = iter(PROMPTS * (repeats + 4))

    def call_seconds(steps: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(
            prompt=next(prompts),
            negative_prompt="",
            num_inference_steps=steps,
            guidance_scale=4.5,
            width=SIZE,
            height=SIZE,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
        torch.cuda.synchronize()
        return time.perf_counter() - start

    call_seconds(STEPS)
    call_seconds(FEW_STEPS)
    torch.cuda.reset_peak_memory_stats()
    full = [call_seconds(STEPS) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated()
    few = [call_seconds(FEW_STEPS) for _ in range(repeats)]
    return summary(full, few, peak), transformer_flops_per_step(pipe)


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


def summary(full: list[float], few: list[float], peak_bytes: int) -> dict[str, float]:
    seconds = statistics.median(full)
    return {
        "seconds_per_image": round(seconds, 4),
        "seconds_per_step": round((seconds - statistics.median(few)) / (STEPS - FEW_STEPS), 5),
        "peak_memory_gb": round(peak_bytes / 1e9, 2),
        "runs": [round(value, 4) for value in full],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="measured requests per setting (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, help="where to write the random weights (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not torch.cuda.is_available():
        print(
            "bench.diffusion measures GPU speed and needs CUDA; none is available here, nothing was measured.",
            file=sys.stderr,
        )
        return 0

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        root = Path(work)
        start = time.perf_counter()
        store, lock = build_store(root)
        logger.info("random full-size weights written in %.0fs", time.perf_counter() - start)
        kiln = measure_kiln(store, lock, root / "data", args.repeats)
        gc.collect()
        torch.cuda.empty_cache()
        stock, flops_per_step = measure_stock(store, args.repeats)

    device_name = torch.cuda.get_device_name(0)
    peak = bf16_peak(device_name)
    for result in (kiln, stock):
        result["share_of_bf16_peak_in_loop"] = (
            round(flops_per_step / result["seconds_per_step"] / peak, 3)
            if peak and result["seconds_per_step"] > 0
            else None
        )
    numbers = {
        "model": "PixArt-Sigma XL 1024 architecture, random weights",
        "settings": {"size": f"{SIZE}x{SIZE}", "steps": STEPS, "scheduler": "DPM-SOLVER", "guidance_scale": 4.5},
        "kiln": kiln,
        "stock_diffusers": stock,
        "speedup_over_stock": round(stock["seconds_per_image"] / kiln["seconds_per_image"], 3),
        "transformer_tflop_per_step": round(flops_per_step / 1e12, 2),
        "bf16_peak_tflops_assumed": peak and peak / 1e12,
    }
    path = write_result("diffusion", numbers)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
