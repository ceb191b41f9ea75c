"""fal-ai/pixart-sigma: PixArt-Sigma XL 1024 text-to-image on diffusers' `PixArtSigmaPipeline`.

fal's defaults are passed explicitly, since diffusers' own differ (35 steps, not 20). Prompts are
cleaned as PixArt does (`clean_caption`, which needs ftfy and beautifulsoup4) and padded to 300 T5
tokens. The ten styles are the PixArt-Sigma app's (Stability's SDXL presets): the template wraps the
prompt, and the style's negative text is put in front of the negative prompt with no separator,
bug for bug as the app does. Sizes follow PixArt's resolution binning: the image is generated at the
nearest trained aspect ratio (about 1024² pixels) and resized and centre-cropped to the size asked.

Schedulers: `DPM-SOLVER` is the repository's `DPMSolverMultistepScheduler` configuration; `SA-SOLVER`
is `SASolverScheduler` from that configuration, whose defaults are the app's settings (data
prediction, predictor and corrector order 2, tau 1 on timesteps 200-800). SA-Solver adds noise at
each step, drawn from the request's seeded generators.

`seed` is the first image's; image i uses `seed + i`. `prompt` in the output is the prompt as sent;
the styled prompt and negative prompt are in the result's provenance.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field

from pipelines.contract import Image, RequestContext, Weights
from pipelines.diffusion import (
    WARM_UP_STEPS,
    DiffusionPipeline,
    GeneratedImages,
    Generation,
    progress_arguments,
)

MAX_SEQUENCE_LENGTH = 300  # PixArt-Sigma's T5 length, as in its app
MAX_IMAGE_SIDE = 14142  # fal's ImageSize bound

# name -> (positive template, negative text), verbatim from PixArt-Sigma's app (double spaces included)
STYLES: dict[str, tuple[str, str]] = {
    "(No style)": ("{prompt}", ""),
    "Cinematic": (
        (
            "cinematic still {prompt} . emotional, harmonious, vignette, highly detailed, high budget, bokeh, "
            "cinemascope, moody, epic, gorgeous, film grain, grainy"
        ),
        (
            "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, deformed, mutated, ugly, "
            "disfigured"
        ),
    ),
    "Photographic": (
        "cinematic photo {prompt} . 35mm photograph, film, bokeh, professional, 4k, highly detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, deformed, ugly",
    ),
    "Anime": (
        "anime artwork {prompt} . anime style, key visual, vibrant, studio anime,  highly detailed",
        "photo, deformed, black and white, realism, disfigured, low contrast",
    ),
    "Manga": (
        "manga style {prompt} . vibrant, high-energy, detailed, iconic, Japanese comic style",
        "ugly, deformed, noisy, blurry, low contrast, realism, photorealistic, Western comic style",
    ),
    "Digital Art": (
        "concept art {prompt} . digital artwork, illustrative, painterly, matte painting, highly detailed",
        "photo, photorealistic, realism, ugly",
    ),
    "Pixel art": (
        "pixel-art {prompt} . low-res, blocky, pixel art style, 8-bit graphics",
        "sloppy, messy, blurry, noisy, highly detailed, ultra textured, photo, realistic",
    ),
    "Fantasy art": (
        (
            "ethereal fantasy concept art of  {prompt} . magnificent, celestial, ethereal, painterly, epic, majestic, "
            "magical, fantasy art, cover art, dreamy"
        ),
        (
            "photographic, realistic, realism, 35mm film, dslr, cropped, frame, text, deformed, glitch, noise, noisy, "
            "off-center, deformed, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, sloppy, duplicate, mutated, "
            "black and white"
        ),
    ),
    "Neonpunk": (
        (
            "neonpunk style {prompt} . cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp, detailed, "
            "sleek, ultramodern, magenta highlights, dark purple shadows, high contrast, cinematic, ultra detailed, "
            "intricate, professional"
        ),
        "painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured",
    ),
    "3D Model": (
        "professional 3d model {prompt} . octane render, highly detailed, volumetric, dramatic lighting",
        "ugly, deformed, noisy, low poly, blurry, painting",
    ),
}
Style = Literal[tuple(STYLES)]

# fal toolkit's IMAGE_SIZE_PRESETS: name -> (width, height)
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ImageSizePreset = Literal[tuple(IMAGE_SIZE_PRESETS)]
Scheduler = Literal["DPM-SOLVER", "SA-SOLVER"]
SCHEDULER_CLASSES: dict[str, str] = {"DPM-SOLVER": "DPMSolverMultistepScheduler", "SA-SOLVER": "SASolverScheduler"}


def apply_style(style: str, prompt: str, negative_prompt: str) -> tuple[str, str]:
    """The app's `apply_style`: the template around the prompt, the style's negative text in front."""
    template, style_negative = STYLES[style]
    return template.replace("{prompt}", prompt), style_negative + negative_prompt


def make_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """A fresh scheduler for one request: DPM-Solver with the repository's configuration, or SA-Solver
    on the same noise schedule with its own defaults, which are the PixArt app's settings."""
    import diffusers

    if name == "SA-SOLVER":
        # the repository's config names DPM-Solver's algorithm, which SA-Solver does not implement
        return diffusers.SASolverScheduler.from_config({**config, "algorithm_type": "data_prediction"})
    return diffusers.DPMSolverMultistepScheduler.from_config(config)


class ImageSize(BaseModel):
    width: int = Field(512, gt=0, le=MAX_IMAGE_SIDE, description="The width of the generated image.")
    height: int = Field(512, gt=0, le=MAX_IMAGE_SIDE, description="The height of the generated image.")


class PixArtSigmaInput(BaseModel):
    prompt: str = Field(
        description="The prompt to use for generating the image. Be as descriptive as possible for best results."
    )
    negative_prompt: str = Field(
        "",
        description="The negative prompt to use. Use it to address details that you don't want in the image. This "
        "could be colors, objects, scenery and even the small details (e.g. moustache, blurry, low resolution).",
    )
    style: Style = Field("(No style)", description="The style to apply to the image.")
    image_size: ImageSizePreset | ImageSize = Field("square_hd", description="The size of the generated image.")
    num_inference_steps: int = Field(35, ge=1, le=100, description="The number of inference steps to perform.")
    scheduler: Scheduler = Field("DPM-SOLVER", description="The scheduler to use for the model.")
    guidance_scale: float = Field(
        4.5,
        ge=0.0,
        le=20.0,
        description="The CFG (Classifier Free Guidance) scale is a measure of how close you want the model to stick "
        "to your prompt when looking for a related image to show you.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="The same seed and the same prompt given to the same version of the model will output the same "
        "image every time.",
    )
    sync_mode: bool = Field(
        False,
        description="If set to true, the function will wait for the image to be generated and uploaded before "
        "returning the response. This will increase the latency of the function but it allows you to get the image "
        "directly in the response without going through the CDN.",
    )
    num_images: int = Field(1, ge=1, le=8, description="The number of images to generate.")
    enable_safety_checker: bool = Field(True, description="If set to true, the safety checker will be enabled.")


class PixArtSigmaOutput(BaseModel):
    images: list[Image] = Field(description="The generated image files info.")
    timings: dict[str, float] = Field(description="The timings of the different steps of the generation process.")
    seed: int = Field(
        description="Seed of the generated Image. It will be the same value of the one passed in the input or the "
        "randomly generated that was used in case none was passed."
    )
    has_nsfw_concepts: list[bool] = Field(description="Whether the generated images contain NSFW concepts.")
    prompt: str = Field(description="The prompt used for generating the image.")


@dataclass(frozen=True, kw_only=True)
class PixArtGeneration(Generation):
    prompt: str
    styled_prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    scheduler: str


class PixArtSigmaPipeline(DiffusionPipeline[PixArtGeneration]):
    endpoint_id = "fal-ai/pixart-sigma"
    Input = PixArtSigmaInput
    Output = PixArtSigmaOutput
    diffusers_class: ClassVar[str] = "PixArtSigmaPipeline"
    model: ClassVar[str] = "pixart-sigma-xl-2-1024-ms"
    # resolution binning generates about 1024² whatever the size asked; CFG doubles the batch
    plan_images: ClassVar[int] = 8
    plan_text_tokens: ClassVar[int] = MAX_SEQUENCE_LENGTH
    plan_guidance_batch: ClassVar[int] = 2

    @classmethod
    def unavailable_reason(cls, weights: Weights) -> str | None:
        missing = [module for module in ("ftfy", "bs4") if importlib.util.find_spec(module) is None]
        if missing:
            # without them diffusers silently skips caption cleaning and prompts would differ from fal's
            return f"{cls.endpoint_id} cannot run: PixArt's caption cleaning needs {', '.join(missing)} installed"
        return super().unavailable_reason(weights)

    def setup_endpoint(self, weights: Weights) -> None:
        # the repository's configuration, before a request replaces the scheduler
        self.scheduler_config = self.pipe.scheduler.config

    def warm_up_generation(self, width: int, height: int) -> PixArtGeneration:
        return PixArtGeneration(
            seed=0,
            num_images=1,
            enable_safety_checker=False,
            prompt="",
            styled_prompt="",
            negative_prompt="",
            width=width,
            height=height,
            num_inference_steps=WARM_UP_STEPS,
            guidance_scale=4.5,
            scheduler="DPM-SOLVER",
        )

    def plan(self, inputs: PixArtSigmaInput, request: RequestContext) -> PixArtGeneration:
        if isinstance(inputs.image_size, ImageSize):
            width, height = inputs.image_size.width, inputs.image_size.height
        else:
            width, height = IMAGE_SIZE_PRESETS[inputs.image_size]
        styled_prompt, negative_prompt = apply_style(inputs.style, inputs.prompt, inputs.negative_prompt)
        return PixArtGeneration(
            seed=inputs.seed,
            num_images=inputs.num_images,
            enable_safety_checker=inputs.enable_safety_checker,
            sync_mode=inputs.sync_mode,
            prompt=inputs.prompt,
            styled_prompt=styled_prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            scheduler=inputs.scheduler,
            provenance={
                "scheduler": {"name": inputs.scheduler, "class": SCHEDULER_CLASSES[inputs.scheduler]},
                "num_inference_steps": inputs.num_inference_steps,
                "guidance_scale": inputs.guidance_scale,
                "styled_prompt": styled_prompt,
                "negative_prompt": negative_prompt,
                "max_sequence_length": MAX_SEQUENCE_LENGTH,
                "clean_caption": True,
            },
        )

    def generate(
        self, generation: PixArtGeneration, generators: list[torch.Generator], requests: Sequence[RequestContext]
    ) -> torch.Tensor:
        self.pipe.scheduler = make_scheduler(generation.scheduler, self.scheduler_config)
        prompt_embeds, prompt_mask = self.encode_text(generation.styled_prompt)
        negative_embeds, negative_mask = self.encode_text(generation.negative_prompt)
        result = self.pipe(
            prompt=None,
            negative_prompt=None,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_mask,
            negative_prompt_embeds=negative_embeds,
            negative_prompt_attention_mask=negative_mask,
            num_inference_steps=generation.num_inference_steps,
            guidance_scale=generation.guidance_scale,
            num_images_per_prompt=generation.num_images,
            width=generation.width,
            height=generation.height,
            generator=generators,
            use_resolution_binning=True,
            output_type="pt",
            **progress_arguments(self.pipe, requests, generation.num_inference_steps),
        )
        return result.images

    def encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 embedding and attention mask of one cleaned caption, `(1, 300, D)` and `(1, 300)`."""

        def encode() -> tuple[torch.Tensor, torch.Tensor]:
            embeds, mask, _, _ = self.pipe.encode_prompt(
                text,
                do_classifier_free_guidance=False,
                device=self.device,
                clean_caption=True,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
            )
            return embeds, mask

        return self.cached_text_embedding(("t5", text), encode)

    def output(
        self, result: GeneratedImages[PixArtGeneration], images: list[Image], request: RequestContext
    ) -> PixArtSigmaOutput:
        return PixArtSigmaOutput(
            images=images,
            timings={"inference": result.inference_seconds},
            seed=result.generation.seed,
            has_nsfw_concepts=result.has_nsfw_concepts,
            prompt=result.generation.prompt,
        )
