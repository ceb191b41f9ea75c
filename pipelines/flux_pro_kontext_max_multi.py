"""fal-ai/flux-pro/kontext/max/multi: an edit guided by several images.

fal runs BFL's proprietary FLUX.1 Kontext [max]; Kiln runs FLUX.1 Kontext [dev] with every image in
`image_urls` as a reference, each encoded on its own and joined into the sequence (see
pipelines/kontext_editing.py). The prompt is sent as given, with Kontext's 28 steps (the schema has
no `num_inference_steps`). The first image sets the output's size unless `aspect_ratio` is given.
`safety_tolerance` is accepted and reported as ignored; the safety checker always runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.contract import Image, RequestContext
from pipelines.flux import (
    GUIDANCE_DESCRIPTION,
    OUTPUT_SEED_DESCRIPTION,
    SAFETY_TOLERANCE_DESCRIPTION,
    AspectRatio,
    OutputFormat,
    SafetyTolerance,
    Seed,
    SyncMode,
)
from pipelines.kontext_editing import EditSpec, KontextEditPipeline, kontext_pro_spec

MAX_REFERENCES = 4


class KontextMaxMultiInput(BaseModel):
    prompt: str = Field(description="The prompt to generate an image from.")
    seed: Seed = None
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0, description=GUIDANCE_DESCRIPTION)
    sync_mode: SyncMode = False
    num_images: int = Field(1, ge=1, le=4, description="The number of images to generate.")
    output_format: OutputFormat = Field("jpeg", description="The format of the generated image.")
    safety_tolerance: SafetyTolerance = Field("2", description=SAFETY_TOLERANCE_DESCRIPTION)
    aspect_ratio: AspectRatio | None = Field(None, description="The aspect ratio of the generated image.")
    image_urls: list[str] = Field(
        min_length=1,
        max_length=MAX_REFERENCES,
        description=f"Image prompt for the omni model. Kiln: 1 to {MAX_REFERENCES} images.",
    )


class KontextMaxMultiOutput(BaseModel):
    images: list[Image] = Field(description="The generated image files info.")
    timings: dict[str, float] = Field(description="The timings of the different steps of the generation process.")
    seed: int = Field(description=OUTPUT_SEED_DESCRIPTION)
    has_nsfw_concepts: list[bool] = Field(description="Whether the generated images contain NSFW concepts.")
    prompt: str = Field(description="The prompt used for generating the image.")


class KontextMaxMultiPipeline(KontextEditPipeline):
    endpoint_id = "fal-ai/flux-pro/kontext/max/multi"
    Input = KontextMaxMultiInput
    Output = KontextMaxMultiOutput

    def spec(self, inputs: KontextMaxMultiInput) -> EditSpec:
        return kontext_pro_spec(
            inputs,
            instruction=inputs.prompt,
            image_urls=tuple((("image_urls", index), url) for index, url in enumerate(inputs.image_urls)),
            num_images=inputs.num_images,
        )

    def output(self, result, images: list[Image], request: RequestContext) -> KontextMaxMultiOutput:
        return KontextMaxMultiOutput(
            images=images,
            timings={"inference": result.inference_seconds},
            seed=result.generation.seed,
            has_nsfw_concepts=result.has_nsfw_concepts,
            prompt=result.generation.instruction,
        )
