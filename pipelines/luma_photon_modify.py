"""fal-ai/luma-photon/modify: an image modified from an instruction, optionally reframed.

fal runs Luma's proprietary Photon; Kiln runs FLUX.1 Kontext [dev] with the prompt as given and
Kontext's default steps and guidance. `strength` ("more influence of the initial image" as it
rises) starts the edit from the input image noised to `1 - strength` instead of from noise;
`aspect_ratio` reframes the output around the input's centre. The result is a PNG.

Kiln extensions: `seed` (drawn at random if omitted, reported in the provenance) and `sync_mode`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.contract import File, Image, RequestContext
from pipelines.flux import Seed, SyncMode
from pipelines.kontext_editing import EditSpec, KontextEditPipeline


class LumaPhotonModifyInput(BaseModel):
    prompt: str = Field(description="Instruction for modifying the image")
    image_url: str = Field(description="URL of the input image to reframe")
    strength: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="The strength of the initial image. Higher strength values are corresponding to more influence "
        "of the initial image on the output.",
    )
    aspect_ratio: Literal["1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"] | None = Field(
        None, description="The aspect ratio of the reframed image"
    )
    seed: Seed = None
    sync_mode: SyncMode = False


class LumaPhotonModifyOutput(BaseModel):
    images: list[File] = Field(description="The generated image")


class LumaPhotonModifyPipeline(KontextEditPipeline):
    endpoint_id = "fal-ai/luma-photon/modify"
    Input = LumaPhotonModifyInput
    Output = LumaPhotonModifyOutput

    def spec(self, inputs: LumaPhotonModifyInput) -> EditSpec:
        return EditSpec(
            instruction=inputs.prompt,
            image_urls=(("image_url", inputs.image_url),),
            seed=inputs.seed,
            aspect_ratio=inputs.aspect_ratio,
            denoise=None if inputs.strength is None else 1.0 - inputs.strength,
            sync_mode=inputs.sync_mode,
        )

    def output(self, result, images: list[Image], request: RequestContext) -> LumaPhotonModifyOutput:
        return LumaPhotonModifyOutput(images=[File.of(image) for image in images])
