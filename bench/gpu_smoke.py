"""GPU smoke checks: every CUDA-only path of Kiln's diffusion endpoints, in one short run.

    python -m bench.gpu_smoke [--work-dir DIR] [--only NAME[,NAME...]] [--skip-full-size]

Prints one JSON line per check, `{"check", "status": "ok" | "failed" | "skipped", "seconds", ...}`,
then a summary line; exits 1 when a check failed, else 0. The endpoints run on tiny random-weight
models of the real classes (testkit/), saved and locked as real weights are and set up through the
worker's `PipelineCache`, so each check drives the code a request drives. On a machine without CUDA
the checks that need it are skipped, each by name, and the rest run on the CPU.

Checks (the `cuda_` ones need CUDA):

- `fused_qkv_parameters`: FLUX.1 and PixArt-Sigma at full size on the meta device: parameters
  unfused, after diffusers' `fuse_qkv_projections` (which keeps the q/k/v copies), after Kiln's.
- `memory_plan`: each endpoint's planned device memory from the full-size architectures (meta device,
  bf16), the numbers of the README's host-requirements table.
- `tiny_endpoints`: PixArt, FLUX image-to-image at each acceleration level and Kontext with three
  references, set up and run on the device (bf16, the attention backend, compile with warm-up, FP8
  and the first-block cache where the device has them), with the safety checker on the device.
- `out_of_memory_recovery`: a request that runs out of memory (simulated), then the worker's
  recovery: other models evicted by group, the endpoint's FP8 copy dropped, the next request runs.
- `cuda_attention_backend`: the backend chosen for FLUX, against native SDPA on the same inputs.
- `cuda_compile_warm_up`: graphs compiled at set-up, none more for a size not warmed (dynamic shapes),
  compile time, and the compile cache written under the data dir.
- `cuda_fp8`: torchao FP8 on the FLUX transformer leaves the global inductor settings alone; its
  output against bf16.
- `cuda_first_block_cache`: `regular` and `high` alternating on the shared FP8 module: recompiles.
- `cuda_out_of_memory`: a real CUDA out-of-memory (memory fraction capped) and the recovery.
- `cuda_memory_plan_vs_peak`: full-size FLUX transformer step at 1024² and VAE decode, measured
  peak against the plan's estimates (uninitialised weights: `to_empty`, nothing is written to disk).

On an H200 (2026-11-30) the first two checks took 8 s and the run had not finished after 210 s, most of it
`max-autotune` compiling the tiny endpoints: give it at least five minutes, or `--only` a few checks at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, write_result

logger = logging.getLogger("bench.gpu_smoke")

GIB = 1024**3
TINY_SIZE = (64, 48)


# -- the context the checks share --------------------------------------------------------------------


@dataclass
class Smoke:
    work: Path
    device: torch.device
    full_size: bool = True
    _stores: dict[str, Any] = field(default_factory=dict)
    _cache: Any = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def store(self, kind: str):
        """A weights store of tiny models: `pixart` or `flux` (FLUX.1 [dev] and Kontext)."""
        from server.weights import WeightsLock, WeightsStore
        from testkit.tiny_diffusion import build_pixart_store
        from testkit.tiny_flux import build_flux_store

        if kind not in self._stores:
            build = {"pixart": build_pixart_store, "flux": build_flux_store}[kind]
            tiny = build(self.work / kind)
            self._stores[kind] = WeightsStore(tiny.store, WeightsLock.load(tiny.lock))
        return self._stores[kind]

    def cache(self, kind: str = "flux"):
        """A worker's pipeline cache on the device, over the tiny FLUX store (one per run)."""
        from pipelines.contract import PipelineSettings
        from server.pipeline_cache import PipelineCache

        if self._cache is None:
            self._cache = PipelineCache(self.device, self.store(kind), PipelineSettings(speedups=True))
        return self._cache


def generate(pipeline, generation) -> torch.Tensor:
    from pipelines.diffusion import WARM_UP

    with torch.inference_mode():
        return pipeline.generate(generation, [torch.Generator("cpu").manual_seed(0)], [WARM_UP])


def synchronize(smoke: Smoke) -> None:
    if smoke.cuda:
        torch.cuda.synchronize(smoke.device)


def unique_graphs() -> int:
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# -- full-size architectures on the meta device ------------------------------------------------------


def check_fused_qkv_parameters(smoke: Smoke) -> dict[str, Any]:
    from pipelines.diffusion import Speedups
    from testkit.architectures import flux_transformer, pixart_sigma_transformer

    def parameters(module: torch.nn.Module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    found = {}
    for name, build in (("flux", flux_transformer), ("pixart_sigma", pixart_sigma_transformer)):
        with torch.device("meta"):
            stock, kiln = build(), build()
        unfused = parameters(stock)
        stock.fuse_qkv_projections()
        Speedups(fuse_qkv=True).apply(kiln)
        found[name] = {"unfused": unfused, "diffusers_fused": parameters(stock), "kiln_fused": parameters(kiln)}
        if found[name]["kiln_fused"] != unfused:
            raise AssertionError(f"{name}: fused QKV changed the parameter count: {found[name]}")
    return found


def check_memory_plan(smoke: Smoke) -> dict[str, Any]:
    from testkit.memory_plan import memory_plan_table

    return {"bf16": memory_plan_table(2)}


# -- the endpoints on tiny models ----------------------------------------------------------------------


def check_tiny_endpoints(smoke: Smoke) -> dict[str, Any]:
    from pipelines.flux_image_to_image import FluxImageToImagePipeline
    from pipelines.pixart_sigma import PixArtSigmaPipeline
    from pipelines.step1x_edit import Step1XEditPipeline

    found: dict[str, Any] = {}
    pixart_cache = type(smoke.cache())(smoke.device, smoke.store("pixart"), smoke.cache()._settings)
    width, height = TINY_SIZE
    for name, cache, cls in (
        ("pixart_sigma", pixart_cache, PixArtSigmaPipeline),
        ("flux_image_to_image", smoke.cache(), FluxImageToImagePipeline),
        ("kontext", smoke.cache(), Step1XEditPipeline),
    ):
        start = time.perf_counter()
        pipeline = cache.get(cls)
        setup = time.perf_counter() - start
        found[name] = {
            "setup_seconds": round(setup, 3),
            "dtype": str(pipeline.dtype),
            "speedups": pipeline.applied_speedups,
            "compile": dict(pipeline.loaded.compile_state),
        }
    img2img = smoke.cache().get(FluxImageToImagePipeline)
    levels = {}
    for level in ("none", "regular", "high"):
        generation = dataclasses.replace(img2img.warm_up_generation(width, height), acceleration=level)
        start = time.perf_counter()
        images = generate(img2img, generation)
        synchronize(smoke)
        levels[level] = {
            "seconds": round(time.perf_counter() - start, 3),
            "fp8": img2img.effective_settings(level).fp8,
            "finite": bool(torch.isfinite(images).all()),
        }
    found["flux_image_to_image"]["levels"] = levels
    found["flux_image_to_image"]["transformers_loaded"] = len(img2img.denoisers)
    kontext = smoke.cache().get(Step1XEditPipeline)
    base = kontext.warm_up_generation(width, height)
    references = tuple(
        dataclasses.replace(base.references[0], pixels=torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        for w, h in ((64, 48), (32, 32), (24, 48))
    )
    images = generate(kontext, dataclasses.replace(base, references=references))
    found["kontext"]["three_references"] = {"shape": list(images.shape), "finite": bool(torch.isfinite(images).all())}
    pixels = (images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    found["safety_checker"] = {
        "device": str(kontext.safety_checker.model.device),
        "dtype": str(kontext.safety_checker.model.dtype),
        "flags": kontext.safety_checker.flags(list(pixels)),
        "shared_by_endpoints": kontext.safety_checker is img2img.safety_checker,
    }
    return found


def check_out_of_memory_recovery(smoke: Smoke) -> dict[str, Any]:
    """A simulated out-of-memory in a FLUX image-to-image request, and the worker's recovery."""
    from pipelines.diffusion import WARM_UP
    from pipelines.flux_image_to_image import FluxImageToImagePipeline
    from pipelines.step1x_edit import Step1XEditPipeline

    cache = smoke.cache()
    cache.get(Step1XEditPipeline)
    img2img = cache.get(FluxImageToImagePipeline)
    generation = dataclasses.replace(img2img.warm_up_generation(*TINY_SIZE), acceleration="regular")
    generate(img2img, generation)

    def fail_once(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated by bench.gpu_smoke)")

    denoiser = img2img.denoisers[img2img.effective_settings("regular").fp8]
    handle = denoiser.register_forward_pre_hook(fail_once, with_kwargs=True)
    try:
        img2img.predict([generation], [WARM_UP])
        raise AssertionError("the simulated out-of-memory did not reach the worker")
    except torch.OutOfMemoryError:
        pass
    finally:
        handle.remove()
    del denoiser
    transformers_before = len(img2img.denoisers)
    cache.release_memory(keep=img2img)
    found = {
        "warm_after_recovery": cache.warm(),
        "transformers_before": transformers_before,
        "transformers_after": len(img2img.denoisers),
    }
    generate(img2img, generation)
    found["next_request_ran"] = True
    if Step1XEditPipeline.endpoint_id in cache.warm():
        raise AssertionError("the other model was not evicted")
    return found


# -- CUDA only ----------------------------------------------------------------------------------------


def check_cuda_attention_backend(smoke: Smoke) -> dict[str, Any]:
    from diffusers import FluxTransformer2DModel

    from pipelines.diffusion import Speedups, set_attention_backend

    folder = smoke.store("flux").folder("flux-1-dev") / "transformer"
    model = FluxTransformer2DModel.from_pretrained(folder, dtype=torch.bfloat16).to(smoke.device).eval()
    inputs = flux_inputs(model, smoke.device, tokens=256)
    with torch.inference_mode():
        native = model(**inputs, return_dict=False)[0]
        chosen = set_attention_backend(model, Speedups.for_device(smoke.device, True).attention_backends)
        accelerated = model(**inputs, return_dict=False)[0]
    return {"backend": chosen, "max_difference_vs_native": float((accelerated - native).abs().max())}


def flux_inputs(model, device: torch.device, *, tokens: int, batch: int = 1) -> dict[str, torch.Tensor]:
    config = model.config
    options = {"device": device, "dtype": next(model.parameters()).dtype}
    return {
        "hidden_states": torch.randn(batch, tokens, config.in_channels, **options),
        "encoder_hidden_states": torch.randn(batch, 32, config.joint_attention_dim, **options),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, **options),
        "timestep": torch.full((batch,), 0.5, **options),
        "guidance": torch.full((batch,), 3.5, **options) if config.guidance_embeds else None,
        "txt_ids": torch.zeros(32, 3, **options),
        "img_ids": torch.zeros(tokens, 3, **options),
    }


def check_cuda_compile_warm_up(smoke: Smoke) -> dict[str, Any]:
    from pipelines.flux_image_to_image import FluxImageToImagePipeline

    img2img = smoke.cache().get(FluxImageToImagePipeline)
    state = dict(img2img.loaded.compile_state)
    before = unique_graphs()
    start = time.perf_counter()
    generate(img2img, img2img.warm_up_generation(896, 640))  # a size not warmed
    synchronize(smoke)
    cache_dir = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
    found = {
        "warm_up": state,
        "new_size_seconds": round(time.perf_counter() - start, 3),
        "graphs_compiled_for_a_new_size": unique_graphs() - before,
        "inductor_cache_dir": str(cache_dir),
        "inductor_cache_files": sum(1 for _ in cache_dir.rglob("*")) if cache_dir.is_dir() else 0,
    }
    if not state.get("compiled") or found["inductor_cache_files"] == 0:
        raise AssertionError(f"not compiled and cached: {found}")
    return found


def check_cuda_fp8(smoke: Smoke) -> dict[str, Any]:
    from diffusers import FluxTransformer2DModel

    from pipelines.diffusion import Speedups
    from pipelines.flux_image_to_image import fp8_unavailable_reason, quantize_fp8

    reason = fp8_unavailable_reason(smoke.device)
    if reason:
        return {"skipped": reason}
    import torch._inductor.config as inductor

    settings = {name: getattr(inductor, name) for name in ("coordinate_descent_tuning", "force_fuse_int_mm_with_mul")}
    folder = smoke.store("flux").folder("flux-1-dev") / "transformer"
    model = FluxTransformer2DModel.from_pretrained(folder, dtype=torch.bfloat16).to(smoke.device).eval()
    Speedups(fuse_qkv=True).apply(model)
    inputs = flux_inputs(model, smoke.device, tokens=1024)
    with torch.inference_mode():
        reference = model(**inputs, return_dict=False)[0].float()
        quantize_fp8(model)
        quantized = model(**inputs, return_dict=False)[0].float()
    after = {name: getattr(inductor, name) for name in settings}
    if after != settings:
        raise AssertionError(f"torchao changed the global inductor settings: {settings} -> {after}")
    relative = float((quantized - reference).norm() / reference.norm())
    return {"relative_error_vs_bf16": round(relative, 4), "inductor_settings_unchanged": True}


def check_cuda_first_block_cache(smoke: Smoke) -> dict[str, Any]:
    from pipelines.flux_image_to_image import FluxImageToImagePipeline

    img2img = smoke.cache().get(FluxImageToImagePipeline)
    width, height = TINY_SIZE
    generate(img2img, dataclasses.replace(img2img.warm_up_generation(width, height), acceleration="high"))
    before = unique_graphs()
    seconds = []
    for level in ("regular", "high", "regular", "high"):
        start = time.perf_counter()
        generate(img2img, dataclasses.replace(img2img.warm_up_generation(width, height), acceleration=level))
        synchronize(smoke)
        seconds.append(round(time.perf_counter() - start, 3))
    return {
        "graphs_compiled_alternating_levels": unique_graphs() - before,
        "seconds": seconds,
        "transformers_loaded": len(img2img.denoisers),
    }


def check_cuda_out_of_memory(smoke: Smoke) -> dict[str, Any]:
    from pipelines.flux_image_to_image import FluxImageToImagePipeline

    cache = smoke.cache()
    img2img = cache.get(FluxImageToImagePipeline)
    generation = img2img.warm_up_generation(2048, 2048)
    torch.cuda.empty_cache()
    limit = (torch.cuda.memory_allocated(smoke.device) + 64 * 1024**2) / torch.cuda.get_device_properties(
        smoke.device
    ).total_memory
    torch.cuda.set_per_process_memory_fraction(limit, smoke.device)
    try:
        try:
            from pipelines.diffusion import WARM_UP

            img2img.predict([generation], [WARM_UP])
            raise AssertionError("no out-of-memory at a capped memory fraction")
        except torch.OutOfMemoryError as error:
            message = str(error).splitlines()[0]
        cache.release_memory(keep=img2img)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, smoke.device)
    generate(img2img, img2img.warm_up_generation(*TINY_SIZE))
    return {"error": message, "recovered": True, "allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3)}


def check_cuda_memory_plan_vs_peak(smoke: Smoke) -> dict[str, Any]:
    """The plan's activation terms per image against one full-size FLUX step and VAE decode."""
    from pipelines.diffusion import TRANSFORMER_LIVE_WIDTHS, VAE_LIVE_CHANNELS
    from testkit.architectures import FLUX_TRANSFORMER, flux_transformer, flux_vae

    if not smoke.full_size:
        return {"skipped": "--skip-full-size"}
    found = {}
    with torch.device("meta"):
        transformer = flux_transformer()
    transformer = transformer.to_empty(device=smoke.device).to(torch.bfloat16).eval()
    weights = torch.cuda.memory_allocated(smoke.device)
    tokens, text = 4096, 512
    options = {"device": smoke.device, "dtype": torch.bfloat16}
    inputs = {
        "hidden_states": torch.randn(1, tokens, 64, **options),
        "encoder_hidden_states": torch.randn(1, text, 4096, **options),
        "pooled_projections": torch.randn(1, 768, **options),
        "timestep": torch.tensor([0.5], **options),
        "guidance": torch.tensor([3.5], **options),
        "txt_ids": torch.zeros(text, 3, **options),
        "img_ids": torch.zeros(tokens, 3, **options),
    }
    torch.cuda.reset_peak_memory_stats(smoke.device)
    with torch.inference_mode():
        transformer(**inputs, return_dict=False)
    hidden = FLUX_TRANSFORMER["num_attention_heads"] * FLUX_TRANSFORMER["attention_head_dim"]
    found["transformer_step_1024"] = {
        "weights_gib": round(weights / GIB, 2),
        "measured_activations_gib": round((torch.cuda.max_memory_allocated(smoke.device) - weights) / GIB, 3),
        "planned_activations_gib": round((tokens + text) * hidden * TRANSFORMER_LIVE_WIDTHS * 2 / GIB, 3),
    }
    del transformer, inputs
    gc.collect()
    torch.cuda.empty_cache()
    with torch.device("meta"):
        vae = flux_vae()
    vae = vae.to_empty(device=smoke.device).to(torch.bfloat16).eval()
    weights = torch.cuda.memory_allocated(smoke.device)
    latents = torch.randn(1, 16, 128, 128, device=smoke.device, dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats(smoke.device)
    with torch.inference_mode():
        vae.decode(latents, return_dict=False)
    found["vae_decode_1024"] = {
        "measured_activations_gib": round((torch.cuda.max_memory_allocated(smoke.device) - weights) / GIB, 3),
        "planned_activations_gib": round(1024 * 1024 * 128 * VAE_LIVE_CHANNELS * 2 / GIB, 3),
    }
    del vae, latents
    gc.collect()
    torch.cuda.empty_cache()
    return found


@dataclass(frozen=True)
class Check:
    name: str
    needs_cuda: bool
    run: Callable[[Smoke], dict[str, Any]]


CHECKS = (
    Check("fused_qkv_parameters", False, check_fused_qkv_parameters),
    Check("memory_plan", False, check_memory_plan),
    Check("tiny_endpoints", False, check_tiny_endpoints),
    Check("out_of_memory_recovery", False, check_out_of_memory_recovery),
    Check("cuda_attention_backend", True, check_cuda_attention_backend),
    Check("cuda_compile_warm_up", True, check_cuda_compile_warm_up),
    Check("cuda_fp8", True, check_cuda_fp8),
    Check("cuda_first_block_cache", True, check_cuda_first_block_cache),
    Check("cuda_out_of_memory", True, check_cuda_out_of_memory),
    Check("cuda_memory_plan_vs_peak", True, check_cuda_memory_plan_vs_peak),
)


def run_check(check: Check, smoke: Smoke) -> dict[str, Any]:
    if check.needs_cuda and not smoke.cuda:
        return {"check": check.name, "status": "skipped", "reason": "needs CUDA, which this machine does not have"}
    start = time.perf_counter()
    try:
        details = check.run(smoke)
        status = "skipped" if set(details) == {"skipped"} else "ok"
        return {"check": check.name, "status": status, "seconds": round(time.perf_counter() - start, 3), **details}
    except Exception as error:
        return {
            "check": check.name,
            "status": "failed",
            "seconds": round(time.perf_counter() - start, 3),
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=6),
        }


def summarise(results: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    return {
        "check": "summary",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **{status: [r["check"] for r in results if r["status"] == status] for status in ("ok", "skipped", "failed")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="where the tiny weights go (default: a temporary folder)")
    parser.add_argument("--only", default="", help="comma-separated check names to run (default: all)")
    parser.add_argument("--skip-full-size", action="store_true", help="skip the full-size FLUX peak measurement")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON record goes (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = wanted - {check.name for check in CHECKS}
    if unknown:
        parser.error(f"unknown checks: {', '.join(sorted(unknown))}")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    results = []
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-gpu-smoke-")))
        from server.pipeline_cache import use_compile_cache

        use_compile_cache(work / "compile-cache")
        smoke = Smoke(work=work, device=device, full_size=not args.skip_full_size)
        path = None
        for check in CHECKS:
            if wanted and check.name not in wanted:
                continue
            result = run_check(check, smoke)
            results.append(result)
            print(json.dumps(result, default=str), flush=True)
            # after every check, so a run stopped at a time limit keeps the checks it finished
            record = {"summary": summarise(results, device), "checks": results}
            path = write_result("gpu_smoke", record, args.results, path)
        smoke._cache = None
        gc.collect()
    summary = summarise(results, device)
    print(json.dumps(summary), flush=True)
    path = write_result("gpu_smoke", {"summary": summary, "checks": results}, args.results, path)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
