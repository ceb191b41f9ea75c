"""The fal-ai/image-editing/* endpoints: one schema, each an instruction template on FLUX.1 Kontext [dev].

fal runs these on a proprietary "omni" model; Kiln sends Kontext a fixed instruction per endpoint,
with the request's `prompt` filled in where the endpoint has one. The templates say what to change
and, as Kontext's prompting guide advises, what to keep. `safety_tolerance` is accepted and reported
as ignored; the safety checker always runs and replaces a flagged image with a black one.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from pipelines.contract import Image, RequestContext
from pipelines.flux import (
    GUIDANCE_DESCRIPTION,
    SAFETY_TOLERANCE_DESCRIPTION,
    AspectRatio,
    OutputFormat,
    SafetyTolerance,
    Seed,
    SyncMode,
)
from pipelines.kontext_editing import EditSpec, KontextEditPipeline, kontext_pro_spec


class ImageEditingInput(BaseModel):
    image_url: str = Field(description="Image prompt for the omni model.")
    guidance_scale: float = Field(3.5, ge=1.0, le=20.0, description=GUIDANCE_DESCRIPTION)
    num_inference_steps: int = Field(30, ge=1, le=50, description="Number of inference steps for sampling.")
    safety_tolerance: SafetyTolerance = Field("2", description=SAFETY_TOLERANCE_DESCRIPTION)
    output_format: OutputFormat = Field("jpeg", description="The format of the generated image.")
    aspect_ratio: AspectRatio | None = Field(None, description="The aspect ratio of the generated image.")
    seed: Seed = None
    sync_mode: SyncMode = False


class ImageEditingOutput(BaseModel):
    images: list[Image]
    seed: int


class ImageEditingPipeline(KontextEditPipeline):
    """An image-editing endpoint: `template` is the instruction, `{prompt}` standing for the request's."""

    Output = ImageEditingOutput
    template: ClassVar[str]

    def spec(self, inputs: ImageEditingInput) -> EditSpec:
        return kontext_pro_spec(
            inputs,
            instruction=self.template.replace("{prompt}", getattr(inputs, "prompt", "")),
            image_urls=(("image_url", inputs.image_url),),
            num_inference_steps=inputs.num_inference_steps,
        )

    def output(self, result, images: list[Image], request: RequestContext) -> ImageEditingOutput:
        return ImageEditingOutput(images=images, seed=result.generation.seed)
