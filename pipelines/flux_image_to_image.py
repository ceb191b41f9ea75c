"""fal-ai/flux/dev/image-to-image: FLUX.1 [dev] image-to-image on diffusers' `FluxImg2ImgPipeline`.

fal's defaults are passed explicitly (diffusers' own are strength 0.6, 28 steps, guidance 7). The
image is noised to `strength` and denoised for `num_inference_steps * strength` steps (38 with fal's
defaults); `guidance_scale` drives FLUX.1 [dev]'s distilled guidance embedding, one transformer pass
per step. The output keeps the input's size and aspect ratio, both sides rounded to multiples of 16
and scaled down to at most 2 megapixels (FLUX.1's trained range), where diffusers would make 1024².

`acceleration` picks the transformer; `regular` and `high` load their own copy on first use and keep
it warm. Their quality costs below are what published FLUX results lead us to expect, not measured:

- `none`: the lossless set every diffusion endpoint gets (bf16, fused QKV projections, the fastest
  exact attention backend, `torch.compile`): exact up to float rounding.
- `regular`: + FP8 dynamic quantisation (torchao, e4m3, row-wise scales) of every linear layer of
  the transformer: close to `none`, fine texture can differ.
- `high`: + diffusers' first-block cache (threshold 0.12): a step whose first block's output barely
  changed reuses the previous step's residual for the rest: visible drift on detailed images.

FP8 needs CUDA with FP8 tensor cores (compute capability 8.9+) and torchao; elsewhere `regular`
runs as `none` and `high` as the cache alone. What was applied is in the result's provenance under
`acceleration`. The cached transformer is compiled per block without `fullgraph`, since the cache's
skip decision is a data-dependent branch.
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
    FieldError,
    Image,
    PipelineSettings,
    RawImage,
    RequestContext,
    Weights,
)
from pipelines.diffusion import (
    COMPILE_MODE,
    GeneratedImages,
    Generation,
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


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 quantisation cannot run on `device`, or None."""
    if device.type != "cuda":
        return f"needs CUDA, running on {device.type}"
    if torch.cuda.get_device_capability(device) < FP8_MIN_COMPUTE_CAPABILITY:
        return f"needs FP8 tensor cores (compute capability 8.9+), {torch.cuda.get_device_name(device)} has none"
    if importlib.util.find_spec("torchao") is None:
        return "needs torchao installed"
    return None


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

    @classmethod
    def prepare(cls, inputs: FluxImageToImageInput) -> FluxImageToImageInput:
        if int(inputs.num_inference_steps * inputs.strength) < 1:
            raise FieldError(
                "strength",
                f"`strength` {inputs.strength} x `num_inference_steps` {inputs.num_inference_steps} leaves no "
                "denoising step; raise either so that their product is at least 1",
            )
        return super().prepare(inputs)

    def setup(self, device: torch.device, weights: Weights, settings: PipelineSettings) -> None:
        super().setup(device, weights, settings)
        self.transformer_folder = weights.verified_folder(self.model) / "transformer"
        self.fp8_unavailable = fp8_unavailable_reason(device)
        # the transformer for each settings a request has needed, built on first use
        self.denoisers: dict[DenoiserSettings, torch.nn.Module] = {DenoiserSettings(): self.pipe.transformer}

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
                "denoising_steps": int(inputs.num_inference_steps * inputs.strength),
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
                **progress_arguments(self.pipe, requests, int(generation.num_inference_steps * generation.strength)),
            )
        return result.images

    @contextmanager
    def denoiser(self, settings: DenoiserSettings) -> Iterator[torch.nn.Module]:
        """Puts the transformer for `settings` into the pipeline for one call."""
        from diffusers.hooks import HookRegistry

        if settings not in self.denoisers:
            self.denoisers[settings] = self._build_denoiser(settings)
        denoiser = self.denoisers[settings]
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

    def _build_denoiser(self, settings: DenoiserSettings) -> torch.nn.Module:
        """A fresh transformer from the verified weights with the lossless speed-ups and `settings`."""
        from diffusers import FirstBlockCacheConfig, FluxTransformer2DModel

        logger.info("building the %s FLUX.1 [dev] transformer on %s", settings, self.device)
        denoiser = FluxTransformer2DModel.from_pretrained(
            self.transformer_folder, dtype=self.dtype, use_safetensors=True, local_files_only=True
        ).to(self.device)
        # compiled last, once quantised and cached
        dataclasses.replace(self.speedups, compile=False).apply(denoiser)
        if settings.fp8:
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                PerRow,
                quantize_,
            )

            quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        if settings.first_block_cache:
            denoiser.enable_cache(FirstBlockCacheConfig(threshold=FIRST_BLOCK_CACHE_THRESHOLD))
        if self.speedups.compile:
            if settings.first_block_cache:
                denoiser.compile_repeated_blocks(fullgraph=False, mode=COMPILE_MODE)
            else:
                denoiser.compile(fullgraph=True, mode=COMPILE_MODE)
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
