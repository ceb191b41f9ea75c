"""fal-ai/step1x-edit: an image edited from a prompt.

fal runs StepFun's Step1X-Edit (a Qwen2.5-VL encoder and its own DiT), which is not in diffusers;
Kiln runs FLUX.1 Kontext [dev] in its place, and each result's provenance says so. The prompt is
sent as given; `guidance_scale` drives Kontext's distilled guidance (Step1X-Edit uses it as a
classifier-free guidance scale, for which the same default of 4 is on the strong side for Kontext).
Kontext has no negative branch, so `negative_prompt` is accepted and reported as ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.contract import Image, RequestContext
from pipelines.flux import (
    GUIDANCE_DESCRIPTION,
    OUTPUT_SEED_DESCRIPTION,
    OutputFormat,
    Seed,
    SyncMode,
)
from pipelines.kontext_editing import EditSpec, KontextEditPipeline, ignored_fields


class Step1XEditInput(BaseModel):
    prompt: str = Field(description="The prompt to generate an image from.")
    image_url: str = Field(
        description="The image URL to generate an image from. Needs to match the dimensions of the mask."
    )
    negative_prompt: str = Field(
        "",
        description="The negative prompt to use. Use it to address details that you don't want in the image. This "
        "could be colors, objects, scenery and even the small details (e.g. moustache, blurry, low resolution). "
        "Kiln: accepted and ignored (FLUX.1 Kontext [dev] has no negative branch).",
    )
    seed: Seed = None
    guidance_scale: float = Field(4.0, ge=1.0, le=20.0, description=GUIDANCE_DESCRIPTION)
    num_inference_steps: int = Field(30, ge=1, le=50, description="The number of inference steps to perform.")
    sync_mode: SyncMode = False
    enable_safety_checker: bool = Field(True, description="If set to true, the safety checker will be enabled.")
    output_format: OutputFormat = Field("jpeg", description="The format of the generated image.")


class Step1XEditOutput(BaseModel):
    images: list[Image] = Field(description="The generated images")
    seed: int = Field(description=OUTPUT_SEED_DESCRIPTION)
    has_nsfw_concepts: list[bool] = Field(description="Whether the generated images contain NSFW concepts.")
    prompt: str = Field(description="The prompt used for generating the image.")


class Step1XEditPipeline(KontextEditPipeline):
    endpoint_id = "fal-ai/step1x-edit"
    Input = Step1XEditInput
    Output = Step1XEditOutput

    def spec(self, inputs: Step1XEditInput) -> EditSpec:
        return EditSpec(
            instruction=inputs.prompt,
            image_urls=(("image_url", inputs.image_url),),
            seed=inputs.seed,
            guidance_scale=inputs.guidance_scale,
            num_inference_steps=inputs.num_inference_steps,
            output_format=inputs.output_format,
            sync_mode=inputs.sync_mode,
            enable_safety_checker=inputs.enable_safety_checker,
            ignored=ignored_fields(inputs, ["negative_prompt"]),
        )

    def output(self, result, images: list[Image], request: RequestContext) -> Step1XEditOutput:
        return Step1XEditOutput(
            images=images,
            seed=result.generation.seed,
            has_nsfw_concepts=result.has_nsfw_concepts,
            prompt=result.generation.instruction,
        )
