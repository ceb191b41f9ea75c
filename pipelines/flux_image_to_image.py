"""fal-ai/flux/dev/image-to-image: FLUX.1 [dev] image-to-image on diffusers' `FluxImg2ImgPipeline`.

fal's defaults are passed explicitly (diffusers' own are strength 0.6, 28 steps, guidance 7). The
image is noised to `strength` and denoised for `num_inference_steps * strength` steps, rounded up as
diffusers rounds them (38 with fal's defaults); `guidance_scale` drives FLUX.1 [dev]'s distilled guidance embedding, one transformer pass
per step. The output keeps the input's size and aspect ratio, both sides rounded to multiples of 16
and scaled down to at most 2 megapixels (FLUX.1's trained range), where diffusers would make 1024².

`acceleration` picks the transformer. One bf16 transformer serves `none` (and, where FP8 cannot run,
every level); `regular` and `high` share one FP8 copy, built on first use and kept warm (and dropped
first when a request runs out of memory); the first-block cache of `high` is a hook put on that same
module for the call and taken off after it. Their quality costs below are what published FLUX results
lead us to expect, not measured:

- `none`: the lossless set every diffusion endpoint gets (bf16, fused QKV projections, the fastest
  exact attention backend, `torch.compile`): exact up to float rounding.
- `regular`: + FP8 dynamic quantisation (torchao, e4m3, row-wise scales) of every linear layer of
  the transformer: close to `none`, fine texture can differ.
- `high`: + diffusers' first-block cache (threshold 0.12): a step whose first block's output barely
  changed reuses the previous step's residual for the rest: visible drift on detailed images.

FP8 needs CUDA with FP8 tensor cores (compute capability 8.9+) and torchao; elsewhere `regular`
runs as `none` and `high` as the cache alone. What was applied is in the result's provenance under
`acceleration`. A transformer that may carry the cache (the FP8 one; the bf16 one where FP8 cannot
run) is compiled per block without `fullgraph`, since the cache's skip decision is a data-dependent
branch; the bf16 transformer of a device with FP8 is compiled whole. torchao quantises without
touching the process's global inductor settings (`set_inductor_config=False`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field

from pipelines.contract import (
    Image,
    PipelineSettings,
    RawImage,
    RequestContext,
    Weights,
)
from pipelines.diffusion import (
    COMPILE_DYNAMIC,
    COMPILE_MODE,
    WARM_UP_STEPS,
    GeneratedImages,
    Generation,
    Speedups,
    progress_arguments,
)
from pipelines.flux import (
    GUIDANCE_DESCRIPTION,
    OUTPUT_SEED_DESCRIPTION,
    FluxDiffusionPipeline,
    OutputFormat,
    Seed,
    SyncMode,
    output_size,
    resized_rgb,
)

logger = logging.getLogger(__name__)

MAX_AREA = 2 * 1024 * 1024
FIRST_BLOCK_CACHE_THRESHOLD = 0.12
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

Acceleration = Literal["none", "regular", "high"]


class FluxImageToImageInput(BaseModel):
    image_url: str = Field(description="The URL of the image to generate an image from.")
    prompt: str = Field(description="The prompt to generate an image from.")
    strength: float = Field(
        0.95,
        ge=0.01,
        le=1.0,
        description="The strength of the initial image. Higher strength values are better for this model.",
    )
    num_inference_steps: int = Field(40, ge=1, le=50, description="The number of inference steps to perform.")
    seed: Seed = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0, description=GUIDANCE_DESCRIPTION)
    sync_mode: SyncMode = False
    num_images: int = Field(1, ge=1, le=4, description="The number of images to generate.")
    enable_safety_checker: bool = Field(True, description="If set to true, the safety checker will be enabled.")
    output_format: OutputFormat = Field("jpeg", description="The format of the generated image.")
    acceleration: Acceleration = Field(
        "none",
        description="The speed of the generation. The higher the speed, the faster the generation. Kiln: `regular` "
        "adds FP8 quantisation of the transformer, `high` also caches steps (see the endpoint's documentation).",
    )


class FluxImageToImageOutput(BaseModel):
    images: list[Image] = Field(description="The generated image files info.")
    timings: dict[str, float] = Field(description="The timings of the different steps of the generation process.")
    seed: int = Field(description=OUTPUT_SEED_DESCRIPTION)
    has_nsfw_concepts: list[bool] = Field(description="Whether the generated images contain NSFW concepts.")
    prompt: str = Field(description="The prompt used for generating the image.")


@dataclass(frozen=True)
class DenoiserSettings:
    """What an `acceleration` level changes in the transformer, beyond the lossless speed-ups."""

    fp8: bool = False
    first_block_cache: bool = False


LEVELS: dict[str, DenoiserSettings] = {
    "none": DenoiserSettings(),
    "regular": DenoiserSettings(fp8=True),
    "high": DenoiserSettings(fp8=True, first_block_cache=True),
}


def quantize_fp8(module: torch.nn.Module) -> None:
    """FP8 dynamic quantisation (e4m3, row-wise scales) of every linear layer, in place, without
    torchao's default of changing the process's global inductor settings, which would alter every
    later compile (the bf16 transformer's, the other endpoints')."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    # torchao 0.10+ (0.18 is current) keeps the switch on the config, whose default (True) calls
    # `recommended_inductor_config_setter()`: coordinate-descent tuning and more, process-wide
    if "set_inductor_config" in getattr(Float8DynamicActivationFloat8WeightConfig, "__dataclass_fields__", {}):
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    else:  # older torchao took it as an argument of quantize_
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), set_inductor_config=False)


def set_first_block_cache(denoiser: torch.nn.Module, enabled: bool) -> None:
    """Hooks diffusers' first-block cache on or off the transformer (no change when already so)."""
    from diffusers import FirstBlockCacheConfig

    if enabled and not denoiser.is_cache_enabled:
        denoiser.enable_cache(FirstBlockCacheConfig(threshold=FIRST_BLOCK_CACHE_THRESHOLD))
    elif not enabled and denoiser.is_cache_enabled:
        denoiser.disable_cache()


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 quantisation cannot run on `device`, or None."""
    if device.type != "cuda":
        return f"needs CUDA, running on {device.type}"
    if torch.cuda.get_device_capability(device) < FP8_MIN_COMPUTE_CAPABILITY:
        return f"needs FP8 tensor cores (compute capability 8.9+), {torch.cuda.get_device_name(device)} has none"
    if importlib.util.find_spec("torchao") is None:
        return "needs torchao installed"
    return None


def img2img_steps(num_inference_steps: int, strength: float) -> int:
    """The denoising steps diffusers' image-to-image pipelines run: `get_timesteps` skips the first
    `int(n - n * strength)` of the n steps, so a fractional `n * strength` rounds up, not down."""
    return num_inference_steps - int(max(num_inference_steps - num_inference_steps * strength, 0))


@dataclass(frozen=True, kw_only=True)
class FluxImageToImageGeneration(Generation):
    prompt: str
    image: RawImage
    width: int
    height: int
    strength: float
    num_inference_steps: int
    guidance_scale: float
    acceleration: str


class FluxImageToImagePipeline(FluxDiffusionPipeline[FluxImageToImageGeneration]):
    endpoint_id = "fal-ai/flux/dev/image-to-image"
    Input = FluxImageToImageInput
    Output = FluxImageToImageOutput
    diffusers_class: ClassVar[str] = "FluxImg2ImgPipeline"
    model: ClassVar[str] = "flux-1-dev"

    plan_pixels: ClassVar[int] = MAX_AREA
    plan_images: ClassVar[int] = 4

    @classmethod
    def extra_bytes(cls, counts: dict[str, tuple[int, int]], itemsize: int) -> int:
        """The FP8 transformer `regular` and `high` share: one byte per weight (scales and norms aside)."""
        floats, other = counts.get("transformer", (0, 0))
        return floats + other if itemsize == 2 else 0

    def speedups_for(self, device: torch.device, enabled: bool) -> Speedups:
        """Where FP8 cannot run, `high` hooks the cache onto the bf16 transformer: compiled per block."""
        speedups = super().speedups_for(device, enabled)
        if speedups.compile and self.fp8_unavailable is not None:
            return dataclasses.replace(speedups, compile_regions=True)
        return speedups

    def setup(self, device: torch.device, weights: Weights, settings: PipelineSettings) -> None:
        self.fp8_unavailable = fp8_unavailable_reason(device)
        super().setup(device, weights, settings)

    def setup_endpoint(self, weights: Weights) -> None:
        self.transformer_folder = weights.verified_folder(self.model) / "transformer"
        # the bf16 transformer, and the FP8 one once `regular` or `high` asked for it
        self.denoisers: dict[bool, torch.nn.Module] = {False: self.pipe.transformer}

    def release_extra_memory(self) -> bool:
        """Drops the FP8 transformer (rebuilt on the next `regular` or `high` request) and the cached
        prompt embeddings."""
        freed = self.denoisers.pop(True, None) is not None
        return super().release_extra_memory() or freed

    def warm_up_generation(self, width: int, height: int) -> FluxImageToImageGeneration:
        image = RawImage(torch.zeros(3, height, width, dtype=torch.uint8), 255)
        return FluxImageToImageGeneration(
            seed=0,
            num_images=1,
            enable_safety_checker=False,
            prompt="",
            image=image,
            width=width,
            height=height,
            strength=1.0,
            num_inference_steps=WARM_UP_STEPS,
            guidance_scale=3.5,
            acceleration="none",
        )

    def plan(self, inputs: FluxImageToImageInput, request: RequestContext) -> FluxImageToImageGeneration:
        image = request.fetch_image(inputs.image_url, "image_url")
        width, height = output_size(image.width, image.height, max_area=MAX_AREA)
        settings = self.effective_settings(inputs.acceleration)
        return FluxImageToImageGeneration(
            seed=inputs.seed,
            num_images=inputs.num_images,
            enable_safety_checker=inputs.enable_safety_checker,
            output_format=inputs.output_format,
            sync_mode=inputs.sync_mode,
            prompt=inputs.prompt,
            image=image,
            width=width,
            height=height,
            strength=inputs.strength,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            acceleration=inputs.acceleration,
            provenance={
                "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", **self.pipe.scheduler.config},
                "num_inference_steps": inputs.num_inference_steps,
                "denoising_steps": img2img_steps(inputs.num_inference_steps, inputs.strength),
                "strength": inputs.strength,
                "guidance_scale": inputs.guidance_scale,
                "size": {"width": width, "height": height},
                "acceleration": {
                    "level": inputs.acceleration,
                    "fp8": settings.fp8,
                    "fp8_unavailable": self.fp8_unavailable if LEVELS[inputs.acceleration].fp8 else None,
                    "first_block_cache": FIRST_BLOCK_CACHE_THRESHOLD if settings.first_block_cache else None,
                },
            },
        )

    def effective_settings(self, acceleration: str) -> DenoiserSettings:
        """The level's settings, less what this device cannot run."""
        wanted = LEVELS[acceleration]
        return dataclasses.replace(wanted, fp8=wanted.fp8 and self.fp8_unavailable is None)

    def generate(
        self,
        generation: FluxImageToImageGeneration,
        generators: list[torch.Generator],
        requests: Sequence[RequestContext],
    ) -> torch.Tensor:
        settings = self.effective_settings(generation.acceleration)
        with self.denoiser(settings):
            result = self.pipe(
                image=resized_rgb(generation.image, generation.width, generation.height),
                width=generation.width,
                height=generation.height,
                strength=generation.strength,
                num_inference_steps=generation.num_inference_steps,
                guidance_scale=generation.guidance_scale,
                generator=generators,
                output_type="pt",
                **self.prompt_embeddings(generation.prompt, generation.num_images),
                **progress_arguments(
                    self.pipe, requests, img2img_steps(generation.num_inference_steps, generation.strength)
                ),
            )
        return result.images

    @contextmanager
    def denoiser(self, settings: DenoiserSettings) -> Iterator[torch.nn.Module]:
        """Puts the transformer for `settings` into the pipeline for one call, with the first-block
        cache hooked on for the call when `settings` asks for it."""
        from diffusers.hooks import HookRegistry

        if settings.fp8 not in self.denoisers:
            self.denoisers[settings.fp8] = self._build_fp8_denoiser()
        denoiser = self.denoisers[settings.fp8]
        set_first_block_cache(denoiser, settings.first_block_cache)
        base = self.pipe.transformer
        self.pipe.transformer = denoiser
        try:
            # FluxImg2ImgPipeline, unlike FluxPipeline, sets no cache context of its own
            with denoiser.cache_context("cond") if settings.first_block_cache else nullcontext():
                yield denoiser
        finally:
            self.pipe.transformer = base
            if settings.first_block_cache:
                # a cancelled call leaves its last residual behind; the next request must not reuse it
                HookRegistry.check_if_exists_or_initialize(denoiser).reset_stateful_hooks()

    def _build_fp8_denoiser(self) -> torch.nn.Module:
        """The FP8 transformer: a fresh copy from the verified weights with the lossless speed-ups (the
        unfused q/k/v dropped before quantising), its linear layers quantised by torchao, compiled per
        block (the first-block cache may be hooked on)."""
        from diffusers import FluxTransformer2DModel

        logger.info("building the FP8 FLUX.1 [dev] transformer on %s", self.device)
        denoiser = FluxTransformer2DModel.from_pretrained(
            self.transformer_folder, dtype=self.dtype, use_safetensors=True, local_files_only=True
        ).to(self.device)
        # compiled last, once quantised
        dataclasses.replace(self.speedups, compile=False).apply(denoiser)
        quantize_fp8(denoiser)
        if self.speedups.compile:
            denoiser.compile_repeated_blocks(fullgraph=False, mode=COMPILE_MODE, dynamic=COMPILE_DYNAMIC)
        return denoiser

    def output(
        self, result: GeneratedImages[FluxImageToImageGeneration], images: list[Image], request: RequestContext
    ) -> FluxImageToImageOutput:
        return FluxImageToImageOutput(
            images=images,
            timings={"inference": result.inference_seconds},
            seed=result.generation.seed,
            has_nsfw_concepts=result.has_nsfw_concepts,
            prompt=result.generation.prompt,
        )
