"""fal-ai/bytedance/seededit/v3/edit-image: an image edited from a prompt; the output key is `image`.

fal runs ByteDance's proprietary SeedEdit 3.0; Kiln runs FLUX.1 Kontext [dev] with the prompt as
given. SeedEdit's `guidance_scale` lies in [0, 1]; it is mapped linearly onto Kontext's distilled
guidance, `1 + 3 * guidance_scale`, so SeedEdit's default 0.5 gives Kontext's default 2.5. The
result is a PNG; the safety checker always runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipelines.contract import Image, RequestContext
from pipelines.flux import Seed
from pipelines.kontext_editing import EditSpec, KontextEditPipeline


def kontext_guidance(seededit_guidance: float) -> float:
    return 1.0 + 3.0 * seededit_guidance


class SeedEditInput(BaseModel):
    prompt: str = Field(description="The text prompt used to edit the image")
    image_url: str = Field(description="URL of the image to be edited.")
    guidance_scale: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Controls how closely the output image aligns with the input prompt. Higher values mean "
        "stronger prompt correlation.",
    )
    seed: Seed = None


class SeedEditOutput(BaseModel):
    image: Image = Field(description="Generated image")
    seed: int = Field(description="Seed used for generation")


class SeedEditPipeline(KontextEditPipeline):
    endpoint_id = "fal-ai/bytedance/seededit/v3/edit-image"
    Input = SeedEditInput
    Output = SeedEditOutput

    def spec(self, inputs: SeedEditInput) -> EditSpec:
        return EditSpec(
            instruction=inputs.prompt,
            image_urls=(("image_url", inputs.image_url),),
            seed=inputs.seed,
            guidance_scale=kontext_guidance(inputs.guidance_scale),
        )

    def output(self, result, images: list[Image], request: RequestContext) -> SeedEditOutput:
        return SeedEditOutput(image=images[0], seed=result.generation.seed)
